"""The source model of the drift story: the tiny ViT trained on clean digits (cached).

It is the recipe ``configs/train-vit-digits.yaml`` (a test keeps the two equal) run through
:func:`edgeadapt.recipes.train.run_training`, so the demo, the benchmarks and `edgeadapt train`
produce the same model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeadapt.artifacts import ArtifactError
from edgeadapt.models.adapter import HFAdapter
from edgeadapt.pruning.checkpoint import load_pruned

SOURCE_RECIPE: dict[str, Any] = {
    "kind": "train",
    "model": "tiny-vit",
    "seed": 0,
    "data": {"name": "digits"},
    "train": {"epochs": 30, "batch_size": 64, "learning_rate": 2.0e-3, "warmup_fraction": 0.05,
              "schedule": "cosine", "patience": 8, "checkpoint_every": 50},
    "tracking": {"backends": ["tensorboard", "csv"]},
    "out": "runs/source-vit",
}


def source_test_metrics(adapter: HFAdapter) -> dict[str, float]:
    """Accuracy and loss on the clean digits test split."""
    from edgeadapt.data.registry import build_dataset

    size = adapter.model.config.image_size
    return adapter.evaluate(build_dataset("digits", size=size).test.batches(256))


def train_source_vit(out: str | Path = "runs/source-vit", reuse: bool = True, progress: bool = True
                     ) -> tuple[HFAdapter, dict[str, float]]:
    """Train ``tiny-vit`` on ``digits`` into the artifact directory ``out``, or reuse a valid one.
    Returns the adapter and its clean test metrics."""
    from edgeadapt.config import parse_config
    from edgeadapt.recipes.train import run_training

    out = Path(out)
    if reuse and (out / "manifest.json").exists():
        try:
            adapter = load_pruned(out)
            return adapter, source_test_metrics(adapter)
        except ArtifactError:
            pass  # stale or corrupted cache: retrain
    recipe = parse_config({**SOURCE_RECIPE, "out": str(out), "resume": reuse,
                           "train": {**SOURCE_RECIPE["train"], "progress": progress}})
    run_training(recipe)
    adapter = load_pruned(out)
    return adapter, source_test_metrics(adapter)
