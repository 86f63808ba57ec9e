"""The reference LM for LLM pruning: ``tiny-llama-ref`` (1.7M parameters) trained on the built-in
documentation corpus (cached). ``edgeadapt llm-pretrain`` runs it.

It is the recipe ``configs/train-llama-ref-docs.yaml`` (a test keeps the two equal) run through
:func:`edgeadapt.recipes.train.run_training`, so pruning is shown on a model that learned something.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeadapt.artifacts import ArtifactError
from edgeadapt.errors import OutputExistsError
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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def holds_other_model(out: Path) -> str | None:
    """What ``out`` holds, in words, when it is anything but the reference LM (``tiny-llama-ref``
    trained on ``builtin-docs``) or a killed run of it: another model's artifact or run (its
    ``manifest.json`` or ``run.json`` config), or other files. ``None`` when it is missing, empty,
    or the reference LM."""
    if not out.is_dir() or not any(out.iterdir()):
        return None
    manifest, run = _read_json(out / "manifest.json"), _read_json(out / "run.json")
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else run.get("config")
    if not isinstance(config, dict):
        names = sorted(p.name for p in out.iterdir())
        return f"{len(names)} other entries ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    model, dataset = config.get("model"), data.get("name")
    if config.get("kind") == "train" and model == REFERENCE_LM_RECIPE["model"] \
            and dataset == REFERENCE_LM_RECIPE["data"]["name"]:
        return None
    if model is None:
        base = manifest.get("base") if isinstance(manifest.get("base"), dict) else {}
        model = base.get("name", "an unknown model")
    kind = config.get("kind") or run.get("command")
    what = f"`edgeadapt {kind}` of {model!r}" if kind else f"a model artifact of {model!r}"
    return what + (f" on {dataset!r}" if dataset else "")


def train_reference_lm(out: str | Path = "runs/ref-llama", reuse: bool = True, progress: bool = True,
                       epochs: int | None = None, field: str = "out") -> tuple[HFAdapter, dict[str, float]]:
    """Train ``tiny-llama-ref`` on ``builtin-docs`` into the artifact directory ``out``, or reuse a
    valid one. Returns the adapter and its test metrics (loss, perplexity). An ``out`` that holds
    another model (a ViT run, a pruned artifact) is refused before compute
    (:class:`~edgeadapt.errors.OutputExistsError` naming ``field``)."""
    from edgeadapt.config import parse_config
    from edgeadapt.recipes.train import run_training

    out = Path(out)
    other = holds_other_model(out)
    if other is not None:
        raise OutputExistsError(f"{field}: {out} holds {other}, not the reference LM (tiny-llama-ref "
                                "trained on builtin-docs), so it can be neither reused nor retrained over; "
                                "give an empty or new directory (default runs/ref-llama)")
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
