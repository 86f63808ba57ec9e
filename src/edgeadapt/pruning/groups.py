"""Groups of coupled parameters that must be pruned together.

A *head unit* is one key/value head with its query heads: its rows in q, k and v and its columns
in o. An *FFN neuron* is its row in every MLP input projection (``fc1``, or ``gate`` and ``up``)
and its column in the output projection. A *layer* is a whole block. Pruning anything less than a
whole group leaves shapes or computations inconsistent, so importance is always scored per group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgeadapt.errors import ConfigError
from edgeadapt.models.spec import AttentionSpec, BlockSpec, MLPSpec, Slice

KINDS = ("heads", "neurons", "layers")


@dataclass(frozen=True)
class Member:
    """One slice of one weight that belongs to a group kind, with a ``[units, k]`` index table:
    row ``u`` lists the feature indices (absolute, within the module) that unit ``u`` owns."""

    slice: Slice
    index: torch.Tensor


def head_members(attn: AttentionSpec) -> list[Member]:
    """Members of every head unit of one attention layer (GQA-aware)."""
    units, r, d = attn.num_units, attn.queries_per_unit, attn.head_dim
    q_rows = torch.arange(units * r * d).view(units, r * d)
    kv_rows = torch.arange(units * d).view(units, d)
    return [
        Member(attn.q, q_rows + attn.q.offset),
        Member(attn.k, kv_rows + attn.k.offset),
        Member(attn.v, kv_rows + attn.v.offset),
        Member(attn.o, q_rows + attn.o.offset),
    ]


def neuron_members(mlp: MLPSpec) -> list[Member]:
    """Members of every FFN neuron of one MLP: each input projection's row, the output's column."""
    idx = torch.arange(mlp.width).view(mlp.width, 1)
    return [Member(s, idx + s.offset) for s in (*mlp.inputs, mlp.output)]


def block_members(block: BlockSpec, kind: str) -> list[Member]:
    """The members of ``kind`` ("heads" or "neurons") in ``block``."""
    if kind == "heads":
        return head_members(block.attention)
    if kind == "neurons":
        return neuron_members(block.mlp)
    raise ConfigError(f"kind must be 'heads' or 'neurons' here, got {kind!r}")


def num_units(block: BlockSpec, kind: str) -> int:
    """How many prunable units of ``kind`` the block has."""
    return block.attention.num_units if kind == "heads" else block.mlp.width
