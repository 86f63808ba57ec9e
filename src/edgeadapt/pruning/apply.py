"""Apply a :class:`PruningPlan`: physically remove layers, head units and FFN neurons.

Shapes shrink in place, attention attributes and the config follow (through the adapter), and
``adapter.plan`` records what the model now is, so later plans, saving and reloading compose.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.pruning import ops
from edgeadapt.pruning.groups import block_members
from edgeadapt.pruning.plan import PlanError, PruningPlan


def current_plan(adapter: ModelAdapter) -> PruningPlan:
    """The plan the adapter's model currently realises (dense if never pruned)."""
    plan = getattr(adapter, "plan", None)
    return plan if plan is not None else PruningPlan.dense(adapter.fingerprint())


def apply_plan(adapter: ModelAdapter, plan: PruningPlan) -> ModelAdapter:
    """Shrink ``adapter.model`` to ``plan`` (indices relative to the base architecture).

    Raises :class:`PlanError` if the plan belongs to another architecture or keeps something the
    model no longer has. Returns the same adapter for chaining.
    """
    plan.validate(adapter.fingerprint())
    current = current_plan(adapter)
    plan.check_subset_of(current)
    if getattr(adapter, "plan", None) is None and hasattr(adapter, "base_hash"):
        adapter.base_hash()  # remember the base identity while the base weights still exist

    # Layers first: only surviving blocks are narrowed below.
    kept_positions = [pos for pos, b in enumerate(current.blocks) if plan.block(b.index) is not None]
    if len(kept_positions) != len(current.blocks):
        layers = adapter.model.get_submodule(adapter.layers_path())
        new_layers = nn.ModuleList([layers[p] for p in kept_positions])
        parent, _, attr = adapter.layers_path().rpartition(".")
        setattr(adapter.model.get_submodule(parent) if parent else adapter.model, attr, new_layers)
        adapter.set_layers(kept_positions)

    specs = adapter.blocks()
    for pos, cur in enumerate(b for b in current.blocks if plan.block(b.index) is not None):
        new = plan.block(cur.index)
        block = specs[pos]
        for kind, old_ids, new_ids in (("heads", current.kept_heads(cur), plan.kept_heads(new)),
                                       ("neurons", current.kept_neurons(cur), plan.kept_neurons(new))):
            if new_ids == old_ids:
                continue
            where = {u: i for i, u in enumerate(old_ids)}
            local = torch.tensor([where[u] for u in new_ids], dtype=torch.long)
            _shrink(adapter.model, block_members(block, kind), local)
            if kind == "heads":
                adapter.set_attention_units(pos, len(new_ids))
    adapter.plan = PruningPlan(dict(plan.architecture), [
        type(b)(b.index, b.heads, b.neurons) for b in plan.blocks])
    return adapter


def _shrink(model: nn.Module, members: list, local_units: torch.Tensor) -> None:
    """Keep ``local_units`` of every member; sections of fused modules are gathered first so
    each module is rebuilt once with all its kept features in their original order."""
    keep: dict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)
    spans: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for m in members:
        key = (m.slice.module, m.slice.axis)
        keep[key].append(m.index[local_units].reshape(-1))
        spans[key].append((int(m.index.min()), int(m.index.max()) + 1))
    for (path, axis), parts in keep.items():
        module = model.get_submodule(path)
        size = ops.weight_matrix(module).shape[0 if axis == "out" else 1]
        covered = torch.zeros(size, dtype=torch.bool)
        for lo, hi in spans[(path, axis)]:
            covered[lo:hi] = True
        untouched = torch.nonzero(~covered).reshape(-1)  # features no member owns stay
        index = torch.cat([*parts, untouched]).sort().values
        if index.unique().numel() != index.numel():
            raise PlanError(f"overlapping members on {path}")
        ops.keep(module, axis, index)


def meta_copy(adapter: ModelAdapter) -> ModelAdapter:
    """A weightless copy of ``adapter`` on the meta device, for predicting shapes and parameter
    counts of plans without touching memory. Its plan is the adapter's current one."""
    import copy

    plan = current_plan(adapter)
    probe = copy.deepcopy(adapter)
    probe.model.to("meta")
    probe.plan = plan  # set explicitly: the base hash cannot be computed from meta weights
    return probe


def params_under(meta: ModelAdapter, plan: PruningPlan, module: str | None = None) -> int:
    """Parameters (of ``module``, default the whole model) after applying ``plan`` to a copy of the
    meta adapter from :func:`meta_copy`."""
    import copy

    probe = copy.deepcopy(meta)
    apply_plan(probe, plan)
    root = probe.model.get_submodule(module) if module else probe.model
    return sum(p.numel() for p in root.parameters())
