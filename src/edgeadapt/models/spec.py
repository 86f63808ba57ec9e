"""Plain descriptions of transformer structure, produced by adapters and consumed everywhere else.

A :class:`Slice` names one contiguous section of a weight along its output or input axis, which
is enough to describe ordinary ``nn.Linear`` projections as well as fused ones (GPT-2's
``c_attn`` holds q, k and v side by side) and transposed ones (GPT-2's ``Conv1D``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Axis = Literal["out", "in"]


@dataclass(frozen=True)
class Slice:
    """A section ``[offset, offset + size)`` of module ``module``'s output or input features.

    ``module`` is a dotted path from the model root. ``size=None`` means "to the end".
    """

    module: str
    axis: Axis
    offset: int = 0
    size: int | None = None


@dataclass(frozen=True)
class AttentionSpec:
    """One attention layer: its projections and head layout.

    Heads are pruned in *units*: a unit is one key/value head together with the
    ``num_heads // num_kv_heads`` query heads that share it (for ordinary multi-head attention a
    unit is simply one head). Pruning whole units keeps grouped-query attention consistent.
    """

    module: str
    q: Slice
    k: Slice
    v: Slice
    o: Slice
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def num_units(self) -> int:
        """Prunable attention units (= key/value heads)."""
        return self.num_kv_heads

    @property
    def queries_per_unit(self) -> int:
        """Query heads per key/value head (1 without GQA)."""
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class MLPSpec:
    """One feed-forward layer: every input projection (``fc1`` or ``gate`` + ``up``) and the output one."""

    inputs: tuple[Slice, ...]
    output: Slice
    width: int


@dataclass(frozen=True)
class BlockSpec:
    """One transformer block: where it lives, its attention, its MLP and its norms."""

    index: int
    module: str
    attention: AttentionSpec
    mlp: MLPSpec
    norms: tuple[str, ...]
