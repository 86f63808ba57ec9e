"""Pruning to a budget: a fraction of *units* or a fraction of *block parameters*, for any adapter.

Two budgets, named apart everywhere (``edgeadapt prune``, ``edgeadapt llm-prune``, the Python API):

- ``unit_sparsity`` ``s``: the fraction of the units of each targeted kind removed — ``round(s * L)``
  of the ``L`` layers, then ``s`` of the heads (KV groups) and ``s`` of the FFN neurons of the
  layers left (:func:`prune_to_unit_sparsity`);
- ``param_sparsity`` ``p``: the fraction of the *block parameters* (everything inside the
  transformer layers; embeddings and the task head are never pruned) removed. One unit fraction is
  applied to every requested kind (layers take at most half the target in a mix, see
  :func:`layers_to_drop`) and found by bisection on a weightless meta copy, so the removed share is
  the closest achievable to ``p`` (:func:`prune_to_param_sparsity`).

Both take per-group scores computed once on the *dense* model
(:func:`edgeadapt.pruning.importance.score`) and apply the plan with
:func:`edgeadapt.pruning.apply.apply_plan`, so the result saves and reloads exactly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.pruning.apply import apply_plan, current_plan, meta_copy, params_under
from edgeadapt.pruning.groups import KINDS, num_units
from edgeadapt.pruning.importance import Scores
from edgeadapt.pruning.plan import PlanError, PruningPlan
from edgeadapt.pruning.select import DEFAULT_SCOPE, check_sparsity, select

BUDGETS = {
    "unit_sparsity": "fraction of the units (layers, heads, FFN neurons) of each targeted kind removed",
    "param_sparsity": "fraction of the block parameters removed (one unit fraction for every targeted "
                      "kind, found by bisection)",
}


def check_budget(unit_sparsity: float | None, param_sparsity: float | None,
                 names: tuple[str, str] = ("unit_sparsity", "param_sparsity")) -> tuple[str, float]:
    """``("unit", s)`` or ``("param", s)``: exactly one budget must be given, in [0, 1).
    ``names`` are how the caller spells the two (e.g. CLI flags) in the error."""
    if (unit_sparsity is None) == (param_sparsity is None):
        raise ConfigError(f"give exactly one budget: {names[0]} ({BUDGETS['unit_sparsity']}) or "
                          f"{names[1]} ({BUDGETS['param_sparsity']})")
    if unit_sparsity is not None:
        return "unit", check_sparsity(unit_sparsity, names[0])
    return "param", check_sparsity(param_sparsity, names[1])


@dataclass
class PruneOutcome:
    """What :func:`prune_to_unit_sparsity` / :func:`prune_to_param_sparsity` did."""

    plan: PruningPlan
    unit_sparsity: float       # the fraction of heads/neurons applied in every layer kept
    layers_dropped: int
    block_params_before: int
    block_params_after: int
    params_before: int
    params_after: int

    @property
    def param_sparsity(self) -> float:
        """Achieved fraction of block parameters removed."""
        return 1.0 - self.block_params_after / self.block_params_before

    def to_dict(self) -> dict[str, float | int | str]:
        return {"unit_sparsity": self.unit_sparsity, "param_sparsity": self.param_sparsity,
                "layers_dropped": self.layers_dropped, "block_params_before": self.block_params_before,
                "block_params_after": self.block_params_after, "params_before": self.params_before,
                "params_after": self.params_after, "plan": self.plan.summary()}


def check_granularity(adapter: ModelAdapter, granularity: Sequence[str], protect: int = 0) -> None:
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
                                  f"{' or '.join(k for k in KINDS if k != kind)}")
        else:
            raise ConfigError(f"granularity: {kind!r} is not one of {', '.join(KINDS)}")


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


def plan_at(meta: ModelAdapter, scores: Scores, units: Sequence[str], fraction: float, drop_layers: int = 0,
            scope: str = DEFAULT_SCOPE, min_keep: int = 1, protect_first: int = 0, protect_last: int = 0
            ) -> PruningPlan:
    """The plan removing the ``drop_layers`` least important layers, then ``fraction`` of every
    kind in ``units`` (heads/neurons) of the layers left, built on a copy of the (meta) adapter;
    ``scores`` are of the dense model."""
    probe = copy.deepcopy(meta)
    kw = {"scope": scope, "min_keep": min_keep, "protect_first": protect_first, "protect_last": protect_last}
    if drop_layers:
        n = len(current_plan(probe).blocks)
        apply_plan(probe, select(probe, scores, "layers", drop_layers / n, **kw))
    for kind in units:
        apply_plan(probe, select(probe, _by_position(scores, current_plan(probe)), kind, fraction, **kw))
    return current_plan(probe)


def layers_to_drop(param_sparsity: float, n_layers: int, granularity: Sequence[str],
                   protected: int = 0) -> int:
    """Whole layers removed for a parameter budget: ``round(p * L)`` when layers are the only
    granularity; in a mix, layers take at most half the target (``floor(p * L / 2)``) and
    heads/neurons the rest."""
    if "layers" not in granularity:
        return 0
    alone = all(k == "layers" for k in granularity)
    n = round(param_sparsity * n_layers) if alone else math.floor(param_sparsity * n_layers / 2 + 1e-9)
    return min(n, n_layers - 1, n_layers - protected)


class _Budget:
    """Shared set-up of both budget searches: a dense meta copy and its parameter counts."""

    def __init__(self, adapter: ModelAdapter, granularity: Sequence[str], protected: int) -> None:
        self.granularity = list(dict.fromkeys(granularity))
        check_granularity(adapter, self.granularity, protected)
        if getattr(adapter, "plan", None) is not None and not adapter.plan.is_dense():
            raise ConfigError("pruning to a budget expects a dense model (scores index its units); "
                              "this one is already pruned")
        self.layers = adapter.layers_path()
        self.meta = meta_copy(adapter)
        dense = current_plan(self.meta)
        self.n_layers = len(dense.blocks)
        self.before = params_under(self.meta, dense, self.layers)
        self.total_before = params_under(self.meta, dense)
        self.units = [k for k in ("heads", "neurons") if k in self.granularity]

    def removed(self, plan: PruningPlan) -> float:
        return 1.0 - params_under(self.meta, plan, self.layers) / self.before

    def apply(self, adapter: ModelAdapter, plan: PruningPlan, fraction: float, drop: int) -> PruneOutcome:
        apply_plan(adapter, plan)
        after = sum(p.numel() for p in adapter.model.get_submodule(self.layers).parameters())
        total_after = sum(p.numel() for p in adapter.model.parameters())
        return PruneOutcome(plan, fraction, drop, self.before, after, self.total_before, total_after)


def prune_to_unit_sparsity(adapter: ModelAdapter, unit_sparsity: float, granularity: Sequence[str],
                           scores: Scores, scope: str = DEFAULT_SCOPE, min_keep: int = 1,
                           protect_first: int = 0, protect_last: int = 0) -> PruneOutcome:
    """Prune ``adapter`` in place, removing ``unit_sparsity`` of the units of each kind in
    ``granularity``: ``round(s * L)`` layers, then ``s`` of the heads and of the FFN neurons of the
    layers left; ``scores`` are per-group scores of the dense model.

    Raises :class:`ConfigError` for a sparsity outside [0, 1) or a granularity the model lacks, and
    :class:`PlanError` when protected layers leave too few layers to drop."""
    check_sparsity(unit_sparsity, "unit_sparsity")
    protected = protect_first + protect_last
    budget = _Budget(adapter, granularity, protected)
    drop = round(unit_sparsity * budget.n_layers) if "layers" in budget.granularity else 0
    if drop and (drop >= budget.n_layers or drop > budget.n_layers - protected):
        raise PlanError(f"unit_sparsity: removing {drop} of {budget.n_layers} layers is impossible with "
                        f"{protected} protected (at least one layer stays); lower unit_sparsity")
    kw = {"scope": scope, "min_keep": min_keep, "protect_first": protect_first, "protect_last": protect_last}
    plan = plan_at(budget.meta, scores, budget.units, unit_sparsity, drop, **kw)
    return budget.apply(adapter, plan, unit_sparsity, drop)


def prune_to_param_sparsity(adapter: ModelAdapter, param_sparsity: float, granularity: Sequence[str],
                            scores: Scores, scope: str = DEFAULT_SCOPE, min_keep: int = 1,
                            protect_first: int = 0, protect_last: int = 0) -> PruneOutcome:
    """Prune ``adapter`` in place so the removed share of block parameters is the closest
    achievable to ``param_sparsity``; ``scores`` are per-group scores of the dense model.

    Raises :class:`ConfigError` for a sparsity outside [0, 1), a granularity the model lacks, or a
    target beyond what floors and protected layers allow (naming the largest achievable)."""
    check_sparsity(param_sparsity, "param_sparsity")
    protected = protect_first + protect_last
    budget = _Budget(adapter, granularity, protected)
    drop = layers_to_drop(param_sparsity, budget.n_layers, budget.granularity, protected)
    kw = {"scope": scope, "min_keep": min_keep, "protect_first": protect_first, "protect_last": protect_last}

    def removed(fraction: float) -> tuple[float, PruningPlan]:
        plan = plan_at(budget.meta, scores, budget.units, fraction, drop, **kw)
        return budget.removed(plan), plan

    best_f, plan = 0.0, plan_at(budget.meta, scores, [], 0.0, drop, **kw)
    if budget.units and param_sparsity > 0:
        top = 1.0 - 1e-9
        cap, _ = removed(top)
        if cap < param_sparsity:
            raise ConfigError(f"param_sparsity: {param_sparsity:.3f} of the block parameters cannot be "
                              f"removed with granularity {budget.granularity}, min_keep={min_keep} and "
                              f"{protected} protected layers; the most achievable is {cap:.3f}. Lower "
                              "param_sparsity or add a granularity (e.g. layers)")
        lo, hi = 0.0, top  # removed(lo) <= param_sparsity <= removed(hi)
        for _ in range(30):
            mid = (lo + hi) / 2
            if removed(mid)[0] <= param_sparsity:
                lo = mid
            else:
                hi = mid
        (s_lo, p_lo), (s_hi, p_hi) = removed(lo), removed(hi)
        best_f, plan = (lo, p_lo) if abs(s_lo - param_sparsity) <= abs(s_hi - param_sparsity) else (hi, p_hi)
    return budget.apply(adapter, plan, best_f, drop)
