"""The neuron index: which foundation-model (FM) unit every knowledge-base (KB) unit is.

The KB is the FM with each block's head units and FFN neurons reordered by importance, most
important first, so that every prefix width is a valid sub-model. The index records that order
per block (``heads[i]`` / ``neurons[i]`` = the FM unit at KB position ``i``): all sync needs to map
learned KB weights back onto the FM exactly. It is structured (permuted/kept unit indices per
layer), never a dense matrix per layer; the design's optional low-rank correction is not built.
A KB made by :func:`to_kb` keeps reporting its FM's ``fingerprint()`` and ``base_hash()``, and
carries its index in the adapter's ``neuron_index`` field (:func:`index_of`), so it is never
mistaken for its FM.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgeadapt.artifacts import ArtifactError, atomic_write_text, read_manifest, replacing_dir, write_manifest
from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.pruning.reorder import inverse as invert
from edgeadapt.pruning.reorder import permuted_state, reorder_units

KIND, VERSION, FORMAT, FILE = "neuron-index", 1, "edgeadapt.neuron-index", "index.json"
_SIZE = {"heads": "num_kv_heads", "neurons": "ffn_width"}  # kind -> fingerprint key of its unit count


@dataclass(frozen=True)
class BlockIndex:
    """KB -> FM unit ids of one FM block: ``heads[i]`` is the FM head unit at KB position ``i``."""

    index: int
    heads: tuple[int, ...]
    neurons: tuple[int, ...]


@dataclass
class NeuronIndex:
    """The FM <-> KB map of every block, tied to one FM (architecture + weight hash); validated."""

    architecture: dict[str, Any]
    base_hash: str
    blocks: list[BlockIndex]

    def __post_init__(self) -> None:
        a, counts = self.architecture, ("num_layers", *_SIZE.values())
        if not isinstance(a, dict) or not all(isinstance(a.get(k), int) for k in counts):
            raise ConfigError(f"neuron index architecture must be an adapter fingerprint with {counts}")
        if not isinstance(self.base_hash, str) or not self.base_hash:
            raise ConfigError("neuron index needs the FM's base_hash (a non-empty string)")
        if [b.index for b in self.blocks] != list(range(a["num_layers"])):
            raise ConfigError(f"neuron index must cover FM blocks 0..{a['num_layers'] - 1} in order")
        for b in self.blocks:
            for kind, key in _SIZE.items():
                if sorted(getattr(b, kind)) != list(range(a[key])):
                    raise ConfigError(f"neuron index block {b.index}: {kind} must be a permutation of range("
                                     f"{a[key]}) (KB position -> FM unit), got {list(getattr(b, kind))[:12]}")

    def _units(self, block_pos: int, kind: str) -> tuple[int, ...]:
        if kind not in _SIZE or not 0 <= block_pos < len(self.blocks):
            raise ConfigError(f"no {kind!r} units in block {block_pos} (0..{len(self.blocks) - 1})")
        return getattr(self.blocks[block_pos], kind)

    def fm_units(self, block_pos: int, kind: str, kb_positions: Iterable[int]) -> list[int]:
        """KB positions -> FM unit ids (a proxy keeping KB positions ``0..k-1`` holds these FM units)."""
        order, pos = self._units(block_pos, kind), [int(p) for p in kb_positions]
        if any(not 0 <= p < len(order) for p in pos):
            raise ConfigError(f"block {block_pos} has KB {kind} positions 0..{len(order) - 1}, got {pos}")
        return [order[p] for p in pos]

    def kb_units(self, block_pos: int, kind: str, fm_units: Iterable[int]) -> list[int]:
        """FM unit ids -> KB positions."""
        where = {u: i for i, u in enumerate(self._units(block_pos, kind))}
        try:
            return [where[int(u)] for u in fm_units]
        except KeyError as exc:
            raise ConfigError(f"block {block_pos} has no FM {kind} unit {exc.args[0]}") from None

    def orders(self, inverse: bool = False) -> dict[int, dict[str, list[int]]]:
        """FM -> KB (``inverse``: KB -> FM) as :func:`reorder_units` orders (new -> old)."""
        pick = invert if inverse else list
        return {p: {k: pick(getattr(b, k)) for k in _SIZE} for p, b in enumerate(self.blocks)}

    def to_dict(self) -> dict[str, Any]:
        blocks = [{"index": b.index, "heads": list(b.heads), "neurons": list(b.neurons)} for b in self.blocks]
        return {"format": FORMAT, "version": VERSION, "architecture": dict(self.architecture),
                "base_hash": self.base_hash, "blocks": blocks}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NeuronIndex:
        """Parse and validate; ``ValueError`` naming what is wrong."""
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ConfigError(f"not an edgeadapt neuron index (expected format {FORMAT!r})")
        if d.get("version") != VERSION:
            raise ConfigError(f"neuron index version {d.get('version')} is not supported "
                              f"(expected {VERSION})")
        try:
            blocks = [BlockIndex(int(b["index"]), tuple(int(u) for u in b["heads"]),
                                 tuple(int(u) for u in b["neurons"])) for b in d["blocks"]]
            return cls(dict(d["architecture"]), d["base_hash"], blocks)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"malformed neuron index: missing or wrong field ({exc})") from None


def build_index(adapter: ModelAdapter, scores: Mapping[str, list[torch.Tensor]]) -> NeuronIndex:
    """Order every block's units by descending score (stable: ties keep FM order). ``scores`` is what
    :func:`edgeadapt.pruning.importance.score` returns for the full-width FM ("layers" is ignored)."""
    _require_full_width(adapter, "build_index")
    fp, n_blocks = adapter.fingerprint(), len(adapter.blocks())
    orders = {}
    for kind, key in _SIZE.items():
        tables = [torch.as_tensor(t).detach().float().cpu() for t in scores.get(kind) or []]
        bad = [p for p, s in enumerate(tables) if s.shape != (fp[key],) or not torch.isfinite(s).all()]
        if len(tables) != n_blocks or bad:
            raise ConfigError(f"scores[{kind!r}] must hold, for each of the {n_blocks} blocks, one tensor of "
                             f"{fp[key]} finite values (got {len(tables)} tensors; bad blocks {bad})")
        orders[kind] = [tuple(torch.sort(s, descending=True, stable=True).indices.tolist()) for s in tables]
    blocks = [BlockIndex(b, orders["heads"][b], orders["neurons"][b]) for b in range(n_blocks)]
    return NeuronIndex(fp, adapter.base_hash(), blocks)


def check_index_matches(index: NeuronIndex, adapter: ModelAdapter) -> None:
    """``ValueError`` unless ``adapter`` is the index's base model (or a KB made from it)."""
    fp, a = adapter.fingerprint(), index.architecture
    diff = {k: (a.get(k), fp.get(k)) for k in sorted({*fp, *a}) if a.get(k) != fp.get(k)}
    fix = "Use the FM the index was built for (or a KB made from it), or build a new index from this model."
    if diff:
        raise ConfigError(f"index was built for another base model: architecture differs (index, model): "
                         f"{diff}. {fix}")
    h = adapter.base_hash()
    if h != index.base_hash:
        raise ConfigError("index was built for another base model: same architecture but different weights "
                         f"(index base hash {index.base_hash[:12]}, model {h[:12]}). {fix}")


