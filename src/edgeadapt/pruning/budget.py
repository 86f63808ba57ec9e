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

Both take per-group scores computed on the *dense* model
(:func:`edgeadapt.pruning.importance.score`) and apply the plan with
:func:`edgeadapt.pruning.apply.apply_plan`, so the result saves and reloads exactly.

Iterative pruning (``iterative_steps=k``, default 1 = one shot): the budget is reached in ``k``
steps along a linear schedule ``target * i / k`` (:func:`schedule`, torch-pruning's
``linear_scheduler`` / ``iterative_steps``), and before every step after the first the *current,
shrunken* model is re-scored by the caller's ``rescore`` (fresh calibration gradients), so units
are ranked in the model they will be removed from (Molchanov et al., 2019, "Importance Estimation
for Neural Network Pruning", prune-and-re-score iterations). Each step's plan is built on the dense
structure from the current scores :func:`lifted <lift>` to it (units already removed rank first),
so plans compose (indices always refer to the base model) and the last step is the one-shot budget:
the same layer count and unit fraction, hence the same unit counts and parameter share.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from edgeadapt.errors import ConfigError, InfeasibleError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.pruning.apply import apply_plan, current_plan, meta_copy, params_under
from edgeadapt.pruning.importance import Scores
from edgeadapt.pruning.plan import BlockPlan, PlanError, PruningPlan
from edgeadapt.pruning.request import (
    Removal,
    check_request,
    check_targets,
    just_above,
    refuse_or_warn,
    removed_units,
    unit_removals,
)
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


Rescore = Callable[[ModelAdapter], Scores]
"""Scores of the adapter's *current* model (one tensor per current block), e.g.
``lambda a: score(a, "taylor", batches)``; called between iterative steps."""


def check_steps(iterative_steps: int, rescore: Rescore | None = None, needs_rescore: bool = False) -> int:
    """``iterative_steps`` if it is an integer >= 1; otherwise a :class:`ConfigError`, as also
    when ``needs_rescore`` and more than one step are asked for without ``rescore``."""
    if isinstance(iterative_steps, bool) or not isinstance(iterative_steps, int) or iterative_steps < 1:
        raise ConfigError(f"iterative_steps must be an integer >= 1 (1 = one-shot), got {iterative_steps!r}")
    if needs_rescore and iterative_steps > 1 and rescore is None:
        raise ConfigError("iterative_steps > 1 re-scores the shrunken model between steps: pass rescore= "
                          "(e.g. lambda a: score(a, 'taylor', batches))")
    return iterative_steps


def schedule(target: float, steps: int) -> list[float]:
    """The budgets of ``steps`` iterative steps, linear in the budget: ``target * i / steps`` for
    ``i = 1..steps`` (torch-pruning's ``linear_scheduler`` without its leading 0). The last one is
    ``target`` itself, bit for bit."""
    check_steps(steps)
    return [target * i / steps for i in range(1, steps)] + [target]


def lift(scores: Scores, scored_on: PruningPlan, onto: PruningPlan) -> Scores:
    """Scores computed on a model realising ``scored_on``, re-indexed to the blocks and units of the
    larger plan ``onto`` (``scored_on`` must keep a subset of what ``onto`` keeps). Units and layers
    that ``onto`` has but ``scored_on`` no longer has score ``-inf``, so a selection on ``onto``
    removes them first: a plan selected from lifted scores keeps only units the scored model still
    has, and its indices refer to the base model like every plan."""
    position = {b.index: i for i, b in enumerate(scored_on.blocks)}
    gone = float("-inf")
    layer_scores = scores["layers"][0]
    out: Scores = {"layers": [torch.tensor([float(layer_scores[position[b.index]]) if b.index in position
                                            else gone for b in onto.blocks])]}
    for kind in ("heads", "neurons"):
        kept = onto.kept_heads if kind == "heads" else onto.kept_neurons
        have = scored_on.kept_heads if kind == "heads" else scored_on.kept_neurons
        per_block = []
        for b in onto.blocks:
            units = kept(b)
            lifted = torch.full((len(units),), gone)
            if b.index in position:
                pos = position[b.index]
                where = {u: j for j, u in enumerate(have(scored_on.blocks[pos]))}
                src = scores[kind][pos]
                for k, u in enumerate(units):
                    if u in where:
                        lifted[k] = float(src[where[u]])
            per_block.append(lifted)
        out[kind] = per_block
    return out


def restore_kind(current: PruningPlan, start: PruningPlan, kind: str) -> PruningPlan:
    """``current`` with the units of ``kind`` (heads, neurons, or the layers themselves) put back
    as they were in ``start`` (``current`` is a subset of ``start``): the structure an iterative step
    selects ``kind`` on, so its budget counts from where the call started."""
    if kind == "layers":
        blocks = [BlockPlan(b.index, *((c.heads, c.neurons) if (c := current.block(b.index)) else
                                       (b.heads, b.neurons))) for b in start.blocks]
    else:
        blocks = []
        for b in current.blocks:
            s = start.block(b.index)
            blocks.append(BlockPlan(b.index, s.heads if kind == "heads" else b.heads,
                                    s.neurons if kind == "neurons" else b.neurons))
    return PruningPlan(dict(current.architecture), blocks)


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


def layers_to_drop(param_sparsity: float, n_layers: int, targets: Sequence[str],
                   protected: int = 0) -> int:
    """Whole layers removed for a parameter budget: ``round(p * L)`` when layers are the only
    targets; in a mix, layers take at most half the target (``floor(p * L / 2)``) and
    heads/neurons the rest."""
    if "layers" not in targets:
        return 0
    alone = all(k == "layers" for k in targets)
    n = round(param_sparsity * n_layers) if alone else math.floor(param_sparsity * n_layers / 2 + 1e-9)
    return min(n, n_layers - 1, n_layers - protected)


class _Budget:
    """Shared set-up of both budget searches: a dense meta copy and its parameter counts."""

    def __init__(self, adapter: ModelAdapter, targets: Sequence[str]) -> None:
        self.targets = list(dict.fromkeys(targets))
        check_targets(self.targets)
        if getattr(adapter, "plan", None) is not None and not adapter.plan.is_dense():
            raise ConfigError("pruning to a budget expects a dense model (scores index its units); "
                              "this one is already pruned")
        self.layers = adapter.layers_path()
        self.meta = meta_copy(adapter)
        dense = current_plan(self.meta)
        self.n_layers = len(dense.blocks)
        self.before = params_under(self.meta, dense, self.layers)
        self.total_before = params_under(self.meta, dense)
        self.units = [k for k in ("heads", "neurons") if k in self.targets]

    def removed(self, plan: PruningPlan) -> float:
        return 1.0 - params_under(self.meta, plan, self.layers) / self.before

    def apply(self, adapter: ModelAdapter, plan: PruningPlan, fraction: float, drop: int) -> PruneOutcome:
        apply_plan(adapter, plan)
        after = sum(p.numel() for p in adapter.model.get_submodule(self.layers).parameters())
        total_after = sum(p.numel() for p in adapter.model.parameters())
        return PruneOutcome(plan, fraction, drop, self.before, after, self.total_before, total_after)


def prune_to_unit_sparsity(adapter: ModelAdapter, unit_sparsity: float, targets: Sequence[str],
                           scores: Scores, scope: str = DEFAULT_SCOPE, min_keep: int = 1,
                           protect_first: int = 0, protect_last: int = 0, iterative_steps: int = 1,
                           rescore: Rescore | None = None) -> PruneOutcome:
    """Prune ``adapter`` in place, removing ``unit_sparsity`` of the units of each kind in
    ``targets``: ``round(s * L)`` layers, then ``s`` of the heads and of the FFN neurons of the
    layers left; ``scores`` are per-group scores of the dense model.

    ``iterative_steps=k`` reaches the budget in ``k`` steps of unit sparsity ``s * i / k``,
    re-scoring the shrunken model with ``rescore`` before every step after the first (see the
    module docstring); the last step removes exactly what one shot would (``round(s * L)`` layers,
    ``s`` of each kind), only which units differs.

    Raises :class:`ConfigError` for a sparsity outside [0, 1), a target kind the model lacks, or
    ``iterative_steps`` below 1 (above 1 without ``rescore``), and :class:`PlanError` when protected
    layers leave too few layers to drop."""
    check_sparsity(unit_sparsity, "unit_sparsity")
    steps = check_steps(iterative_steps, rescore, needs_rescore=True)
    protected = protect_first + protect_last
    budget = _Budget(adapter, targets)
    check_request(adapter, budget.targets, "unit", unit_sparsity, scope, min_keep, protect_first,
                  protect_last)
    drop = round(unit_sparsity * budget.n_layers) if "layers" in budget.targets else 0
    if drop and (drop >= budget.n_layers or drop > budget.n_layers - protected):
        raise PlanError(f"unit_sparsity: removing {drop} of {budget.n_layers} layers is impossible with "
                        f"{protected} protected (at least one layer stays); lower unit_sparsity")
    kw = {"scope": scope, "min_keep": min_keep, "protect_first": protect_first, "protect_last": protect_last}
    dense = current_plan(budget.meta)
    for s in schedule(unit_sparsity, steps)[:-1]:
        n_drop = round(s * budget.n_layers) if "layers" in budget.targets else 0
        apply_plan(adapter, plan_at(budget.meta, scores, budget.units, s, n_drop, **kw))
        scores = lift(rescore(adapter), current_plan(adapter), dense)
    plan = plan_at(budget.meta, scores, budget.units, unit_sparsity, drop, **kw)
    return budget.apply(adapter, plan, unit_sparsity, drop)


def prune_to_param_sparsity(adapter: ModelAdapter, param_sparsity: float, targets: Sequence[str],
                            scores: Scores, scope: str = DEFAULT_SCOPE, min_keep: int = 1,
                            protect_first: int = 0, protect_last: int = 0, iterative_steps: int = 1,
                            rescore: Rescore | None = None) -> PruneOutcome:
    """Prune ``adapter`` in place so the removed share of block parameters is the closest
    achievable to ``param_sparsity``; ``scores`` are per-group scores of the dense model.

    ``iterative_steps=k`` reaches the budget in ``k`` steps of parameter share
    ``param_sparsity * i / k``, re-scoring the shrunken model with ``rescore`` before every step
    after the first (see the module docstring). The last step applies the one-shot unit fraction and
    layer count (found first, from ``scores``), so the parameter share is the one-shot's on
    architectures whose layers are alike; intermediate fractions never pass it.

    Raises :class:`ConfigError` for a sparsity outside [0, 1), a target kind the model lacks, a
    target beyond what floors and protected layers allow (naming the largest achievable), or
    ``iterative_steps`` below 1 (above 1 without ``rescore``)."""
    check_sparsity(param_sparsity, "param_sparsity")
    steps = check_steps(iterative_steps, rescore, needs_rescore=True)
    protected = protect_first + protect_last
    budget = _Budget(adapter, targets)
    check_request(adapter, budget.targets, "param", param_sparsity, scope, min_keep, protect_first,
                  protect_last)
    kw = {"scope": scope, "min_keep": min_keep, "protect_first": protect_first, "protect_last": protect_last}

    def search(target: float, scores: Scores, lowest: float = 0.0, highest: float | None = None
               ) -> tuple[float, int, PruningPlan]:
        """The unit fraction (within [lowest, highest]), layer count and plan whose removed share is
        closest to ``target``."""
        drop = layers_to_drop(target, budget.n_layers, budget.targets, protected)

        def removed(fraction: float) -> tuple[float, PruningPlan]:
            plan = plan_at(budget.meta, scores, budget.units, fraction, drop, **kw)
            return budget.removed(plan), plan

        best_f = 0.0
        if budget.units and target > 0:
            top = 1.0 - 1e-9
            cap, _ = removed(top)
            if cap < target:
                raise ConfigError(f"param_sparsity: {target:.3f} of the block parameters cannot be "
                                  f"removed with targets {budget.targets}, min_keep={min_keep} and "
                                  f"{protected} protected layers; the most achievable is {cap:.3f}. Lower "
                                  "param_sparsity or add a target (e.g. layers)")
            lo, hi = 0.0, top  # removed(lo) <= target <= removed(hi)
            for _ in range(30):
                mid = (lo + hi) / 2
                if removed(mid)[0] <= target:
                    lo = mid
                else:
                    hi = mid
            (s_lo, _), (s_hi, _) = removed(lo), removed(hi)
            best_f = lo if abs(s_lo - target) <= abs(s_hi - target) else hi
        best_f = min(max(best_f, lowest), best_f if highest is None else highest)
        return best_f, drop, plan_at(budget.meta, scores, budget.units, best_f, drop, **kw)

    final_f, final_drop, plan = search(param_sparsity, scores)
    if param_sparsity > 0:
        _check_param_removes(budget, scores, plan, param_sparsity, final_f, kw)
    if steps > 1:
        dense = current_plan(budget.meta)
        done = 0.0
        for p in schedule(param_sparsity, steps)[:-1]:
            done, _, step_plan = search(p, scores, lowest=done, highest=final_f)
            apply_plan(adapter, step_plan)
            scores = lift(rescore(adapter), current_plan(adapter), dense)
        plan = plan_at(budget.meta, scores, budget.units, final_f, final_drop, **kw)
    return budget.apply(adapter, plan, final_f, final_drop)


def _check_param_removes(budget: _Budget, scores: Scores, plan: PruningPlan, param_sparsity: float,
                         fraction: float, kw: dict) -> None:
    """After the search: a parameter share closest-achieved by removing nothing is an
    :class:`InfeasibleError` naming the smallest share one removal takes (and the smallest
    ``param_sparsity`` that gets it); a target that loses nothing while others do is a warning."""
    removed = removed_units(current_plan(budget.meta), plan)
    kinds = budget.targets
    what = f"param_sparsity {param_sparsity:g}"
    removals = unit_removals(budget.meta, budget.units, 1.0 - 1e-9, **kw)
    if any(removed[k] for k in kinds):
        warned = {r.kind for r in removals if r.removed == 0}  # check_request has named these already
        zero = []
        for k in kinds:
            if removed[k] or k in warned:
                continue
            why = (f"layers: floor({param_sparsity:g} × {budget.n_layers} / 2) = 0 (with other targets, "
                   f"layers take at most half the share)" if k == "layers" else
                   f"{k}: none removed at the unit fraction {fraction:.3f} that comes closest to "
                   f"{param_sparsity:g} of the block parameters")
            zero.append(Removal(k, 0, None, why))
        refuse_or_warn(zero, kinds, what, "")
        return
    shares = []
    smallest = [r.smallest for r in removals if r.smallest is not None]
    if smallest:
        shares.append(budget.removed(plan_at(budget.meta, scores, budget.units, min(smallest), 0, **kw)))
    if "layers" in kinds and budget.n_layers >= 2:
        shares.append(budget.removed(plan_at(budget.meta, scores, [], 0.0, 1, **kw)))
    share = min((x for x in shares if x > 0), default=None)
    hint = "" if share is None else (f"the smallest removal takes {share:.4f} of the block parameters, so "
                                     f"the smallest param_sparsity that removes anything is about "
                                     f"{just_above(share / 2)}")
    raise InfeasibleError(f"{what} removes nothing (targets {', '.join(kinds)}): the closest achievable "
                          f"share is 0; {hint}. Raise param_sparsity")
