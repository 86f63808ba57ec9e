"""The reference LM for LLM pruning: ``tiny-llama-ref`` (1.7M parameters) trained on the built-in
documentation corpus (cached). ``edgeadapt llm-pretrain`` runs it.

It is the recipe ``configs/train-llama-ref-docs.yaml`` (a test keeps the two equal) run through
:func:`edgeadapt.recipes.train.run_training`, so pruning is shown on a model that learned something.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeadapt.artifacts import ArtifactError
from edgeadapt.models.adapter import HFAdapter
from edgeadapt.pruning.checkpoint import load_pruned

REFERENCE_LM_RECIPE: dict[str, Any] = {
    "kind": "train",
    "model": "tiny-llama-ref",
    "seed": 0,
    "data": {"name": "builtin-docs", "max_length": 128},
    "train": {"epochs": 20, "batch_size": 16, "learning_rate": 3.0e-3, "warmup_fraction": 0.05,
              "schedule": "cosine", "patience": 2, "checkpoint_every": 100},
    "tracking": {"backends": ["tensorboard", "csv"]},
    "out": "runs/ref-llama",
}


def train_reference_lm(out: str | Path = "runs/ref-llama", reuse: bool = True, progress: bool = True,
                       epochs: int | None = None) -> tuple[HFAdapter, dict[str, float]]:
    """Train ``tiny-llama-ref`` on ``builtin-docs`` into the artifact directory ``out``, or reuse a
    valid one. Returns the adapter and its test metrics (loss, perplexity)."""
    import json

    from edgeadapt.config import parse_config
    from edgeadapt.recipes.train import run_training

    out = Path(out)
    if reuse and (out / "manifest.json").exists():
        try:
            return load_pruned(out), json.loads((out / "metrics.json").read_text())["test"]
        except (ArtifactError, OSError, KeyError, ValueError):
            pass  # stale or corrupted cache: retrain
    train = {**REFERENCE_LM_RECIPE["train"], "progress": progress}
    if epochs is not None:
        train["epochs"] = epochs
    recipe = parse_config({**REFERENCE_LM_RECIPE, "out": str(out), "resume": reuse, "train": train})
    outcome = run_training(recipe)
    return load_pruned(out), outcome.test
