"""A :class:`PruningPlan`: which heads, FFN neurons and layers of a base model are kept.

Indices always refer to the *base* (unpruned) architecture, so a plan is meaningful on its own,
serialises to JSON, and pruning an already-pruned model simply produces a smaller plan. For
grouped-query attention a head index names a key/value group (see ``AttentionSpec``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeadapt.errors import PlanError

FORMAT = "edgeadapt.pruning-plan"
VERSION = 1


def is_index(value: Any) -> bool:
    """An index is a Python ``int`` — not a ``bool`` (JSON ``true``), not a float (``0.0``, ``0.5``)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class BlockPlan:
    """Kept units of one base block. ``None`` means "all of them"."""

    index: int
    heads: list[int] | None = None
    neurons: list[int] | None = None


@dataclass
class PruningPlan:
    """Kept blocks (base indices, in order) with their kept heads/neurons, for one architecture.

    >>> plan = PruningPlan.dense(adapter.fingerprint())       # doctest: +SKIP
    >>> plan.blocks[0].neurons = [0, 3, 7]                     # doctest: +SKIP
    """

    architecture: dict[str, Any]
    blocks: list[BlockPlan] = field(default_factory=list)

    @classmethod
    def dense(cls, architecture: dict[str, Any]) -> PruningPlan:
        """The identity plan: everything kept."""
        return cls(dict(architecture), [BlockPlan(i) for i in range(architecture["num_layers"])])

    # -- queries ------------------------------------------------------------------------------
    def kept_heads(self, block: BlockPlan) -> list[int]:
        return list(range(self.architecture["num_kv_heads"])) if block.heads is None else list(block.heads)

    def kept_neurons(self, block: BlockPlan) -> list[int]:
        return list(range(self.architecture["ffn_width"])) if block.neurons is None else list(block.neurons)

    def block(self, index: int) -> BlockPlan | None:
        return next((b for b in self.blocks if b.index == index), None)

    @property
    def removed_layers(self) -> list[int]:
        kept = {b.index for b in self.blocks}
        return [i for i in range(self.architecture["num_layers"]) if i not in kept]

    def is_dense(self) -> bool:
        a = self.architecture
        return len(self.blocks) == a["num_layers"] and all(
            len(self.kept_heads(b)) == a["num_kv_heads"] and len(self.kept_neurons(b)) == a["ffn_width"]
            for b in self.blocks)

    def summary(self) -> str:
        a = self.architecture
        heads = sum(len(self.kept_heads(b)) for b in self.blocks)
        neurons = sum(len(self.kept_neurons(b)) for b in self.blocks)
        return (f"layers {len(self.blocks)}/{a['num_layers']}, head units {heads}/"
                f"{a['num_layers'] * a['num_kv_heads']}, FFN neurons {neurons}/"
                f"{a['num_layers'] * a['ffn_width']}")

    # -- checks -------------------------------------------------------------------------------
    def validate(self, architecture: dict[str, Any] | None = None) -> PruningPlan:
        """Check indices are in range, sorted, unique and non-empty, and (if given) that the plan
        was made for ``architecture``. Returns ``self``; raises :class:`PlanError`."""
        a = self.architecture
        if architecture is not None and _identity(architecture) != _identity(a):
            diff = {k: (a.get(k), architecture.get(k)) for k in _identity(architecture)
                    if a.get(k) != architecture.get(k)}
            raise PlanError(f"plan was made for another architecture; mismatched fields "
                            f"(plan, model): {diff}")
        seen = [b.index for b in self.blocks]
        bad = [i for i in seen if not is_index(i)]
        if bad:
            raise PlanError(f"block index {bad[0]!r} is not an integer; block indices are integers "
                            f"in [0, {a['num_layers']})")
        if seen != sorted(set(seen)) or any(not 0 <= i < a["num_layers"] for i in seen):
            raise PlanError(f"block indices must be unique, ascending and in [0, {a['num_layers']}); "
                            f"got {seen}")
        if not self.blocks:
            raise PlanError("a plan must keep at least one layer")
        for b in self.blocks:
            for kind, values, n in (("heads", b.heads, a["num_kv_heads"]),
                                    ("neurons", b.neurons, a["ffn_width"])):
                if values is None:
                    continue
                if not isinstance(values, list):
                    raise PlanError(f"block {b.index} {kind}: expected a list of integer indices in "
                                    f"[0, {n}) or null (all kept), got {values!r}")
                wrong = [v for v in values if not is_index(v)]
                if wrong:
                    raise PlanError(f"block {b.index} {kind}: {wrong[0]!r} is not an integer index; kept "
                                    f"{kind} are integers in [0, {n}) (not floats, not true/false)")
                if not values:
                    raise PlanError(f"block {b.index} keeps no {kind}; keep at least one or remove the layer")
                if values != sorted(set(values)) or values[0] < 0 or values[-1] >= n:
                    raise PlanError(f"block {b.index} {kind} must be unique ascending indices in [0, {n})")
        return self

    def check_subset_of(self, current: PruningPlan) -> None:
        """Pruning can only remove: every kept unit must still exist in ``current``."""
        for b in self.blocks:
            cur = current.block(b.index)
            if cur is None:
                raise PlanError(f"block {b.index} was already removed; the plan cannot keep it")
            for kind, mine, theirs in (("heads", self.kept_heads(b), current.kept_heads(cur)),
                                       ("neurons", self.kept_neurons(b), current.kept_neurons(cur))):
                missing = sorted(set(mine) - set(theirs))
                if missing:
                    raise PlanError(f"block {b.index} keeps {kind} {missing[:5]} that were already pruned")

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "architecture": self.architecture,
                "blocks": [{"index": b.index, "heads": b.heads, "neurons": b.neurons} for b in self.blocks]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PlanError(f"not an edgeadapt pruning plan (expected format {FORMAT!r})")
        if data.get("version") != VERSION:
            raise PlanError(f"pruning plan version {data.get('version')} is not supported "
                            f"(expected {VERSION})")
        try:
            blocks = [BlockPlan(b["index"], b.get("heads"), b.get("neurons")) for b in data["blocks"]]
            return cls(dict(data["architecture"]), blocks).validate()
        except (KeyError, TypeError, AttributeError) as exc:
            raise PlanError(f"malformed pruning plan: missing or wrong field ({exc})") from None

    def save(self, path: str | Path) -> None:
        from edgeadapt.artifacts import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"plan file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan file {path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def _identity(architecture: dict[str, Any]) -> dict[str, Any]:
    keys = ("model_type", "num_layers", "hidden_size", "num_heads", "num_kv_heads", "ffn_width")
    return {k: architecture.get(k) for k in keys}
