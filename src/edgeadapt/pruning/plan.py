"""A :class:`PruningPlan`: which heads, FFN neurons and layers of a base model are kept.

Indices always refer to the *base* (unpruned) architecture, so a plan is meaningful on its own,
serialises to JSON, and pruning an already-pruned model simply produces a smaller plan. For
grouped-query attention a head index names a key/value group (see ``AttentionSpec``).

The JSON file (``edgeadapt prune MODEL --plan plan.json``) has four required fields: ``format``,
``version``, ``architecture`` (the model's identity — ``model_type``, ``num_layers``, ``hidden_size``,
``num_heads``, ``num_kv_heads``, ``ffn_width`` — checked against the model before anything is cut)
and ``blocks``: the kept layers by base index, each keeping the listed ``heads`` (key/value groups)
and ``neurons`` (FFN), ``null`` or absent meaning all of them; a layer not listed is removed. A
starting point is :data:`EXAMPLE` (tiny-llama, layer 0 keeps FFN neurons 0-2, layer 1 is whole),
``PruningPlan.dense(load_adapter(MODEL).fingerprint()).save("plan.json")``, or the ``plan.json``
of any ``edgeadapt prune --out`` artifact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeadapt.errors import PlanError

FORMAT = "edgeadapt.pruning-plan"
VERSION = 1
REQUIRED = ("format", "version", "architecture", "blocks")
IDENTITY = ("model_type", "num_layers", "hidden_size", "num_heads", "num_kv_heads", "ffn_width")
EXAMPLE = ('{"format": "edgeadapt.pruning-plan", "version": 1, "architecture": {"model_type": "llama", '
           '"num_layers": 2, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2, "ffn_width": 128}, '
           '"blocks": [{"index": 0, "heads": null, "neurons": [0, 1, 2]}, {"index": 1}]}')
_HOW = (f"a minimal valid plan (tiny-llama): {EXAMPLE}; `architecture` is the model's fingerprint "
        "(PruningPlan.dense(load_adapter(MODEL).fingerprint()).save('plan.json') writes a full plan to edit)")


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
        outside = [i for i in seen if not 0 <= i < a["num_layers"]]
        if outside:
            raise PlanError(f"block index {outside[0]} is out of range: the model has {a['num_layers']} "
                            f"layers, so block indices are in [0, {a['num_layers']}); got {seen}")
        if seen != sorted(set(seen)):
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
                outside = [v for v in values if not 0 <= v < n]
                if outside or values != sorted(set(values)):
                    what = f"index {outside[0]} is out of range" if outside else "indices repeat or descend"
                    raise PlanError(f"block {b.index} {kind}: {what}; {kind} must be unique ascending "
                                    f"indices in [0, {n}) (the base model has {n} per block), got {values}")
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
        """The plan a JSON object describes (see the module docstring); a missing field, another
        format or version, or a bad index is a :class:`PlanError` naming it, with an example."""
        if not isinstance(data, dict):
            raise PlanError(f"a pruning plan is a JSON object, got {type(data).__name__}; {_HOW}")
        if data.get("format", FORMAT) != FORMAT:
            raise PlanError(f"not an edgeadapt pruning plan (format {data['format']!r}, expected {FORMAT!r})")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise PlanError(f"pruning plan is missing field(s) {missing}; {_HOW}")
        if data["version"] != VERSION:
            raise PlanError(f"pruning plan version {data['version']} is not supported (expected {VERSION})")
        arch = data["architecture"]
        missing = [k for k in IDENTITY if not isinstance(arch, dict) or k not in arch]
        if missing:
            raise PlanError(f"pruning plan architecture is missing field(s) {missing}; {_HOW}")
        try:
            blocks = [BlockPlan(b["index"], b.get("heads"), b.get("neurons")) for b in data["blocks"]]
            return cls(dict(arch), blocks).validate()
        except (KeyError, TypeError, AttributeError) as exc:
            raise PlanError(f"malformed pruning plan: every entry of 'blocks' is an object with an integer "
                            f"'index' and optional 'heads'/'neurons' lists ({type(exc).__name__}: {exc}); "
                            f"{_HOW}") from None

    def save(self, path: str | Path) -> None:
        write_plan_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        return cls.from_dict(read_plan_json(path))


def write_plan_json(path: str | Path, data: dict) -> None:
    """Write a plan's JSON mapping to ``path`` atomically (any plan kind: heads/neurons or channels)."""
    from edgeadapt.artifacts import atomic_write_text

    atomic_write_text(Path(path), json.dumps(data, indent=1))


def read_plan_json(path: str | Path) -> dict:
    """A plan file's JSON mapping; :class:`~edgeadapt.errors.PlanError` when the file is missing or
    not valid JSON (the plan's own ``from_dict`` checks the fields)."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"plan file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PlanError(f"plan file {path} is not valid JSON: {exc}") from None


def _identity(architecture: dict[str, Any]) -> dict[str, Any]:
    return {k: architecture.get(k) for k in IDENTITY}
