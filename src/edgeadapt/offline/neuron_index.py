"""The neuron index: which foundation-model (FM) unit every knowledge-base (KB) unit is.

The KB is the FM with each block's head units and FFN neurons reordered by importance, most
important first, so that keeping a prefix of every block is a valid sub-model. The index records
that reordering per block (``heads[i]`` / ``neurons[i]`` = the FM unit at KB position ``i``),
which is all sync needs to map learned KB weights back onto the FM exactly. It is structured —
permuted/kept unit indices per layer — never a dense matrix per layer (the design's optional
low-rank correction is not implemented).

A KB made by :func:`to_kb` keeps reporting its FM's ``fingerprint()`` and ``base_hash()``: they
identify the base model, and the index is matched against them in both directions.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgeadapt.artifacts import ArtifactError, atomic_write_text, read_manifest, write_manifest
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.pruning.reorder import inverse, permuted_state, reorder_units

KIND, VERSION, FORMAT, FILE = "neuron-index", 1, "edgeadapt.neuron-index", "index.json"
MARK = "neuron_index"  # attribute a KB adapter carries, so it is not mistaken for its FM
_SIZE = {"heads": "num_kv_heads", "neurons": "ffn_width"}


@dataclass(frozen=True)
class BlockIndex:
    """KB -> FM unit ids of one FM block: ``heads[i]`` is the FM head unit at KB position ``i``."""

    index: int
    heads: tuple[int, ...]
    neurons: tuple[int, ...]


@dataclass
class NeuronIndex:
    """The FM <-> KB correspondence of every block, tied to one FM (architecture + weight hash).
    Validated at construction: each block's units are a permutation of the FM's."""

    architecture: dict[str, Any]
    base_hash: str
    blocks: list[BlockIndex]

    def __post_init__(self) -> None:
        a = self.architecture
        if not isinstance(a, dict) or any(not isinstance(a.get(k), int) for k in ("num_layers", *_SIZE.values())):
            raise ValueError("neuron index architecture must be an adapter fingerprint (num_layers, "
                             "num_kv_heads, ffn_width)")
        if not isinstance(self.base_hash, str) or not self.base_hash:
            raise ValueError("neuron index needs the FM's base_hash (a non-empty string)")
        if [b.index for b in self.blocks] != list(range(a["num_layers"])):
            raise ValueError(f"neuron index must cover FM blocks 0..{a['num_layers'] - 1} in order, "
                             f"got {[b.index for b in self.blocks]}")
        for b in self.blocks:
            for kind, key in _SIZE.items():
                units = getattr(b, kind)
                if sorted(units) != list(range(a[key])):
                    raise ValueError(f"neuron index block {b.index}: {kind} must be a permutation of "
                                     f"range({a[key]}) (KB position -> FM unit), got {list(units)[:12]}")

    def _units(self, block_pos: int, kind: str) -> tuple[int, ...]:
        if kind not in _SIZE:
            raise ValueError(f"kind must be 'heads' or 'neurons', got {kind!r}")
        if not 0 <= block_pos < len(self.blocks):
            raise ValueError(f"block {block_pos} is out of range; the index has {len(self.blocks)} blocks")
        return getattr(self.blocks[block_pos], kind)

    def fm_units(self, block_pos: int, kind: str, kb_positions: Iterable[int]) -> list[int]:
        """KB positions -> FM unit ids (a proxy that kept KB positions ``0..k-1`` holds these FM units)."""
        order = self._units(block_pos, kind)
        out = []
        for p in kb_positions:
            if not 0 <= int(p) < len(order):
                raise ValueError(f"block {block_pos} has no KB {kind} position {p} (0..{len(order) - 1})")
            out.append(order[int(p)])
        return out

    def kb_units(self, block_pos: int, kind: str, fm_units: Iterable[int]) -> list[int]:
        """FM unit ids -> KB positions."""
        where = {u: i for i, u in enumerate(self._units(block_pos, kind))}
        try:
            return [where[int(u)] for u in fm_units]
        except KeyError as exc:
            raise ValueError(f"block {block_pos} has no FM {kind} unit {exc.args[0]}") from None

    def orders(self) -> dict[int, dict[str, tuple[int, ...]]]:
        """FM -> KB as :func:`reorder_units` orders (new -> old)."""
        return {p: {"heads": b.heads, "neurons": b.neurons} for p, b in enumerate(self.blocks)}

    def inverse_orders(self) -> dict[int, dict[str, list[int]]]:
        """KB -> FM as :func:`reorder_units` orders."""
        return {p: {"heads": inverse(b.heads), "neurons": inverse(b.neurons)} for p, b in enumerate(self.blocks)}

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "architecture": dict(self.architecture),
                "base_hash": self.base_hash,
                "blocks": [{"index": b.index, "heads": list(b.heads), "neurons": list(b.neurons)}
                           for b in self.blocks]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NeuronIndex:
        """Parse and validate; ``ValueError`` naming what is wrong."""
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ValueError(f"not an edgeadapt neuron index (expected format {FORMAT!r})")
        if d.get("version") != VERSION:
            raise ValueError(f"neuron index version {d.get('version')} is not supported (expected {VERSION})")
        try:
            blocks = [BlockIndex(int(b["index"]), tuple(int(u) for u in b["heads"]),
                                 tuple(int(u) for u in b["neurons"])) for b in d["blocks"]]
            return cls(dict(d["architecture"]), d["base_hash"], blocks)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed neuron index: missing or wrong field ({exc})") from None


def build_index(adapter: ModelAdapter, scores: Mapping[str, list[torch.Tensor]]) -> NeuronIndex:
    """Order every block's units by descending score (stable: ties keep FM order).

    ``scores`` is what :func:`edgeadapt.pruning.importance.score` returns for the full-width FM
    (keys ``"heads"`` and ``"neurons"``, one tensor per block; other keys are ignored).
    """
    _require_full_width(adapter, "build_index")
    blocks = adapter.blocks()
    per_kind: dict[str, list[tuple[int, ...]]] = {}
    for kind, key in _SIZE.items():
        tables = scores.get(kind)
        if tables is None or len(tables) != len(blocks):
            raise ValueError(f"scores[{kind!r}] must hold one tensor per block ({len(blocks)})")
        per_kind[kind] = []
        for pos, s in enumerate(tables):
            s = torch.as_tensor(s).detach().float().cpu()
            n = adapter.fingerprint()[key]
            if s.shape != (n,) or not torch.isfinite(s).all():
                raise ValueError(f"block {pos} {kind} scores must be {n} finite values, got shape {tuple(s.shape)}")
            per_kind[kind].append(tuple(torch.sort(s, descending=True, stable=True).indices.tolist()))
    return NeuronIndex(adapter.fingerprint(), adapter.base_hash(), [
        BlockIndex(b, per_kind["heads"][b], per_kind["neurons"][b]) for b in range(len(blocks))])


def check_index_matches(index: NeuronIndex, adapter: ModelAdapter) -> None:
    """``ValueError`` unless ``adapter`` is the index's base model (or a KB made from it)."""
    fp = adapter.fingerprint()
    diff = {k: (index.architecture.get(k), fp.get(k)) for k in sorted({*fp, *index.architecture})
            if index.architecture.get(k) != fp.get(k)}
    if diff:
        raise ValueError(f"index was built for another base model: architecture differs (index, model): "
                         f"{diff}. Use the FM the index was built for, or build a new index from this model.")
    try:
        h = adapter.base_hash()
    except RuntimeError as exc:
        raise ValueError(f"cannot identify the model's base weights: {exc}") from None
    if h != index.base_hash:
        raise ValueError(f"index was built for another base model: same architecture but different weights "
                         f"(index base hash {index.base_hash[:12]}, model {h[:12]}). Use the FM the index "
                         f"was built for (or a KB made from it by to_kb), or build a new index from this model.")


