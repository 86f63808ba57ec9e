"""Crash-safe training checkpoints: everything needed to resume a run to the same result.

A checkpoint directory holds the model weights and the best weights so far (safetensors), the
optimizer/schedule/RNG state (``state.pt``, read back with ``weights_only=True``) and a manifest
with hashes. A new checkpoint is written next to the old one and swapped in by renames, so a kill
at any moment leaves one complete checkpoint on disk.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from edgeadapt.artifacts import ArtifactError, read_manifest, write_manifest

KIND, VERSION = "train-checkpoint", 1
_FILES = ["model.safetensors", "state.pt"]


def save_checkpoint(directory: str | Path, model: torch.nn.Module, state: dict[str, Any],
                    best_state: dict[str, torch.Tensor] | None) -> Path:
    """Atomically replace ``directory/checkpoint`` with the current training state."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final, tmp, old = directory / "checkpoint", directory / f".checkpoint-{os.getpid()}", directory / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(state, tmp / "state.pt")
    files = list(_FILES)
    if best_state is not None:
        save_file({k: v.contiguous() for k, v in best_state.items()}, str(tmp / "best.safetensors"))
        files.append("best.safetensors")
    write_manifest(tmp, KIND, VERSION, files, step=state.get("step"))
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


def load_checkpoint(path: str | Path, model: torch.nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Load weights into ``model`` (in place); return the training state and the best weights."""
    path = Path(path)
    manifest = read_manifest(path, KIND, VERSION)
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ArtifactError(f"checkpoint {path} does not match the model being trained "
                            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); "
                            "resume with the same model and config, or start a new run directory")
    state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    best = load_file(str(path / "best.safetensors")) if "best.safetensors" in manifest["files"] else None
    return state, best
