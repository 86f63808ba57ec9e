"""One call from "model + budget" to a pruned model: score → select → apply.

The budget is named explicitly (:mod:`edgeadapt.pruning.budget`): ``unit_sparsity`` (the fraction
of the units of each target kind removed) or ``param_sparsity`` (the fraction of the block
parameters removed).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.pruning.apply import apply_plan
from edgeadapt.pruning.budget import check_budget, prune_to_param_sparsity
from edgeadapt.pruning.groups import KINDS
from edgeadapt.pruning.importance import DEFAULT_IMPORTANCE, Batch, check_importance, score
from edgeadapt.pruning.plan import PruningPlan
from edgeadapt.pruning.select import DEFAULT_SCOPE, select
from edgeadapt.training.device import resolve_device, to_device


def prune(adapter: ModelAdapter, targets: Sequence[str] = ("neurons",), importance: str = DEFAULT_IMPORTANCE,
          batches: Iterable[Batch] | None = None, *, unit_sparsity: float | None = None,
          param_sparsity: float | None = None, scope: str = DEFAULT_SCOPE, min_keep: int = 1,
          protect_first: int = 0, protect_last: int = 0, seed: int = 0, progress: bool = False,
          device: str = "auto") -> PruningPlan:
    """Prune the ``targets`` kinds (heads/neurons/layers) of ``adapter`` by ``importance`` to exactly
    one budget, given by name.

    - ``unit_sparsity=s``: remove ``s`` of each kind; kinds are pruned one after another,
      re-scoring on the shrunken model each time.
    - ``param_sparsity=p``: score once on the dense model, then remove the closest achievable
      share ``p`` of the block parameters (:func:`~edgeadapt.pruning.budget.prune_to_param_sparsity`).

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
    dev = resolve_device(device)
    adapter.model.to(dev)
    batches = [to_device(b, dev) for b in batches] if batches is not None else None
    if budget == "param":
        scores = score(adapter, importance, batches, progress=progress, seed=seed)
        prune_to_param_sparsity(adapter, sparsity, targets, scores, scope=scope, min_keep=min_keep,
                                protect_first=protect_first, protect_last=protect_last)
        return adapter.plan
    for kind in targets:
        scores = score(adapter, importance, batches, progress=progress, seed=seed)
        plan = select(adapter, scores, kind, sparsity, scope=scope, min_keep=min_keep,
                      protect_first=protect_first, protect_last=protect_last)
        apply_plan(adapter, plan)
    return adapter.plan
