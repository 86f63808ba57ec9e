"""Small helpers recipes share."""

from __future__ import annotations

from pathlib import Path

from edgeadapt.models.adapter import HFAdapter


def load_model(model: str | Path) -> HFAdapter:
    """A built-in name, a local Hugging Face directory, or an edgeadapt model artifact directory."""
    if (Path(model) / "manifest.json").is_file():
        from edgeadapt.pruning.checkpoint import load_pruned

        return load_pruned(model)
    from edgeadapt.models.registry import load_adapter

    return load_adapter(str(model))
