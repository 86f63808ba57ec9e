"""Crash-safe training checkpoints: everything needed to resume a run to the same result.

A checkpoint directory holds the model weights and the best weights so far (safetensors), the
optimizer/schedule/RNG state (``state.pt``, read back with ``weights_only=True``) and a manifest
with hashes, the optimizer step and the hash of the config that produced it. A new checkpoint is
written next to the old one and swapped in by renames, so a kill at any moment leaves one complete
checkpoint on disk; the half-written ``.checkpoint-<pid>`` directories of killed runs are removed at
the next save.

:func:`bind_checkpoints` ties a checkpoint directory to the config that determines the result: a
later run with another config is refused (naming the fields that differ) instead of "resuming"
weights it did not produce, and so is a checkpoint whose shapes do not fit the model.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from safetensors.torch import load_file, load_model, save_file, save_model

from edgeadapt.artifacts import ArtifactError, atomic_write_text, read_manifest, write_manifest
from edgeadapt.errors import ConfigError
from edgeadapt.rundir import config_hash, refuse_config_change, result_config

KIND, VERSION = "train-checkpoint", 1
_FILES = ["model.safetensors", "state.pt"]
CONFIG_FILE = "config.json"
_FIX = "pass --overwrite (or resume: false) to start over, or choose a new output directory"


def _bound(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(directory) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def bind_checkpoints(directory: str | Path, config: BaseModel | Mapping[str, Any]) -> str:
    """Record in ``directory/config.json`` the config (minus cosmetic fields) whose run checkpoints
    there, and return its hash. Raises :class:`~edgeadapt.errors.ConfigError` naming the fields that
    differ when the directory is already bound to another config."""
    directory = Path(directory)
    digest, data = config_hash(config), result_config(config)
    bound = _bound(directory)
    if bound is not None and bound.get("config_hash") != digest:
        refuse_config_change(f"the checkpoints in {directory}", bound.get("config", {}), data, _FIX)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / CONFIG_FILE, json.dumps({"config_hash": digest, "config": data}, indent=1,
                                                          sort_keys=True))
    return digest


def _clean_stale(directory: Path) -> None:
    """Remove ``.checkpoint-<pid>`` directories that killed saves left behind (never our own)."""
    for path in directory.glob(".checkpoint-*"):
        if path.name != f".checkpoint-{os.getpid()}" and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(directory: str | Path, model: torch.nn.Module, state: dict[str, Any],
                    best_state: dict[str, torch.Tensor] | None) -> Path:
    """Atomically replace ``directory/checkpoint`` with the current training state. The manifest
    records the optimizer step and the bound config's hash (:func:`bind_checkpoints`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _clean_stale(directory)
    final, old = directory / "checkpoint", directory / "checkpoint.old"
    tmp = directory / f".checkpoint-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(state, tmp / "state.pt")
    files = list(_FILES)
    if best_state is not None:
        save_file({k: v.contiguous() for k, v in best_state.items()}, str(tmp / "best.safetensors"))
        files.append("best.safetensors")
    step = state.get("step", state.get("loop", {}).get("step"))
    bound = _bound(directory)
    write_manifest(tmp, KIND, VERSION, files, step=step,
                   config_hash=bound.get("config_hash") if bound is not None else None)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(directory: str | Path) -> Path | None:
    """The complete checkpoint under ``directory`` (the previous one if a swap was interrupted)."""
    for name in ("checkpoint", "checkpoint.old"):
        path = Path(directory) / name
        if (path / "manifest.json").is_file():
            return path
    return None


def load_checkpoint(path: str | Path, model: torch.nn.Module
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Load weights into ``model`` (in place); return the training state and the best weights.

    Refuses (:class:`~edgeadapt.errors.ConfigError`) a checkpoint written under another config than
    the one its directory is bound to, or one whose tensors do not fit ``model``."""
    path = Path(path)
    manifest = read_manifest(path, KIND, VERSION)
    bound = _bound(path.parent)
    stored = manifest.get("config_hash")
    if stored is not None and bound is not None and stored != bound.get("config_hash"):
        raise ConfigError(f"checkpoint {path} was written by a run with another config (hash "
                          f"{str(stored)[:12]}, this run {str(bound.get('config_hash'))[:12]}); {_FIX}")
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except RuntimeError as exc:  # "size mismatch for ...": another model or config wrote it
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        raise ConfigError(f"checkpoint {path} does not fit the model being trained "
                          f"({lines[0] if lines else str(exc)[:200]}): it belongs to another model or "
                          f"config; {_FIX}") from None
    if missing or unexpected:
        raise ArtifactError(f"checkpoint {path} does not match the model being trained "
                            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); "
                            "resume with the same model and config, or start a new run directory")
    state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    best = load_file(str(path / "best.safetensors")) if "best.safetensors" in manifest["files"] else None
    return state, best
