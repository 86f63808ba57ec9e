"""Importance scores per group member, under one vocabulary shared by every command and config.

A score table maps each kind to one tensor per *current* block: ``scores["heads"][b][u]`` is
head unit ``u`` of block ``b``; ``scores["neurons"][b][n]`` is FFN neuron ``n``;
``scores["layers"][b]`` is block ``b`` as a whole. Scores are always joint over a group: a
head's q/k/v rows and o columns, a neuron's row in every input projection and its output column.

The names (:data:`IMPORTANCES`, the one table ``edgeadapt prune``, ``edgeadapt llm-prune``, the
Python API and every config use) follow the field's:

- ``magnitude`` / ``magnitude-l2``: L1 / L2 norm of the group's weights;
- ``taylor``: first-order Taylor, ``sum over the group of |w * dL/dw|`` element-wise, ``dL/dw``
  the gradient of the calibration loss (averaged over the batches before the absolute value;
  Molchanov et al., 2019, eq. 7; torch-pruning's ``GroupTaylorImportance``);
- ``fisher``: second-order Taylor / diagonal Fisher of the group's mask variable: per calibration
  *sample* the group's first-order loss change ``t = sum over the group of w * dL/dw`` is squared
  and averaged over samples (Molchanov et al., 2019, eq. 8; Kwon et al., 2022), which keeps the
  sign-cancelling first-order term informative;
- ``activation``: mean activation norm per unit; ``random``: seeded uniform scores (a baseline).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.progress import bar_enabled
from edgeadapt.pruning.blockwise import NotAChain, blockwise_gradient_scores
from edgeadapt.pruning.groups import Member, block_members, num_units
from edgeadapt.pruning.ops import is_transposed, weight_matrix

Scores = dict[str, list[torch.Tensor]]
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ImportanceInfo:
    """One row of the importance table: what the score computes and whether it needs data."""

    description: str
    needs_batches: bool


# The one table of importance names. Both CLIs, the Python API and every config validate against it.
IMPORTANCES: dict[str, ImportanceInfo] = {
    "magnitude": ImportanceInfo("L1 norm of the group's weights", False),
    "magnitude-l2": ImportanceInfo("L2 norm of the group's weights", False),
    "taylor": ImportanceInfo("first-order Taylor |w·dL/dw| summed element-wise over the group, dL/dw the "
                             "gradient of the calibration loss (Molchanov et al., 2019; torch-pruning's "
                             "GroupTaylorImportance)", True),
    "fisher": ImportanceInfo("second-order Taylor / diagonal Fisher of the group's mask: the per-sample "
                             "squared group term (Σ w·dL/dw)², averaged over samples (Molchanov et al., "
                             "2019; Kwon et al., 2022)", True),
    "activation": ImportanceInfo("mean activation norm of each unit over the calibration batches", True),
    "random": ImportanceInfo("seeded uniform random scores (a baseline that knows nothing)", False),
}
METHODS = tuple(IMPORTANCES)
# Retired spellings -> (new name, what it computes); refused with the new name in the message.
RENAMED: dict[str, tuple[str, str]] = {
    "taylor-abs": ("taylor", "first-order |w·g|"),
}
DEFAULT_IMPORTANCE = "taylor"


def describe_importances() -> str:
    """``name: description`` for every importance, one per line (for help texts and docs)."""
    return "\n".join(f"{name}: {info.description}" for name, info in IMPORTANCES.items())


def check_importance(method: str, field: str = "importance") -> str:
    """``method`` if it is a current importance name; a :class:`ConfigError` naming the new name
    for a retired spelling, or the choices for an unknown one."""
    if method in RENAMED:
        new, what = RENAMED[method]
        raise ConfigError(f"{field}: importance {method!r} was renamed: use {new!r} ({what})")
    if method not in IMPORTANCES:
        raise ConfigError(f"{field}: unknown importance {method!r}; choose one of {', '.join(METHODS)}")
    return method


class Importance(Protocol):
    """Scores every group of ``adapter``'s model, optionally from calibration batches."""

    def __call__(self, adapter: ModelAdapter, batches: Iterable[Batch] | None = None) -> Scores: ...