def to_kb(fm_adapter: ModelAdapter, index: NeuronIndex) -> ModelAdapter:
    """A deep copy of the FM with every block reordered into KB order (same outputs)."""
    check_index_matches(index, fm_adapter)  # also caches the FM hash, so the copy reports it
    _require_full_width(fm_adapter, "to_kb")
    if getattr(fm_adapter, MARK, None) is not None:
        raise ValueError("this adapter is already a knowledge base (made by to_kb); pass the FM")
    kb = copy.deepcopy(fm_adapter)
    reorder_units(kb, index.orders())
    setattr(kb, MARK, index)
    return kb


def to_fm(kb_adapter: ModelAdapter, index: NeuronIndex) -> ModelAdapter:
    """A deep copy of a (possibly trained) full-width KB reordered back into FM order."""
    _check_kb(kb_adapter, index, "to_fm")
    fm = copy.deepcopy(kb_adapter)
    reorder_units(fm, index.inverse_orders())
    if hasattr(fm, MARK):
        delattr(fm, MARK)
    return fm


def kb_state_to_fm(kb_adapter: ModelAdapter, index: NeuronIndex) -> dict[str, torch.Tensor]:
    """The FM-ordered state dict of a (possibly trained) full-width KB, without copying the
    model: load it into the FM (``load_state_dict``) to sync what the KB learned."""
    _check_kb(kb_adapter, index, "kb_state_to_fm")
    return permuted_state(kb_adapter, index.inverse_orders())


def save_index(index: NeuronIndex, directory: str | Path, config: dict | None = None) -> Path:
    """Write ``index.json`` and a manifest (kind ``neuron-index``) to ``directory``, atomically."""
    directory = Path(directory)
    atomic_write_text(directory / FILE, json.dumps(index.to_dict(), indent=1))
    write_manifest(directory, KIND, VERSION, [FILE], base={"hash": index.base_hash, "architecture":
                   index.architecture}, config=config or {})
    return directory


def load_index(directory: str | Path) -> NeuronIndex:
    """Read an index written by :func:`save_index`, verifying kind, version and file hashes."""
    directory = Path(directory)
    manifest = read_manifest(directory, KIND, VERSION)
    try:
        index = NeuronIndex.from_dict(json.loads((directory / FILE).read_text()))
    except ValueError as exc:  # JSONDecodeError is a ValueError too
        raise ArtifactError(f"{directory}/{FILE} is not a valid neuron index: {exc}") from None
    if manifest.get("base", {}).get("hash") != index.base_hash:
        raise ArtifactError(f"{directory}: manifest and {FILE} name different base models")
    return index


def _check_kb(kb: ModelAdapter, index: NeuronIndex, what: str) -> None:
    check_index_matches(index, kb)
    _require_full_width(kb, what)
    mark = getattr(kb, MARK, None)
    if mark is not None and mark.to_dict() != index.to_dict():
        raise ValueError(f"{what}: this KB was made with another neuron index")


def _require_full_width(adapter: ModelAdapter, what: str) -> None:
    plan = getattr(adapter, "plan", None)
    if plan is not None and not plan.is_dense():
        raise ValueError(f"{what} needs the full-width model, this one is pruned ({plan.summary()}); "
                         "map a pruned proxy's positions with NeuronIndex.fm_units instead")
