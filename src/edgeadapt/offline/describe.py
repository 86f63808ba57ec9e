"""What an ``edgeadapt offline`` output is, for ``edgeadapt inspect`` when it is given one instead of a model.

A knowledge base is not a model a command can prune or export, so ``inspect`` used to refuse it
with "holds a 'knowledge-base' artifact, expected 'pruned-model'" (or, for the ``out`` directory
of ``edgeadapt offline``, "is not a model: no manifest.json"). :func:`describe_offline` reads only
the manifests and small JSON files (no weights, no hashes) and says what the directory holds,
which foundation model it was built from, how large each part is, and which command reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeadapt.artifacts import MANIFEST

STEPS = ("lora", "kb", "index")  # the step directories `edgeadapt offline all` writes under `out`
KINDS = {"knowledge-base": "knowledge base (`edgeadapt offline kb`)",
         "neuron-index": "neuron index (`edgeadapt offline index`)",
         "lora": "the LoRA-tuned foundation model (`edgeadapt offline lora`)",
         "pruned-model": "model artifact"}


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file() and "checkpoints" not in f.parts)


def _part(directory: Path) -> dict[str, Any]:
    """Kind, foundation model and size of one artifact directory (its manifest, unverified)."""
    manifest = _json(directory / MANIFEST)
    base = manifest.get("base") if isinstance(manifest.get("base"), dict) else {}
    part: dict[str, Any] = {"path": str(directory), "kind": manifest.get("kind"),
                            "model": base.get("name"), "architecture": base.get("architecture"),
                            "base_hash": base.get("hash"), "bytes": _bytes(directory)}
    if part["kind"] == "pruned-model" and (manifest.get("config") or {}).get("stage") == "lora":
        part["kind"] = "lora"
    if part["kind"] == "knowledge-base":
        kb = (manifest.get("config") or {}).get("offline", {}).get("kb", {})
        part["widths"] = kb.get("widths")
        plan = _json(directory / "model" / "plan.json")
        part["kb_blocks"] = len(plan.get("blocks") or [])
    if part["kind"] == "neuron-index":
        part["index_blocks"] = len(_json(directory / "index.json").get("blocks") or [])
    return part


def describe_offline(path: str | Path) -> dict[str, Any] | None:
    """A description of ``path`` when it is an offline-stage output: the ``out`` directory of
    ``edgeadapt offline`` (``lora/``, ``kb/``, ``index/``), or one knowledge-base or neuron-index
    artifact; ``None`` for anything else (a model artifact, a Hugging Face directory, a name).

    Keys: ``what`` (``"offline-output"``, ``"knowledge-base"`` or ``"neuron-index"``), ``path``,
    ``model`` (the foundation model's name), ``architecture``, ``parts`` (per artifact: kind,
    bytes on disk without checkpoints, KB widths or index blocks) and ``read_by`` (the command)."""
    root = Path(path)
    if not root.is_dir():
        return None
    manifest = _json(root / MANIFEST)
    if manifest.get("kind") in ("knowledge-base", "neuron-index"):
        parts, what, out = [_part(root)], manifest["kind"], root.parent
    elif not manifest and any((root / s / MANIFEST).is_file() for s in STEPS):
        parts = [_part(root / s) for s in STEPS if (root / s / MANIFEST).is_file()]
        what, out = "offline-output", root
    else:
        return None
    first = next((p for p in parts if p["model"] or p["architecture"]), parts[0])
    # an index names no model: the LoRA artifact beside it does
    model = first["model"] or _json(out / "lora" / MANIFEST).get("base", {}).get("name")
    return {"what": what, "path": str(root), "model": model, "architecture": first["architecture"],
            "parts": parts, "read_by": f"edgeadapt adapt --offline {out}",
            "models_inside": [p for p in (f"{out / 'lora'}", f"{out / 'kb' / 'model'}")
                              if (Path(p) / MANIFEST).is_file()]}


def _size(n: int) -> str:
    for suffix, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {suffix}"
    return f"{n} B"


def format_offline(info: dict[str, Any]) -> str:
    """The lines ``edgeadapt inspect`` prints for :func:`describe_offline`'s description."""
    a = info.get("architecture") or {}
    shape = (f" ({a.get('model_type')}, {a.get('num_layers')} layers, hidden {a.get('hidden_size')}, "
             f"{a.get('num_heads')} heads, FFN {a.get('ffn_width')})") if a else ""
    what = info["what"]
    title = "an `edgeadapt offline` output" if what == "offline-output" else f"a {KINDS[what]}"
    lines = [f"{info['path']}: {title}, not a model",
             f"  foundation model: {info.get('model') or 'unknown'}{shape}"]
    for p in info["parts"]:
        extra = ""
        if p.get("widths"):
            extra = f"; {p.get('kb_blocks')} blocks, proxy widths {p['widths']}"
        if p.get("index_blocks"):
            extra = f"; {p['index_blocks']} blocks"
        lines.append(f"  {Path(p['path']).name + '/':<7} {KINDS.get(p['kind'], p['kind'])}, "
                     f"{_size(p['bytes'])}{extra}")
    lines.append(f"read by: {info['read_by']}")
    if info.get("models_inside"):
        lines.append(f"models inside (edgeadapt inspect reads these): {', '.join(info['models_inside'])}")
    return "\n".join(lines)