def member_values(model: nn.Module, member: Member, grad: bool = False) -> torch.Tensor:
    """The weights (or their gradients) a member owns, as ``[units, -1]`` (bias included)."""
    module = model.get_submodule(member.slice.module)
    w = weight_matrix(module)
    bias = getattr(module, "bias", None)
    if grad:
        if module.weight.grad is None:
            raise RuntimeError(f"no gradient on {member.slice.module}; run a backward pass first")
        w = module.weight.grad.T if is_transposed(module) else module.weight.grad
        bias = None if bias is None else bias.grad
    idx = member.index.to(w.device)
    units = idx.shape[0]
    if member.slice.axis == "out":
        parts = [w[idx.reshape(-1)].reshape(units, -1)]
        if bias is not None:
            parts.append(bias[idx.reshape(-1)].reshape(units, -1))
        return torch.cat(parts, 1)
    return w[:, idx.reshape(-1)].reshape(w.shape[0], units, -1).permute(1, 0, 2).reshape(units, -1)


def _per_block(adapter: ModelAdapter, fn: Callable[[list[Member]], torch.Tensor]) -> Scores:
    out: Scores = {"heads": [], "neurons": []}
    for block in adapter.blocks():
        for kind in ("heads", "neurons"):
            out[kind].append(fn(block_members(block, kind)).detach().float().cpu())
    return out


@torch.no_grad()
def magnitude(adapter: ModelAdapter, batches: Iterable[Batch] | None = None, p: int = 1) -> Scores:
    """L1 (``p=1``) or L2 norm of all weights of each group."""
    model = adapter.model

    def score(members: list[Member]) -> torch.Tensor:
        return sum(member_values(model, m).abs().pow(p).sum(1) for m in members).pow(1 / p)

    scores = _per_block(adapter, score)
    layers = adapter.model.get_submodule(adapter.layers_path())
    scores["layers"] = [torch.tensor([torch.cat([q.detach().abs().reshape(-1) for q in blk.parameters()])
                                      .mean().item() for blk in layers])]
    return scores


def taylor(adapter: ModelAdapter, batches: Iterable[Batch], progress: bool = False,
           memory_bounded: bool = True) -> Scores:
    """First-order Taylor importance: ``sum |w * dL/dw|`` element-wise over each group, where ``L``
    is the calibration loss, i.e. ``dL/dw`` is the gradient averaged over the calibration batches
    (Molchanov et al., 2019; torch-pruning's ``GroupTaylorImportance`` on gradients accumulated
    over the same batches ranks the same units). Per layer: ``|sum over the block of w * dL/dw|``.

    The gradient is averaged *before* the absolute value: per-batch ``|w * g_b|`` averaged instead
    also counts gradient noise (a Fisher-like term) and, on MiniLM heads at 50%, kept units that
    were 0.03 cosine worse (``benchmarks/prune_fidelity.py``).

    ``memory_bounded`` (default) walks the exact gradient block by block
    (:mod:`edgeadapt.pruning.blockwise`): peak memory is the weights plus one block's gradients and
    activations, scores equal to the whole-model backward's (``False``) within float rounding."""
    return _gradient_scores(adapter, batches, squared=False, progress=progress, memory_bounded=memory_bounded)


def fisher(adapter: ModelAdapter, batches: Iterable[Batch], progress: bool = False,
           memory_bounded: bool = True) -> Scores:
    """Second-order Taylor / diagonal Fisher importance of each group's mask variable.

    Per *sample*, the group's first-order loss change ``t = sum over the group of w * dL/dw`` is
    squared and averaged over samples (Molchanov et al., 2019; Kwon et al., 2022). The per-sample
    terms come from activation hooks, using ``sum(w * dL/dw) = sum over tokens of a * dL/da`` for a
    unit's output ``a`` (rows of q/k/v and MLP inputs, bias included) or input (columns of o and
    the MLP output), so one backward per batch suffices. Every forward pass inside the task loss
    counts as its own samples (e.g. both views of a contrastive pair). Per layer: the squared
    block term per batch, averaged. ``memory_bounded``: as for :func:`taylor`.
    """
    return _gradient_scores(adapter, batches, squared=True, progress=progress, memory_bounded=memory_bounded)


