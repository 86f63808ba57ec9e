"""Permute head units and FFN neurons of blocks without changing what the model computes.

A head unit's q/k/v rows and o columns (an FFN neuron's row in every input projection and its
output column) move together, so each block computes the same function with its units listed in
another order. The knowledge base uses this to put the most important units first, so that every
prefix width is a valid sub-model (see :mod:`edgeadapt.offline.neuron_index`). Pruning's
``apply._shrink`` keeps features in sorted order and so cannot do this.

Orders are *new -> old*: position ``i`` of the result holds old unit ``order[i]``. Unit ids are
the model's current (local) positions, so reordering a pruned model works too. Note that a
``PruningPlan`` records which base units are kept, not their order: after reordering a pruned
model, its weights still save and reload exactly, but the plan no longer says which base unit
sits at which position — track that with the orders (the neuron index does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.models.spec import Axis
from edgeadapt.pruning import ops
from edgeadapt.pruning.groups import block_members, num_units

Order = Sequence[int] | torch.Tensor
Orders = Mapping[int, Mapping[str, Order]]
FeaturePerms = dict[tuple[str, Axis], torch.Tensor]


def as_order(order: Order, n: int, where: str) -> torch.Tensor:
    """``order`` as a long tensor, checked to be a permutation of ``range(n)``; ``where`` names
    the block and kind in the error."""
    try:
        t = torch.as_tensor(order).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        t = None
    ok = (t is not None and t.dim() == 1 and t.numel() == n
          and not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)
          and torch.equal(t.long().sort().values, torch.arange(n)))
    if not ok:
        shown = list(order)[:12] if isinstance(order, Sequence) else order
        raise ConfigError(f"{where}: order must be a permutation of range({n}) (new -> old unit ids), "
                         f"got {shown!r}")
    return t.long()


def inverse(order: Order) -> list[int]:
    """The order that undoes ``order``: ``inverse(o)[o[i]] == i``."""
    return torch.argsort(torch.as_tensor(order, dtype=torch.long)).tolist()


def feature_permutations(adapter: ModelAdapter, orders: Orders) -> FeaturePerms:
    """Validate ``orders`` and turn them into one full feature permutation per (module, axis):
    new feature ``p`` of that module/axis is old feature ``perm[p]``; unowned features stay put."""
    blocks = adapter.blocks()
    perms: FeaturePerms = {}
    for pos, kinds in orders.items():
        if not 0 <= int(pos) < len(blocks):
            raise ConfigError(f"block position {pos} is out of range; the model has {len(blocks)} blocks")
        block = blocks[int(pos)]
        for kind, order in kinds.items():
            if kind not in ("heads", "neurons"):
                raise ConfigError(f"block {pos}: kind must be 'heads' or 'neurons', got {kind!r}")
            new_to_old = as_order(order, num_units(block, kind), f"block {pos} {kind}")
            for m in block_members(block, kind):
                key = (m.slice.module, m.slice.axis)
                if key not in perms:
                    module = adapter.model.get_submodule(key[0])
                    perms[key] = torch.arange(ops.weight_matrix(module).shape[0 if key[1] == "out" else 1])
                # Members of one module (GPT-2's fused q/k/v) own disjoint sections, so each
                # writes only its own positions, each permuted within its own section.
                perms[key][m.index.reshape(-1)] = m.index[new_to_old].reshape(-1)
    return perms


def reorder_units(adapter: ModelAdapter, orders: Orders) -> None:
    """Permute head units / FFN neurons of blocks in place, preserving the model's outputs.

    ``orders[block_position]["heads" | "neurons"]`` is new -> old: position ``i`` of the result
    holds old unit ``orders[..][i]``; it must be a permutation of ``range(num_units)`` (a
    ``ValueError`` naming the block and kind otherwise). Every order is checked before any weight
    moves, so a refused call leaves the model untouched.

    >>> reorder_units(adapter, {0: {"heads": [2, 0, 1, 3]}})  # doctest: +SKIP
    """
    for (path, axis), perm in feature_permutations(adapter, orders).items():
        if not torch.equal(perm, torch.arange(perm.numel())):
            ops.keep(adapter.model.get_submodule(path), axis, perm)


def permuted_state(adapter: ModelAdapter, orders: Orders) -> dict[str, torch.Tensor]:
    """The state dict ``adapter.model`` would have after ``reorder_units(adapter, orders)``,
    computed without touching the model (a detached copy)."""
    state = dict(adapter.model.state_dict())
    moved: set[str] = set()
    for (path, axis), perm in feature_permutations(adapter, orders).items():
        module = adapter.model.get_submodule(path)
        names = [f"{path}.weight"] + ([f"{path}.bias"] if axis == "out" and f"{path}.bias" in state else [])
        for name, dim in zip(names, (_dim(module, axis), 0)):
            state[name] = state[name].index_select(dim, perm.to(state[name].device))  # a new tensor
            moved.add(name)
    return {k: v if k in moved else v.detach().clone() for k, v in state.items()}


def _dim(module: nn.Module, axis: Axis) -> int:
    """The weight dimension that holds ``axis`` (``Conv1D`` stores ``[in, out]``)."""
    transposed = ops.is_transposed(module)
    return (1 if transposed else 0) if axis == "out" else (0 if transposed else 1)