def index_of(adapter: ModelAdapter) -> NeuronIndex | None:
    """The neuron index a KB adapter (or a proxy extracted from it) is ordered by; ``None`` for a
    foundation model, including a custom adapter that has no ``neuron_index`` field."""
    return getattr(adapter, "neuron_index", None)


def to_kb(fm_adapter: ModelAdapter, index: NeuronIndex) -> ModelAdapter:
    """A deep copy of the FM with every block reordered into KB order (same outputs)."""
    _check(fm_adapter, index, "to_kb")  # also caches the FM hash, so the copy reports it
    if index_of(fm_adapter) is not None:
        raise ConfigError("this adapter is already a knowledge base (made by to_kb); pass the FM")
    kb = copy.deepcopy(fm_adapter)
    reorder_units(kb, index.orders())
    kb.neuron_index = index  # the declared KB tag (ModelAdapter.neuron_index)
    return kb


def to_fm(kb_adapter: ModelAdapter, index: NeuronIndex) -> ModelAdapter:
    """A deep copy of a (possibly trained) full-width KB reordered back into FM order."""
    _check(kb_adapter, index, "to_fm")
    fm = copy.deepcopy(kb_adapter)
    reorder_units(fm, index.orders(inverse=True))
    fm.neuron_index = None
    return fm


def kb_state_to_fm(kb_adapter: ModelAdapter, index: NeuronIndex) -> dict[str, torch.Tensor]:
    """The FM-ordered state dict of a (possibly trained) full-width KB, without copying the model;
    ``fm.model.load_state_dict`` of it syncs what the KB learned."""
    _check(kb_adapter, index, "kb_state_to_fm")
    return permuted_state(kb_adapter, index.orders(inverse=True))


def save_index(index: NeuronIndex, directory: str | Path, config: dict | None = None) -> Path:
    """Write ``index.json`` and a manifest (kind ``neuron-index``) to ``directory``, atomically."""
    directory = Path(directory)
    base = {"hash": index.base_hash, "architecture": index.architecture}
    with replacing_dir(directory) as staged:  # a kill mid-write leaves the previous index in place
        atomic_write_text(staged / FILE, json.dumps(index.to_dict(), indent=1))
        write_manifest(staged, KIND, VERSION, [FILE], base=base, config=config or {})
    return directory


def load_index(directory: str | Path) -> NeuronIndex:
    """Read an index written by :func:`save_index`, verifying kind, version and file hashes."""
    directory = Path(directory)
    read_manifest(directory, KIND, VERSION)  # kind, version and the file hash of index.json
    try:
        return NeuronIndex.from_dict(json.loads((directory / FILE).read_text()))
    except ValueError as exc:  # JSONDecodeError is a ValueError too
        raise ArtifactError(f"{directory}/{FILE} is not a valid neuron index: {exc}") from None


def _check(adapter: ModelAdapter, index: NeuronIndex, what: str) -> None:
    check_index_matches(index, adapter)
    _require_full_width(adapter, what)
    mark = index_of(adapter)
    if mark is not None and mark.to_dict() != index.to_dict():
        raise ConfigError(f"{what}: this KB was made with another neuron index")


def _require_full_width(adapter: ModelAdapter, what: str) -> None:
    plan = getattr(adapter, "plan", None)
    if plan is not None and not plan.is_dense():
        raise ConfigError(f"{what} needs the full-width model, this one is pruned ({plan.summary()}); "
                         "map a pruned proxy's positions with NeuronIndex.fm_units instead")
