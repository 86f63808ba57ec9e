"""One call from "model + sparsity" to a pruned model: score → select → apply."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.pruning.apply import apply_plan
from edgeadapt.pruning.groups import KINDS
from edgeadapt.pruning.importance import Batch, score
from edgeadapt.pruning.plan import PruningPlan
from edgeadapt.pruning.select import check_sparsity, select
from edgeadapt.training.device import resolve_device, to_device


def prune(adapter: ModelAdapter, sparsity: float, targets: Sequence[str] = ("neurons",),
          importance: str = "taylor", batches: Iterable[Batch] | None = None, scope: str = "uniform",
          protect_first: int = 0, protect_last: int = 0, progress: bool = False,
          device: str = "auto") -> PruningPlan:
    """Remove ``sparsity`` of each kind in ``targets`` (heads/neurons/layers) by ``importance``.

    Kinds are pruned one after another, re-scoring on the shrunken model each time. Scoring runs
    on ``device`` (``"auto"``: CUDA when present); the model stays there. Returns the plan now
    realised by ``adapter.model``.

    >>> prune(load_adapter("tiny-llama"), 0.25, ["heads", "neurons"], "magnitude")  # doctest: +SKIP
    """
    check_sparsity(sparsity)
    unknown = [t for t in targets if t not in KINDS]
    if unknown or not targets:
        raise ConfigError(f"targets must be a non-empty subset of {', '.join(KINDS)}, got {list(targets)}")
    dev = resolve_device(device)
    adapter.model.to(dev)
    batches = [to_device(b, dev) for b in batches] if batches is not None else None
    for kind in targets:
        scores = score(adapter, importance, batches, progress=progress)
        plan = select(adapter, scores, kind, sparsity, scope=scope,
                      protect_first=protect_first, protect_last=protect_last)
        apply_plan(adapter, plan)
    return adapter.plan
