"""Knowledge-base artifacts: one directory, verified on load.

Layout::

    kb/
      manifest.json        kind "knowledge-base", version, FM identity (name, weight hash,
                           architecture), the producing config, SHA-256 of every file below
      model/               the KB weights as a model artifact (reloads with load_pruned)
      gates.safetensors    the per-block gate MLPs
      index.json           the neuron index (KB unit -> FM unit, per block)
      kb.json              the KB settings

Loading checks kind, version and hashes, that the index and the model agree, and (when asked)
that the KB was built from the expected foundation model.

**Which models can be saved.** An artifact is rebuilt from the model's Hugging Face config plus
its plan (never a pickled module), so only :class:`~edgeadapt.models.adapter.HFAdapter` models
are saved. A custom :class:`~edgeadapt.models.adapter.ModelAdapter` goes through every stage in
memory (LoRA, KB, index, proxy, retraining, sync), and :func:`check_saveable` refuses to save it
(:class:`~edgeadapt.errors.ConfigError`, before anything is written); the neuron index, which
holds no weights, saves for any model (:func:`edgeadapt.offline.neuron_index.save_index`).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_model, save_model

from edgeadapt.artifacts import (
    ArtifactError,
    atomic_write_text,
    atomic_write_with,
    read_manifest,
    replacing_dir,
    write_manifest,
)
from edgeadapt.offline.gates import GateSet
from edgeadapt.offline.knowledge_base import KBSettings, KnowledgeBase
from edgeadapt.offline.neuron_index import NeuronIndex
from edgeadapt.pruning.checkpoint import check_saveable, load_pruned, save_pruned

KIND, VERSION = "knowledge-base", 1


def save_kb(kb: KnowledgeBase, directory: str | Path, config: dict | None = None) -> Path:
    """Write ``kb`` to ``directory``. The new KB is written beside it, verified and swapped in
    (:func:`~edgeadapt.artifacts.replacing_dir`), so a kill at any moment leaves the previous valid KB
    (or, once swapped, the new one) and never a mix; the directory's other entries (``run.json``,
    checkpoints, logs) are kept. A KB of a custom adapter is refused (:func:`check_saveable`)."""
    check_saveable(kb.adapter, "save_kb")
    directory = Path(directory)
    with replacing_dir(directory) as staged:
        kb.gates.detach()  # hooks are runtime state, not weights
        try:
            save_pruned(kb.adapter, staged / "model", config={"stage": "knowledge-base-model"})
        finally:
            kb.gates.attach(kb.adapter)
        atomic_write_with(staged / "gates.safetensors", lambda tmp: save_model(kb.gates, str(tmp)))
        atomic_write_text(staged / "index.json", json.dumps(kb.index.to_dict(), indent=1))
        atomic_write_text(staged / "kb.json", kb.settings.model_dump_json(indent=1))
        write_manifest(staged, KIND, VERSION, ["model/manifest.json", "gates.safetensors", "index.json",
                                               "kb.json"],
                       base={"name": kb.adapter.name, "hash": kb.index.base_hash,
                             "architecture": kb.index.architecture},
                       config=config or {})
    return directory


def load_kb(directory: str | Path, expect_base_hash: str | None = None) -> KnowledgeBase:
    """Reload a KB written by :func:`save_kb`; ``expect_base_hash`` refuses a KB of another FM."""
    directory = Path(directory)
    manifest = read_manifest(directory, KIND, VERSION)
    base_hash = manifest["base"]["hash"]
    if expect_base_hash is not None and base_hash != expect_base_hash:
        raise ArtifactError(f"{directory}: this knowledge base was built for another base model "
                            f"(KB base {base_hash[:12]}, expected {expect_base_hash[:12]}); rebuild it from "
                            "this model with `edgeadapt offline kb`")
    adapter = load_pruned(directory / "model")
    try:
        index = NeuronIndex.from_dict(json.loads((directory / "index.json").read_text()))
        settings = KBSettings.model_validate_json((directory / "kb.json").read_text())
    except ValueError as exc:
        raise ArtifactError(f"{directory}: invalid index.json or kb.json: {exc}") from None
    if index.base_hash != base_hash or adapter.fingerprint() != index.architecture:
        raise ArtifactError(f"{directory}: the index and the model do not belong to the same base model")
    adapter.neuron_index = index  # a KB, never to be mistaken for its FM
    gates = GateSet(adapter, settings.bottleneck, settings.pooling)
    missing, unexpected = load_model(gates, str(directory / "gates.safetensors"), strict=False)
    if missing or unexpected:
        raise ArtifactError(f"{directory}: gates.safetensors does not fit the model "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    gates.eval()
    return KnowledgeBase(adapter, gates, index, settings)
