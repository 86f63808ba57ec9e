"""The source model end to end: `edgeadapt train` on the shipped recipe (the session's `source_vit_dir`)
learns digits (≥ 90%), writes a complete artifact directory, is reused as the demo's cached source,
and prunes sensibly."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from edgeadapt.data.calibration import calibration_batches
from edgeadapt.data.digits import digits_tensors, image_batches
from edgeadapt.pruning.checkpoint import load_pruned
from edgeadapt.recipes.demo import pruning_table
from edgeadapt.recipes.source import SOURCE_RECIPE, train_source_vit
from tests.conftest import SOURCE_RECIPE_YAML as RECIPE


def test_shipped_recipe_is_the_source_recipe():
    assert yaml.safe_load(RECIPE.read_text()) == SOURCE_RECIPE


@pytest.mark.slow
def test_train_cli_learns_digits_and_the_demo_reuses_it(source_vit_dir):
    # The session's source ViT is the output of `edgeadapt train --config RECIPE` (see conftest):
    # trained once, checked here, reused by the offline and online tests.
    out = source_vit_dir
    assert "test accuracy" in (out.parent / "train.stdout").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.90
    history = metrics["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 3
    for name in ("manifest.json", "model.safetensors", "plan.json", "curves.png", "logs/metrics.csv",
                 "logs/params.json", "checkpoints/checkpoint/manifest.json"):
        assert (out / name).is_file(), name
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    with open(out / "logs" / "metrics.csv") as f:
        names = {row["name"] for row in csv.DictReader(f)}
    assert {"train/loss", "train/lr", "epoch/val_accuracy", "test/accuracy"} <= names

    adapter, again = train_source_vit(out)  # reuses the artifact, no training
    assert again["accuracy"] == metrics["test"]["accuracy"]
    reloaded = load_pruned(out).evaluate(image_batches(*digits_tensors("test"), 256))
    assert reloaded["accuracy"] == again["accuracy"]

    x, y = digits_tensors("test")
    test = list(image_batches(x, y, 256))
    rows = pruning_table(adapter, calibration_batches(adapter, 4, 8, split="val"), test, again["accuracy"])
    by = {(r["target"], r["sparsity"], r["method"]): r for r in rows}
    # Removing a quarter of FFN neurons costs little; halving heads costs more than a quarter.
    assert by[("neurons", 0.25, "taylor")]["accuracy"] >= again["accuracy"] - 0.05
    assert by[("heads", 0.5, "taylor")]["accuracy"] <= by[("heads", 0.25, "taylor")]["accuracy"]
    assert all(r["params_ratio"] < 1 and r["flops_ratio"] < 1 for r in rows)
