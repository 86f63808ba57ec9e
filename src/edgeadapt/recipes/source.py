"""Train the source model: the tiny ViT on digits (cached, so later runs reuse it)."""

from __future__ import annotations

from pathlib import Path

from edgeadapt.artifacts import ArtifactError
from edgeadapt.data.digits import digits_tensors, image_batches
from edgeadapt.models.adapter import HFAdapter
from edgeadapt.models.registry import load_adapter
from edgeadapt.pruning.checkpoint import load_pruned, save_pruned
from edgeadapt.training.loop import TrainConfig, fit


def train_source_vit(out: str | Path, cfg: TrainConfig | None = None, batch_size: int = 64,
                     seed: int = 0, reuse: bool = True) -> tuple[HFAdapter, dict[str, float]]:
    """Train ``tiny-vit`` on ``digits`` into ``out`` (an artifact directory); reuse it if valid.
    Returns the adapter and its test metrics."""
    out = Path(out)
    test_x, test_y = digits_tensors("test")
    if reuse and (out / "manifest.json").exists():
        try:
            adapter = load_pruned(out)
            return adapter, adapter.evaluate(image_batches(test_x, test_y, 256))
        except ArtifactError:
            pass  # stale or corrupted cache: retrain
    cfg = cfg or TrainConfig(epochs=30, learning_rate=2e-3, seed=seed)
    adapter = load_adapter("tiny-vit", seed=seed)
    x, y = digits_tensors("train")
    vx, vy = digits_tensors("val")
    fit(adapter, lambda e: image_batches(x, y, batch_size, shuffle=True, seed=seed + e), cfg,
        val=lambda: image_batches(vx, vy, 256), monitor="accuracy")
    adapter.model.cpu()
    save_pruned(adapter, out, config={"recipe": "train_source_vit", **cfg.model_dump()})
    return adapter, adapter.evaluate(image_batches(test_x, test_y, 256))
