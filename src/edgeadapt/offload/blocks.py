"""A model as a chain of blocks, and each block's descendants at several widths (LegoDNN).

**Chain.** :func:`block_chain` cuts an image classifier into blocks with one input and one output,
each an ``nn.Module`` taking one tensor, so ``chain(x)`` runs them one after another: for a CNN
(:class:`~edgeadapt.models.cnn.CNNAdapter`) its :meth:`~edgeadapt.models.cnn.CNNAdapter.stages` and
a head (pooling + classifier); for a ViT the embeddings, every layer, and a head (final norm, first
token, classifier). The head is the one piece the adapters do not describe yet, so it is the small
table :data:`HEADS` (per family: final norm, pooling, token, classifier). The chain shares the
model's modules: at full width it *is* the model.

**Descendants.** :func:`make_descendants` builds every block at each width of ``widths`` with the
existing pruning nouns, one plan per width covering every block:

- CNN stage: channel pruning (:mod:`edgeadapt.pruning.channels`) of the channel groups that lie
  wholly inside the stage (a basic block's inner 3×3 width, a bottleneck's inner widths), so the
  stage's output channels — its residual width, read by the next stage — stay; ``width`` is the
  share of each such group's channels kept (L1 magnitude). A stem or head with no inner group is
  the same at every width.
- Transformer layer: a :class:`~edgeadapt.pruning.plan.PruningPlan` keeping ``round(width·n)``
  heads and FFN neurons of each layer (weight magnitude); the hidden size stays.

:func:`distill` retrains them block-wise (LegoDNN): one teacher pass per batch captures every
block's input and output, shared by all descendants; each pruned descendant takes an Adam step on
the MSE between its output and the block's. :mod:`edgeadapt.offload.artifact` saves them (plans +
safetensors + manifest) and rebuilds them from the base config and the plans, verified.

>>> desc = make_descendants(load_adapter("tiny-resnet"))   # doctest: +SKIP
>>> distill(desc, batches, epochs=2)                        # doctest: +SKIP
>>> desc.chain([1.0, 0.5, 0.5, 0.25, 1.0])(pixels)          # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgeadapt.errors import ConfigError
from edgeadapt.models.cnn import CNNAdapter
from edgeadapt.pruning.apply import apply_plan
from edgeadapt.pruning.channel_plan import ChannelGroup, ChannelPlan
from edgeadapt.pruning.channels import (
    apply_channel_plan,
    channel_scores,
    dependency_graph,
    prunable_groups,
    select_channels,
)
from edgeadapt.pruning.importance import magnitude
from edgeadapt.pruning.plan import BlockPlan, PruningPlan

WIDTHS: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)


@dataclass(frozen=True)
class HeadSpec:
    """What follows the last block of a family, paths relative to the base model (``norm``,
    ``pool``) or the root (``classifier``, ``dropout``): an optional final norm; an optional pooling
    module (``"spatial-mean"``: the mean over the last two axes) whose output is flattened; an
    optional token taken from a sequence; an optional dropout; the classifier."""

    norm: str | None
    pool: str | None
    token: int | None
    classifier: str
    dropout: str | None = None


SPATIAL_MEAN = "spatial-mean"

HEADS: dict[str, HeadSpec] = {
    "resnet": HeadSpec(None, "pooler", None, "classifier"),
    "regnet": HeadSpec(None, "pooler", None, "classifier"),
    "mobilenet_v2": HeadSpec(None, "pooler", None, "classifier", "dropout"),
    "mobilevit": HeadSpec(None, SPATIAL_MEAN, None, "classifier", "dropout"),
    "vit": HeadSpec("layernorm", None, 0, "classifier"),
}


class SpatialMean(nn.Module):
    """The mean over the last two (spatial) axes: ``[B, C, H, W] -> [B, C]``."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.mean(hidden, dim=[-2, -1])


