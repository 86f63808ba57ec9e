"""One call from "model + budget" to a pruned model: score → select → apply.

The budget is named explicitly (:mod:`edgeadapt.pruning.budget`): ``unit_sparsity`` (the fraction
of the units of each target kind removed) or ``param_sparsity`` (the fraction of the block
parameters removed).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.pruning.apply import apply_plan, current_plan, meta_copy
from edgeadapt.pruning.budget import (
    check_budget,
    check_steps,
    lift,
    prune_to_param_sparsity,
    restore_kind,
    schedule,
)
from edgeadapt.pruning.groups import KINDS
from edgeadapt.pruning.importance import DEFAULT_IMPORTANCE, Batch, Scores, check_importance, score
from edgeadapt.pruning.plan import PruningPlan
from edgeadapt.pruning.request import check_request
from edgeadapt.pruning.select import DEFAULT_SCOPE, select
from edgeadapt.training.device import resolve_device, to_device


def prune(adapter: ModelAdapter, targets: Sequence[str] = ("neurons",), importance: str = DEFAULT_IMPORTANCE,
          batches: Iterable[Batch] | None = None, *, unit_sparsity: float | None = None,
          param_sparsity: float | None = None, scope: str = DEFAULT_SCOPE, min_keep: int = 1,
          protect_first: int = 0, protect_last: int = 0, seed: int = 0, progress: bool = False,
          device: str = "auto", iterative_steps: int = 1) -> PruningPlan:
    """Prune the ``targets`` kinds (heads/neurons/layers) of ``adapter`` by ``importance`` to exactly
    one budget, given by name.

    - ``unit_sparsity=s``: remove ``s`` of each kind; kinds are pruned one after another,
      re-scoring on the shrunken model each time.
    - ``param_sparsity=p``: score the dense model, then remove the closest achievable share ``p``
      of the block parameters (:func:`~edgeadapt.pruning.budget.prune_to_param_sparsity`).

    ``iterative_steps=k`` (default 1: one shot) reaches the same budget in ``k`` steps along the
    linear schedule ``s * i / k`` (torch-pruning's ``iterative_steps``), re-scoring the shrunken model
    on ``batches`` before every step and every kind (Molchanov et al., 2019: prune a few units,
    re-estimate importance, repeat). Counts are relative to the model as it was when the call
    started, so the last step removes exactly what one shot would; only which units differs.

    A request that removes nothing (every target rounds to zero units, has none to lose, or lies in
    protected layers) raises :class:`~edgeadapt.errors.InfeasibleError` before any scoring; a target
    of several that removes nothing is a ``UserWarning`` (:func:`~edgeadapt.pruning.request.check_request`).

    Scoring runs on ``device`` (``"auto"``: CUDA when present); the model stays there. ``seed``
    seeds ``random`` importance. Returns the plan now realised by ``adapter.model``.

    >>> prune(load_adapter("tiny-llama"), ["heads"], "magnitude", unit_sparsity=0.25)  # doctest: +SKIP
    """
    if isinstance(targets, (int, float)):
        raise TypeError("prune() takes the budget by name: prune(adapter, targets, importance, batches, "
                        "unit_sparsity=S) or param_sparsity=S")
    budget, sparsity = check_budget(unit_sparsity, param_sparsity)
    check_importance(importance)
    unknown = [t for t in targets if t not in KINDS]
    if unknown or not targets:
        raise ConfigError(f"targets must be a non-empty subset of {', '.join(KINDS)}, got {list(targets)}")
    check_request(adapter, targets, budget, sparsity, scope, min_keep, protect_first, protect_last)
    dev = resolve_device(device)
    adapter.model.to(dev)
    batches = [to_device(b, dev) for b in batches] if batches is not None else None
    steps = check_steps(iterative_steps)

    def rescore(a: ModelAdapter) -> Scores:
        return score(a, importance, batches, progress=progress, seed=seed)

    kw = {"scope": scope, "min_keep": min_keep, "protect_first": protect_first, "protect_last": protect_last}
    if budget == "param":
        prune_to_param_sparsity(adapter, sparsity, targets, rescore(adapter), iterative_steps=steps,
                                rescore=rescore, **kw)
        return adapter.plan
    if steps == 1:
        for kind in targets:
            apply_plan(adapter, select(adapter, rescore(adapter), kind, sparsity, **kw))
        return adapter.plan
    start, meta = current_plan(adapter), meta_copy(adapter)
    for s in schedule(sparsity, steps):
        for kind in targets:
            scores, now = rescore(adapter), current_plan(adapter)
            onto = restore_kind(now, start, kind)  # count this kind from where the call started
            probe = copy.deepcopy(meta)
            apply_plan(probe, onto)
            apply_plan(adapter, select(probe, lift(scores, now, onto), kind, s, **kw))
    return adapter.plan