def _gradient_scores(adapter: ModelAdapter, batches: Iterable[Batch], squared: bool,
                     progress: bool = False, memory_bounded: bool = True) -> Scores:
    """:func:`fisher` (``squared=True``) or :func:`taylor` (``squared=False``); block by block when
    ``memory_bounded`` and the model's blocks form a chain, else by whole-model backwards."""
    batches = list(batches)
    if memory_bounded and batches:
        bounded = _blockwise(adapter, batches, squared, progress)
        if bounded is not None:
            return bounded
    model = adapter.model
    layers = model.get_submodule(adapter.layers_path())
    was_training = model.training
    model.eval()  # deterministic gradients (no dropout) at the model we will prune
    blocks = adapter.blocks()
    totals: Scores = {"heads": [torch.zeros(b.attention.num_units) for b in blocks],
                      "neurons": [torch.zeros(b.mlp.width) for b in blocks]}
    layer_total = torch.zeros(len(layers))
    samples = 0
    n_batches = 0
    try:
        name = "fisher" if squared else "taylor"
        model.zero_grad(set_to_none=True)
        for batch in tqdm(list(batches), desc=name, disable=not bar_enabled(progress), leave=False):
            if not squared:  # first order: gradients add up over the batches, scored once below
                adapter.task_loss(batch).backward()
                n_batches += 1
                continue
            model.zero_grad(set_to_none=True)
            collector = _PerSampleTerms(model, blocks)
            try:
                adapter.task_loss(batch).backward()
            finally:
                collector.remove()
            with torch.no_grad():
                samples += collector.accumulate(totals)
                layer_total += _layer_terms(layers).pow(2)
            n_batches += 1
        if n_batches and not squared:
            with torch.no_grad():  # |w * g| with g the gradient of the mean calibration loss
                totals = _per_block(adapter, lambda ms: sum(
                    (member_values(model, m) * member_values(model, m, grad=True)).abs().sum(1)
                    for m in ms) / n_batches)
                layer_total = _layer_terms(layers).abs() / n_batches
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if n_batches == 0:
        raise ConfigError(f"{'fisher' if squared else 'taylor'} importance needs at least one "
                          "calibration batch")
    if not squared:
        return {**totals, "layers": [layer_total]}
    scores = {k: [t / max(samples, 1) for t in v] for k, v in totals.items()}
    scores["layers"] = [layer_total / n_batches]
    return scores


def _blockwise(adapter: ModelAdapter, batches: list[Batch], squared: bool, progress: bool = False
               ) -> Scores | None:
    """:func:`_gradient_scores` through :func:`~edgeadapt.pruning.blockwise.blockwise_gradient_scores`;
    ``None`` when the model's blocks cannot be walked one at a time."""
    model = adapter.model

    def unit_terms(block: object) -> dict[str, torch.Tensor]:  # divided in the model's dtype, as below
        return {kind: (sum((member_values(model, m) * member_values(model, m, grad=True)).abs().sum(1)
                           for m in block_members(block, kind)) / len(batches)).detach().float().cpu()
                for kind in ("heads", "neurons")}

    def collector(block: object) -> _PerSampleTerms:
        return _PerSampleTerms(model, [block])

    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        totals, layer_total, samples, n_batches = blockwise_gradient_scores(
            adapter, batches, unit_terms, collector if squared else None,
            progress=bar_enabled(progress), desc="fisher" if squared else "taylor")
    except NotAChain:
        return None
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if squared:
        scores = {k: [t / max(samples, 1) for t in v] for k, v in totals.items()}
        return {**scores, "layers": [layer_total / n_batches]}
    return {**totals, "layers": [layer_total / n_batches]}


def _layer_terms(layers: nn.Module) -> torch.Tensor:
    """Per layer, ``sum(w * dL/dw)`` over all its parameters (the first-order loss change of
    removing the whole block), from the gradients now in ``.grad``."""
    return torch.tensor([sum((q * q.grad).sum().item() for q in blk.parameters() if q.grad is not None)
                         for blk in layers])


class _PerSampleTerms:
    """Hooks that collect, per forward call and per sample, ``sum(a * dL/da)`` for every unit of
    every group member; members of one group are summed before squaring (the group is joint)."""

    def __init__(self, model: nn.Module, blocks: list) -> None:
        self.terms: dict[tuple[str, int, int], torch.Tensor] = {}
        self.handles = []
        for i, block in enumerate(blocks):
            for kind in ("heads", "neurons"):
                for j, member in enumerate(block_members(block, kind)):
                    module = model.get_submodule(member.slice.module)
                    calls = {"n": 0}
                    if member.slice.axis == "out":
                        hook = self._make(kind, i, member, calls, from_output=True)
                        self.handles.append(module.register_forward_hook(hook))
                    else:
                        hook = self._make(kind, i, member, calls, from_output=False)
                        self.handles.append(module.register_forward_pre_hook(hook))

    def _make(self, kind: str, block: int, member: Member, calls: dict, from_output: bool) -> Callable:
        units, width = member.index.shape
        flat = member.index.reshape(-1)

        def capture(act: torch.Tensor) -> None:
            call = calls["n"]
            calls["n"] += 1
            if not act.requires_grad:
                return
            idx = flat.to(act.device)
            # Hold a detached view, never ``act`` itself: a closure over ``act`` registered as its own
            # hook forms a cycle through the autograd node that Python's GC cannot see, leaking every
            # calibration activation (~280 MB per MiniLM batch).
            value = act.detach()

            def on_grad(grad: torch.Tensor) -> None:
                a = value.index_select(-1, idx)
                prod = (a * grad.index_select(-1, idx)).float()
                per = prod.reshape(prod.shape[0], -1, units, width).sum((1, 3)).cpu()
                key = (kind, block, call)
                self.terms[key] = self.terms[key] + per if key in self.terms else per

            act.register_hook(on_grad)

        if from_output:
            return lambda _m, _args, out: capture(out[0] if isinstance(out, tuple) else out)
        return lambda _m, args: capture(args[0])

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def accumulate(self, totals: Scores) -> int:
        """Add squared per-sample terms into ``totals``; return the number of samples seen."""
        samples: dict[int, int] = {}
        for (kind, block, call), per in self.terms.items():
            totals[kind][block] += per.pow(2).sum(0)
            if kind == "neurons" and block == 0:
                samples[call] = per.shape[0]
        return sum(samples.values())