class Head(nn.Module):
    """The head block: ``classifier(dropout(token(flatten(pool(norm(h))))))`` with the parts
    :class:`HeadSpec` names (flattening only after a pooling module)."""

    def __init__(self, norm: nn.Module | None, pool: nn.Module | None, token: int | None,
                 classifier: nn.Module, dropout: nn.Module | None = None) -> None:
        super().__init__()
        self.norm = norm if norm is not None else nn.Identity()
        self.pool = pool
        self.token = token
        self.dropout = dropout if dropout is not None else nn.Identity()
        self.classifier = classifier

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(hidden)
        if self.pool is not None:
            hidden = torch.flatten(self.pool(hidden), 1)
        if self.token is not None:
            hidden = hidden[:, self.token]
        return self.classifier(self.dropout(hidden))


class BlockChain(nn.Module):
    """Blocks run one after another: ``forward(x, start, stop)`` runs blocks ``start..stop-1``."""

    def __init__(self, names: Sequence[str], blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(names) != len(blocks):
            raise ConfigError(f"{len(names)} block names for {len(blocks)} blocks")
        self.names = list(names)
        self.blocks = nn.ModuleList(blocks)

    @staticmethod
    def _input_for(blocks: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
        """``x`` in the first of ``blocks``' weight dtype when it is floating (a bf16 model takes
        float32 inputs from the wire or the data)."""
        dtype = next((p.dtype for b in blocks for p in b.parameters() if p.is_floating_point()), None)
        if dtype is not None and x.is_floating_point() and x.dtype != dtype:
            x = x.to(dtype)
        return x

    def forward(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run blocks ``start..stop-1`` on ``x``; a floating ``x`` takes the first block's weight
        dtype (a bf16 model takes float32 inputs from the wire or the data)."""
        blocks = self.blocks[start:stop]
        x = self._input_for(blocks, x)
        for block in blocks:
            x = block(x)
        return x

    def trace(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's output, in order (block ``b``'s input is ``x`` or output ``b-1``); ``x`` is
        cast as :meth:`forward` casts it."""
        outs = []
        x = self._input_for(self.blocks, x)
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs


def _base_prefix(model: nn.Module) -> str:
    prefix = getattr(model, "base_model_prefix", "")
    return f"{prefix}." if prefix and hasattr(model, prefix) else ""


def block_modules(adapter: Any) -> tuple[list[str], list[nn.Module]]:
    """Block names (module paths; ``"head"`` for the head) and the adapter's own modules, in order."""
    family = adapter.family
    if family not in HEADS:
        raise ConfigError(f"offload chains are built for the families {', '.join(sorted(HEADS))}; "
                          f"{adapter.name!r} is {family!r} (add its head to edgeadapt.offload.blocks.HEADS)")
    model = adapter.model
    if isinstance(adapter, CNNAdapter):
        names = adapter.stages()
    else:
        embeddings = adapter.embeddings()
        if len(embeddings) != 1:
            raise ConfigError(f"{adapter.name!r}: a chain needs one embedding module, found {embeddings}")
        layers = adapter.layers_path()
        names = embeddings + [f"{layers}.{i}" for i in range(len(model.get_submodule(layers)))]
    spec, prefix = HEADS[family], _base_prefix(model)
    pool = SpatialMean() if spec.pool == SPATIAL_MEAN else model.get_submodule(prefix + spec.pool) \
        if spec.pool else None
    head = Head(model.get_submodule(prefix + spec.norm) if spec.norm else None, pool, spec.token,
                model.get_submodule(spec.classifier),
                model.get_submodule(spec.dropout) if spec.dropout else None)
    return names + ["head"], [model.get_submodule(n) for n in names] + [head]


def block_chain(adapter: Any) -> BlockChain:
    """The adapter's model as a :class:`BlockChain` sharing its modules (input: ``pixel_values``)."""
    return BlockChain(*block_modules(adapter))


# -- width plans -------------------------------------------------------------------------------
def _grouping(group: Any) -> int:
    """Channel groups a grouped (not depthwise) convolution in a torch-pruning group imposes."""
    counts = [dep.target.module.groups for dep, _ in group
              if isinstance(dep.target.module, nn.Conv2d) and 1 < dep.target.module.groups
              and dep.target.module.groups != dep.target.module.out_channels]
    return max(counts, default=1)


def inner_channel_groups(adapter: CNNAdapter, graph: Any = None) -> dict[str, tuple[int, Any]]:
    """Root name -> (stage index, torch-pruning group) of every prunable channel group whose modules
    all lie inside one stage (pruning it leaves every stage's output channels as they are)."""
    graph = graph or dependency_graph(adapter)
    stages = adapter.stages()
    names = {m: n for n, m in adapter.model.named_modules()}
    out = {}
    for root, group in prunable_groups(adapter, graph).items():
        owners = set()
        for dep, _ in group:
            name = names.get(dep.target.module)
            if name is not None:
                owners.add(next((i for i, s in enumerate(stages) if name.startswith(s + ".")), None))
        if len(owners) == 1 and None not in owners:
            out[root] = (owners.pop(), group)
    return out


def width_plans(adapter: Any, widths: Sequence[float]) -> list[ChannelPlan | PruningPlan]:
    """One plan per width narrowing every block of the (dense) ``adapter`` to that width (share of
    units kept, by weight magnitude), block outputs unchanged: the inner channel groups of a CNN's
    stages, the heads and FFN neurons of a transformer's layers. Scores are computed once."""
    bad = [w for w in widths if not 0.0 < w <= 1.0]
    if bad:
        raise ConfigError(f"a width is the share of units kept, in (0, 1]; got {bad}")
    if isinstance(adapter, CNNAdapter):
        graph = dependency_graph(adapter)
        inner = inner_channel_groups(adapter, graph)
        scores = channel_scores(adapter, "magnitude", graph=graph)
        plans: list[ChannelPlan | PruningPlan] = []
        for width in widths:
            groups = []
            for root, (_, group) in sorted(inner.items()):
                kept = select_channels(scores[root], 1.0 - width, _grouping(group))
                if len(kept) < len(scores[root]):
                    groups.append(ChannelGroup(root, len(scores[root]), kept))
            plans.append(ChannelPlan(adapter.fingerprint(), groups))
        return plans
    scores = magnitude(adapter)
    plans = []
    for width in widths:
        blocks = []
        for i, (heads, neurons) in enumerate(zip(scores["heads"], scores["neurons"])):
            if width == 1.0:
                blocks.append(BlockPlan(i))
                continue
            top = [sorted(torch.argsort(s, descending=True, stable=True)[:max(1, round(width * len(s)))]
                          .tolist()) for s in (heads, neurons)]
            blocks.append(BlockPlan(i, top[0], top[1]))
        plans.append(PruningPlan(adapter.fingerprint(), blocks))
    return plans


def apply_width_plan(adapter: Any, plan: ChannelPlan | PruningPlan) -> Any:
    """Apply a plan of :func:`width_plans` (either kind) to ``adapter`` in place."""
    if isinstance(adapter, CNNAdapter):
        return apply_channel_plan(adapter, plan)
    return apply_plan(adapter, plan)


# -- descendants -------------------------------------------------------------------------------
@dataclass
class Descendants:
    """Every block of a chain at every width: ``modules[b][w]`` is block ``b`` at ``widths[w]``.

    ``plans[w]`` made width ``widths[w]`` from the base model; ``base`` is the base model's identity
    (name, hash, architecture, class) and ``base_config`` its config as a dict; ``losses`` holds the
    distillation loss per epoch of each pruned ``(block, width index)``."""

    names: list[str]
    widths: tuple[float, ...]
    modules: list[list[nn.Module]]
    plans: list[ChannelPlan | PruningPlan]
    base: dict[str, Any]
    base_config: dict[str, Any]
    losses: dict[str, list[float]] = field(default_factory=dict)

    def chain(self, widths: Sequence[float]) -> BlockChain:
        """The chain with block ``b`` at ``widths[b]`` (each one of :attr:`widths`)."""
        if len(widths) != len(self.names):
            raise ConfigError(f"{len(widths)} widths for {len(self.names)} blocks")
        unknown = [w for w in widths if w not in self.widths]
        if unknown:
            raise ConfigError(f"widths {unknown} were not built; built: {list(self.widths)}")
        return BlockChain(self.names, [self.modules[b][self.widths.index(w)] for b, w in enumerate(widths)])

    def params(self, block: int, width_index: int) -> int:
        return sum(p.numel() for p in self.modules[block][width_index].parameters())

    def eval(self) -> Descendants:
        for row in self.modules:
            for m in row:
                m.eval()
        return self


def make_descendants(adapter: Any, widths: Sequence[float] = WIDTHS) -> Descendants:
    """Every block of the dense ``adapter`` at every width (1.0 must be among them), each width
    made by :func:`width_plans` + apply on a copy of the model. The adapter is left as it was."""
    widths = tuple(float(w) for w in widths)
    if 1.0 not in widths or len(set(widths)) != len(widths):
        raise ConfigError(f"widths must be distinct and include 1.0 (the block itself); got {list(widths)}")
    if adapter.plan is not None and not adapter.plan.is_dense():
        raise ConfigError(f"{adapter.name!r} is already pruned ({adapter.plan.summary()}); descendants are "
                          "made from a dense model")
    names, _ = block_modules(adapter)
    modules: list[list[nn.Module]] = [[] for _ in names]
    plans = width_plans(adapter, widths)
    for plan in plans:
        work = copy.deepcopy(adapter)
        apply_width_plan(work, plan)
        for row, module in zip(modules, block_modules(work)[1]):
            row.append(module.eval())
    base = {"name": adapter.name, "hash": adapter.base_hash(), "architecture": adapter.fingerprint(),
            "class": type(adapter.model).__name__}
    return Descendants(names, widths, modules, plans, base, adapter.base_config.to_dict())


def _pixels(batch: Any) -> torch.Tensor:
    return batch["pixel_values"] if isinstance(batch, dict) else batch


def distill(desc: Descendants, batches: Iterable[Any], epochs: int = 1,
            lr: float = 3e-4) -> dict[str, list[float]]:
    """Retrain every pruned descendant block-wise (LegoDNN): per batch one teacher pass of the
    full-width chain (no gradients) gives each block's input and output; each descendant narrower
    than its block takes one Adam step on ``MSE(descendant(input), output)``. No labels are used.
    ``batches`` yields ``pixel_values`` tensors or dicts holding them (re-iterable for several
    epochs). Returns (and records in ``desc.losses``) the mean loss per epoch of each
    ``"block/width"``; descendants are left in eval mode."""
    if epochs < 1 or lr <= 0:
        raise ConfigError(f"distillation needs epochs >= 1 and lr > 0; got epochs={epochs}, lr={lr}")
    full = desc.widths.index(1.0)
    teacher = desc.chain([1.0] * len(desc.names)).eval()
    trainees = {f"{desc.names[b]}/{desc.widths[w]}": (b, w) for b in range(len(desc.names))
                for w in range(len(desc.widths)) if w != full and desc.params(b, w) < desc.params(b, full)}
    optims = {k: torch.optim.Adam(desc.modules[b][w].parameters(), lr=lr) for k, (b, w) in trainees.items()}
    batches = list(batches)
    for _ in range(epochs):
        sums = dict.fromkeys(trainees, 0.0)
        for batch in batches:
            x = _pixels(batch)
            with torch.no_grad():
                outs = teacher.trace(x)
            ins = [x, *outs[:-1]]
            for key, (b, w) in trainees.items():
                student = desc.modules[b][w].train()
                loss = nn.functional.mse_loss(student(ins[b]), outs[b])
                optims[key].zero_grad(set_to_none=True)
                loss.backward()
                optims[key].step()
                sums[key] += loss.item()
        for key in trainees:
            desc.losses.setdefault(key, []).append(sums[key] / max(1, len(batches)))
    desc.eval()
    return desc.losses
