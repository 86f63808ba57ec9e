"""Block-level structured pruning of a causal LM to a target *parameter* sparsity.

Groups are attention heads (KV groups under GQA), FFN neurons and whole layers
(:mod:`edgeadapt.pruning.groups`). Scores come from :mod:`edgeadapt.pruning.importance`, accumulated
over calibration batches once on the dense model:

- ``taylor``: first-order ``|w · dL/dw|`` summed over each group (per batch, then accumulated);
- ``fisher``: the diagonal Fisher of each group's mask variable, i.e. the per-sample squared
  first-order term ``(Σ_group w · dL/dw)²`` averaged over samples (Kwon et al., 2022);
- ``magnitude``: L1 norm of the group's weights; ``random``: seeded random scores (a baseline).

The target is a fraction of the *block parameters* (everything inside the transformer layers;
embeddings and the LM head are never pruned). One fraction ``s`` is applied to every requested
granularity (first ``s`` of the layers, then ``s`` of the heads and of the neurons of the layers
left, ranked globally with per-layer floors or uniformly); ``s`` is found by bisection on a
weightless meta copy so the removed share of block parameters is the closest achievable to the
target. The plan is applied with :func:`edgeadapt.pruning.apply.apply_plan`, so the result saves
and reloads exactly (:func:`edgeadapt.pruning.checkpoint.save_pruned`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import HFAdapter
from edgeadapt.pruning.apply import apply_plan, current_plan, meta_copy, params_under
from edgeadapt.pruning.groups import num_units
from edgeadapt.pruning.importance import Batch, Scores, score
from edgeadapt.pruning.plan import PruningPlan
from edgeadapt.pruning.select import check_sparsity, select

_IMPORTANCE = {"taylor": "taylor-abs", "fisher": "taylor", "magnitude": "magnitude"}


@dataclass
class PruneOutcome:
    """What :func:`prune_to_sparsity` did."""

    plan: PruningPlan
    fraction: float            # the per-kind fraction s that was applied
    block_params_before: int
    block_params_after: int
    params_before: int
    params_after: int

    @property
    def sparsity(self) -> float:
        """Achieved fraction of block parameters removed."""
        return 1.0 - self.block_params_after / self.block_params_before

    def to_dict(self) -> dict[str, float | int | str]:
        return {"fraction": self.fraction, "sparsity": self.sparsity,
                "block_params_before": self.block_params_before,
                "block_params_after": self.block_params_after, "params_before": self.params_before,
                "params_after": self.params_after, "plan": self.plan.summary()}


def random_scores(adapter: HFAdapter, seed: int = 0) -> Scores:
    """Seeded uniform scores per head, neuron and layer (a baseline that knows nothing)."""
    g = torch.Generator().manual_seed(seed)
    blocks = adapter.blocks()
    return {"heads": [torch.rand(num_units(b, "heads"), generator=g) for b in blocks],
            "neurons": [torch.rand(num_units(b, "neurons"), generator=g) for b in blocks],
            "layers": [torch.rand(len(blocks), generator=g)]}


def sensitivity(adapter: HFAdapter, importance: str, batches: Iterable[Batch] | None, seed: int = 0,
                progress: bool = False) -> Scores:
    """Per-group scores of ``adapter`` by ``importance`` (taylor, fisher, magnitude or random)."""
    if importance == "random":
        return random_scores(adapter, seed)
    if importance not in _IMPORTANCE:
        raise ConfigError(f"importance must be one of taylor, fisher, magnitude, random; got {importance!r}")
    return score(adapter, _IMPORTANCE[importance], batches, progress=progress)


def check_granularity(adapter: HFAdapter, granularity: Sequence[str], protect: int = 0) -> None:
    """Refuse a granularity the architecture cannot prune, naming what it has."""
    blocks = adapter.blocks()
    for kind in granularity:
        if kind == "layers":
            if len(blocks) - protect < 1 or len(blocks) < 2:
                raise ConfigError(f"granularity: 'layers' needs at least 2 layers with one unprotected; "
                                 f"{adapter.name} has {len(blocks)} (protected {protect})")
        elif kind in ("heads", "neurons"):
            most = max(num_units(b, kind) for b in blocks)
            if most <= 1:
                what = "KV heads" if kind == "heads" else "FFN neurons"
                raise ConfigError(f"granularity: {adapter.name} has {most} {what} per layer and every "
                                 f"layer keeps at least one, so there are no {kind} to prune; use "
                                 f"{' or '.join(k for k in ('heads', 'neurons', 'layers') if k != kind)}")
        else:
            raise ConfigError(f"granularity: {kind!r} is not one of heads, neurons, layers")


def _by_position(scores: Scores, plan: PruningPlan) -> Scores:
    """Scores computed on the dense model, re-indexed to the blocks ``plan`` keeps, and to the
    heads/neurons each kept block still has."""
    out: Scores = {"layers": scores["layers"]}
    for kind in ("heads", "neurons"):
        per_block = []
        for b in plan.blocks:
            kept = plan.kept_heads(b) if kind == "heads" else plan.kept_neurons(b)
            per_block.append(scores[kind][b.index][kept])
        out[kind] = per_block
    return out


def plan_at(meta: HFAdapter, scores: Scores, units: Sequence[str], fraction: float, drop_layers: int = 0,
            scope: str = "global", min_keep: int = 1, protect_first: int = 0, protect_last: int = 0
            ) -> PruningPlan:
    """The plan removing the ``drop_layers`` least important layers, then ``fraction`` of every
    kind in ``units`` (heads/neurons) of the layers left, built on a copy of the meta adapter."""
    import copy

    probe = copy.deepcopy(meta)
    kw = {"scope": scope, "min_keep": min_keep, "protect_first": protect_first, "protect_last": protect_last}
    if drop_layers:
        n = len(current_plan(probe).blocks)
        apply_plan(probe, select(probe, scores, "layers", drop_layers / n, **kw))
    for kind in units:
        apply_plan(probe, select(probe, _by_position(scores, current_plan(probe)), kind, fraction, **kw))
    return current_plan(probe)


def layers_to_drop(sparsity: float, n_layers: int, granularity: Sequence[str], protected: int = 0) -> int:
    """Whole layers removed: ``round(sparsity * L)`` when layers are the only granularity; in a mix,
    layers take at most half the target (``floor(sparsity * L / 2)``) and heads/neurons the rest."""
    import math

    if "layers" not in granularity:
        return 0
    alone = all(k == "layers" for k in granularity)
    n = round(sparsity * n_layers) if alone else math.floor(sparsity * n_layers / 2 + 1e-9)
    return min(n, n_layers - 1, n_layers - protected)


def prune_to_sparsity(adapter: HFAdapter, sparsity: float, granularity: Sequence[str], scores: Scores,
                      scope: str = "global", min_keep: int = 1, protect_first: int = 0,
                      protect_last: int = 0) -> PruneOutcome:
    """Prune ``adapter`` in place so the removed share of block parameters is the closest achievable
    to ``sparsity``; ``scores`` are per-group scores of the dense model (:func:`sensitivity`).

    Raises ``ValueError`` for a sparsity outside [0, 1), a granularity the model lacks, or a target
    beyond what floors and protected layers allow (naming the largest achievable sparsity)."""
    check_sparsity(sparsity)
    granularity = list(dict.fromkeys(granularity))
    check_granularity(adapter, granularity, protect_first + protect_last)
    if getattr(adapter, "plan", None) is not None and not adapter.plan.is_dense():
        raise ConfigError("prune_to_sparsity expects a dense model; this one is already pruned")
    layers = adapter.layers_path()
    meta = meta_copy(adapter)
    dense = current_plan(meta)
    before = params_under(meta, dense, layers)
    total_before = params_under(meta, dense)
    units = [k for k in ("heads", "neurons") if k in granularity]
    drop = layers_to_drop(sparsity, len(dense.blocks), granularity, protect_first + protect_last)
    kw = {"scope": scope, "min_keep": min_keep, "protect_first": protect_first, "protect_last": protect_last}

    def removed(fraction: float) -> tuple[float, PruningPlan]:
        plan = plan_at(meta, scores, units, fraction, drop, **kw)
        return 1.0 - params_under(meta, plan, layers) / before, plan

    best_f, plan = 0.0, plan_at(meta, scores, [], 0.0, drop, **kw)
    if units and sparsity > 0:
        top = 1.0 - 1e-9
        cap, _ = removed(top)
        if cap < sparsity:
            raise ConfigError(f"sparsity: {sparsity:.3f} of the block parameters cannot be removed with "
                             f"granularity {granularity}, min_keep={min_keep} and "
                             f"{protect_first + protect_last} protected layers; the most achievable is "
                             f"{cap:.3f}. Lower the sparsity or add a granularity (e.g. layers)")
        lo, hi = 0.0, top  # removed(lo) <= sparsity <= removed(hi)
        for _ in range(30):
            mid = (lo + hi) / 2
            if removed(mid)[0] <= sparsity:
                lo = mid
            else:
                hi = mid
        (s_lo, p_lo), (s_hi, p_hi) = removed(lo), removed(hi)
        best_f, plan = (lo, p_lo) if abs(s_lo - sparsity) <= abs(s_hi - sparsity) else (hi, p_hi)
    apply_plan(adapter, plan)
    after = sum(p.numel() for p in adapter.model.get_submodule(layers).parameters())
    total_after = sum(p.numel() for p in adapter.model.parameters())
    return PruneOutcome(plan, best_f, before, after, total_before, total_after)
