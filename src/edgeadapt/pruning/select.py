"""Turn importance scores into a :class:`PruningPlan` removing a fraction of one kind's units.

``scope="uniform"`` (the default of every command) removes the same fraction in every block;
``scope="global"`` ranks units of a kind across all blocks, keeping at least ``min_keep`` per
block. Uniform is the default because it is meaningful for every importance (magnitude and
activation scores are not comparable across layers; Taylor and Fisher scores estimate a loss change
and are), it leaves equal widths, so a pruned model exports to a plain Hugging Face checkpoint, and
it is torch-pruning's default too. Protected first/last blocks are never touched.
"""

from __future__ import annotations

import math

import torch

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.pruning.apply import current_plan
from edgeadapt.pruning.groups import KINDS
from edgeadapt.pruning.importance import Scores
from edgeadapt.pruning.plan import BlockPlan, PlanError, PruningPlan

SCOPES = ("uniform", "global")
DEFAULT_SCOPE = "uniform"


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """A sparsity (unit or parameter) is the fraction removed: it must lie in [0, 1). ``name`` is
    the field or flag the error names."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or math.isnan(sparsity):
        raise ConfigError(f"{name} must be a number in [0, 1), got {sparsity!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"{name} must be in [0, 1) (the fraction removed), got {sparsity}")
    return float(sparsity)


def select(adapter: ModelAdapter, scores: Scores, kind: str, sparsity: float, scope: str = DEFAULT_SCOPE,
           min_keep: int = 1, protect_first: int = 0, protect_last: int = 0) -> PruningPlan:
    """A new plan removing the unit sparsity ``sparsity`` of ``kind`` units (of the current model)
    by lowest score."""
    check_sparsity(sparsity, "unit_sparsity")
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    plan = current_plan(adapter)
    n_blocks = len(plan.blocks)
    open_blocks = open_positions(n_blocks, protect_first, protect_last)
    new_blocks = [BlockPlan(b.index, b.heads, b.neurons) for b in plan.blocks]

    if kind == "layers":
        n_drop = round(sparsity * n_blocks)
        protected = n_blocks - len(open_blocks)
        if n_drop > len(open_blocks) or n_drop >= n_blocks:
            raise PlanError(f"cannot remove {n_drop} of {n_blocks} layers with {protected} protected")
        layer_scores = scores["layers"][0]
        drop = set(sorted(open_blocks, key=lambda i: float(layer_scores[i]))[:n_drop])
        return PruningPlan(dict(plan.architecture), [b for i, b in enumerate(new_blocks) if i not in drop])

    kept_ids = [plan.kept_heads(b) if kind == "heads" else plan.kept_neurons(b) for b in plan.blocks]
    sizes = {i: len(kept_ids[i]) for i in open_blocks}
    if scope == "uniform":
        n_remove = uniform_counts(sizes, sparsity, min_keep)
    else:
        n_remove = _global_counts(scores[kind], open_blocks, sizes, global_count(sizes, sparsity, min_keep),
                                  min_keep)
    for i in open_blocks:
        if n_remove[i] <= 0:
            continue
        order = torch.argsort(scores[kind][i], stable=True)  # ascending: least important first
        keep_local = sorted(order[n_remove[i]:].tolist())
        kept = [kept_ids[i][j] for j in keep_local]
        if kind == "heads":
            new_blocks[i].heads = kept
        else:
            new_blocks[i].neurons = kept
    return PruningPlan(dict(plan.architecture), new_blocks)


def open_positions(n_blocks: int, protect_first: int = 0, protect_last: int = 0) -> list[int]:
    """Positions (0..n_blocks-1) of the blocks neither ``protect_first`` nor ``protect_last`` covers."""
    protected = set(range(min(protect_first, n_blocks))) | \
        set(range(max(0, n_blocks - protect_last), n_blocks))
    return [i for i in range(n_blocks) if i not in protected]


def uniform_counts(sizes: dict[int, int], sparsity: float, min_keep: int) -> dict[int, int]:
    """Units removed per open block by ``scope="uniform"``: ``round(s * n)`` of each block's ``n``
    (Python's round: half to even, so ``round(0.5) == 0``), never below ``min_keep`` kept."""
    return {i: max(0, min(round(sparsity * n), n - min_keep)) for i, n in sizes.items()}


def global_count(sizes: dict[int, int], sparsity: float, min_keep: int) -> int:
    """Units removed in all by ``scope="global"``: ``round(s * total)``, at most what the per-block
    ``min_keep`` floors leave removable."""
    removable = sum(max(0, n - min_keep) for n in sizes.values())
    return min(round(sparsity * sum(sizes.values())), removable)


def removal_count(sizes: dict[int, int], sparsity: float, scope: str = DEFAULT_SCOPE,
                  min_keep: int = 1) -> int:
    """How many units of one kind :func:`select` removes from open blocks of these ``sizes``
    (position -> current units) at unit sparsity ``sparsity`` — known before any score."""
    if scope == "uniform":
        return sum(uniform_counts(sizes, sparsity, min_keep).values())
    return global_count(sizes, sparsity, min_keep)


def _global_counts(scores: list[torch.Tensor], blocks: list[int], sizes: dict[int, int], n_total: int,
                   min_keep: int) -> dict[int, int]:
    """How many units to remove per block when ranking globally, honouring per-block floors."""
    candidates = []
    for i in blocks:
        s = scores[i]
        floor_ids = set(torch.argsort(s, descending=True)[:min_keep].tolist())
        candidates += [(float(s[j]), i) for j in range(len(s)) if j not in floor_ids]
    candidates.sort(key=lambda t: t[0])
    counts = {i: 0 for i in blocks}
    for _, i in candidates[:n_total]:
        counts[i] += 1
    return counts