@torch.no_grad()
def activation(adapter: ModelAdapter, batches: Iterable[Batch]) -> Scores:
    """Mean activation norm entering ``o`` (per head unit) and the MLP output (per neuron);
    per layer, the relative size of the block's residual update ``||out - in|| / ||in||``."""
    model = adapter.model
    blocks = adapter.blocks()
    sums: Scores = {"heads": [torch.zeros(b.attention.num_units) for b in blocks],
                    "neurons": [torch.zeros(b.mlp.width) for b in blocks]}
    layer_sum = torch.zeros(len(blocks))
    count = {"n": 0}
    handles = []

    def feature_hook(kind: str, i: int, units: int) -> Callable:
        def hook(_m: nn.Module, args: tuple) -> None:
            a = args[0].detach().float().reshape(-1, args[0].shape[-1])
            per = a.reshape(a.shape[0], units, -1).norm(dim=-1).mean(0)
            sums[kind][i] += per.cpu()
        return hook

    def layer_hook(i: int) -> Callable:
        def hook(_m: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            layer_sum[i] += ((y - x).norm() / x.norm().clamp_min(1e-12)).item()
        return hook

    layers = model.get_submodule(adapter.layers_path())
    for i, b in enumerate(blocks):
        handles.append(model.get_submodule(b.attention.o.module).register_forward_pre_hook(
            feature_hook("heads", i, b.attention.num_units)))
        handles.append(model.get_submodule(b.mlp.output.module).register_forward_pre_hook(
            feature_hook("neurons", i, b.mlp.width)))
        handles.append(layers[i].register_forward_hook(layer_hook(i), with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            adapter.features(batch)
            count["n"] += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if count["n"] == 0:
        raise ConfigError("activation importance needs at least one calibration batch")
    scores = {k: [t / count["n"] for t in v] for k, v in sums.items()}
    scores["layers"] = [layer_sum / count["n"]]
    return scores


def random_scores(adapter: ModelAdapter, seed: int = 0) -> Scores:
    """Seeded uniform scores per head, neuron and layer (a baseline that knows nothing)."""
    g = torch.Generator().manual_seed(seed)
    blocks = adapter.blocks()
    return {"heads": [torch.rand(num_units(b, "heads"), generator=g) for b in blocks],
            "neurons": [torch.rand(num_units(b, "neurons"), generator=g) for b in blocks],
            "layers": [torch.rand(len(blocks), generator=g)]}


def score(adapter: ModelAdapter, method: str, batches: Iterable[Batch] | None = None,
          progress: bool = False, seed: int = 0, memory_bounded: bool = True) -> Scores:
    """Scores of every group of ``adapter`` by ``method``, one of :data:`IMPORTANCES` (``seed`` is
    used by ``random`` only; ``memory_bounded`` by ``taylor``/``fisher``, see :func:`taylor`).
    Retired or unknown names and missing calibration batches raise a :class:`ConfigError`."""
    check_importance(method)
    if method == "magnitude":
        return magnitude(adapter, p=1)
    if method == "magnitude-l2":
        return magnitude(adapter, p=2)
    if method == "random":
        return random_scores(adapter, seed)
    if batches is None:
        raise ConfigError(f"importance {method!r} needs calibration batches")
    if method == "taylor":
        return taylor(adapter, batches, progress=progress, memory_bounded=memory_bounded)
    if method == "fisher":
        return fisher(adapter, batches, progress=progress, memory_bounded=memory_bounded)
    return activation(adapter, batches)
