"""The demo's first stages: the source ViT learns digits, is cached, and prunes sensibly."""

from __future__ import annotations

from edgeadapt.data.calibration import calibration_batches
from edgeadapt.data.digits import digits_tensors, image_batches
from edgeadapt.recipes.demo import pruning_table
from edgeadapt.recipes.source import train_source_vit
from edgeadapt.training.loop import TrainConfig


def test_source_vit_trains_caches_and_prunes(tmp_path):
    cfg = TrainConfig(epochs=30, learning_rate=2e-3, progress=False)
    adapter, metrics = train_source_vit(tmp_path / "source", cfg=cfg)
    assert metrics["accuracy"] >= 0.90
    cached, again = train_source_vit(tmp_path / "source")  # reuses the artifact, no training
    assert again["accuracy"] == metrics["accuracy"]

    x, y = digits_tensors("test")
    test = list(image_batches(x, y, 256))
    rows = pruning_table(cached, calibration_batches(cached, 4, 8, split="val"), test, metrics["accuracy"])
    by = {(r["target"], r["sparsity"], r["method"]): r for r in rows}
    # Removing a quarter of FFN neurons costs little; halving heads costs more than a quarter.
    assert by[("neurons", 0.25, "taylor")]["accuracy"] >= metrics["accuracy"] - 0.05
    assert by[("heads", 0.5, "taylor")]["accuracy"] <= by[("heads", 0.25, "taylor")]["accuracy"]
    assert all(r["params_ratio"] < 1 and r["flops_ratio"] < 1 for r in rows)
