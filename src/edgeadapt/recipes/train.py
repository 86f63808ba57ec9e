"""``edgeadapt train``: train a model on a registered dataset from one YAML recipe.

The recipe is validated completely (model name, dataset and its options, modality match,
hyperparameters) before any data is read. The run writes an artifact directory: the model
(safetensors + plan + manifest, reloadable with ``load_pruned``), ``metrics.json``, logs
(TensorBoard, CSV and any configured tracker), ``curves.png`` and resumable checkpoints.

Example recipe (``configs/train-vit-digits.yaml``)::

    model: tiny-vit
    data: {name: digits}
    train: {epochs: 30, batch_size: 64, learning_rate: 2.0e-3}
    out: runs/source-vit
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, ValidationInfo, model_validator

from edgeadapt.artifacts import atomic_write_text
from edgeadapt.config import not_built_yet
from edgeadapt.data.config import DataSection, check_data_fits_model, load_splits
from edgeadapt.data.registry import dataset_info
from edgeadapt.data.text import bpe_tokenizer
from edgeadapt.errors import ConfigError
from edgeadapt.models.registry import load_adapter, model_image_size
from edgeadapt.models.tiny import TINY
from edgeadapt.pruning.checkpoint import load_model, save_pruned
from edgeadapt.rundir import claim_output
from edgeadapt.tracking.config import TrackingSection, make_run_logger
from edgeadapt.tracking.plots import plot_curves
from edgeadapt.training.batches import batch_factory
from edgeadapt.training.checkpoint import bind_checkpoints
from edgeadapt.training.loop import fit
from edgeadapt.training.sections import ModelDataConfig, TrainSection


class TrainRecipe(ModelDataConfig):
    """A complete `edgeadapt train` configuration."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["train"] = "train"
    model: str = Field(description="Built-in model name (tiny-vit, tiny-llama, minilm, ...) or a local "
                       "Hugging Face model directory.")
    task: str | None = Field(None, description="Model task; default from the model and dataset.")
    seed: int = Field(0, description="Seed for initialisation, shuffling and dropout.")
    data: DataSection
    train: TrainSection
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    out: Path = Field(description="Artifact directory to write (created).")
    resume: bool = Field(True, description="Continue from the last checkpoint in `out` if one exists.")

    @model_validator(mode="after")
    def _tokenizer(self) -> TrainRecipe:
        if self.data.tokenizer == "bpe" and not self.model.startswith("tiny-"):
            raise ConfigError(f"data.tokenizer: 'bpe' replaces the vocabulary, which only suits random-init "
                             f"tiny-* models, not {self.model!r}; use tokenizer: model")
        return self

    @model_validator(mode="after")
    def _fits_model(self, info: ValidationInfo) -> TrainRecipe:
        # A built-in tiny-* model gets a head with the data's classes; any other keeps its own.
        if not not_built_yet(self.model, "model", info):
            check_data_fits_model(self.data, self.model, head_from_data=self.model in TINY)
        return self


@dataclass
class TrainOutcome:
    """What a training run produced."""

    out: Path
    test: dict[str, float]
    history: list[dict[str, float]]
    stop_reason: str


def run_training(recipe: TrainRecipe, overwrite: bool = False) -> TrainOutcome:
    """Train ``recipe.model`` on ``recipe.data`` and write the artifact directory ``recipe.out``.

    Before any compute, ``out`` is locked and checked (:func:`edgeadapt.rundir.claim_output`): it
    must be empty or hold an earlier ``edgeadapt train`` of the same recipe (which is resumed; with
    ``resume: false`` a train run of any recipe is started over). Anything else is refused with
    :class:`~edgeadapt.errors.OutputExistsError` / :class:`~edgeadapt.errors.ConfigError` unless
    ``overwrite``, which empties ``out`` first."""
    with claim_output(recipe.out, "train", recipe, overwrite=overwrite, resumable=recipe.resume):
        return _run_training(recipe)


def _run_training(recipe: TrainRecipe) -> TrainOutcome:
    info = dataset_info(recipe.data.name)
    image = info.task == "image-classification"
    # an edgeadapt model artifact (a pruned model, an earlier train run) is rebuilt from its manifest
    artifact = load_model(recipe.model) if (Path(recipe.model) / "manifest.json").is_file() else None
    size = (artifact.model.config.image_size if artifact is not None else model_image_size(recipe.model)) \
        if image else None
    splits = load_splits(recipe.data, size, recipe.seed)
    # A tiny-* model gets a head for the data's classes; any other keeps its own (checked to fit the data,
    # which may use only some of its outputs: digits' only_classes keeps labels unchanged).
    num_labels = len(splits.train.classes) if image and recipe.model in TINY else None
    adapter = artifact if artifact is not None else \
        load_adapter(recipe.model, task=recipe.task, seed=recipe.seed, num_labels=num_labels)
    if recipe.data.tokenizer == "bpe" and not image:
        adapter.tokenizer = bpe_tokenizer(adapter.model.config.vocab_size, list(splits.train.texts))
    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    if not recipe.resume:  # starting over: the old checkpoints belong to the run being replaced
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    bind_checkpoints(out / "checkpoints", recipe)
    section, length = recipe.train, recipe.data.max_length
    monitor = section.monitor_for(adapter.task.name)
    logger = make_run_logger(recipe.tracking, out / "logs")
    logger.log_params(recipe.model_dump(mode="json"))
    try:
        train = batch_factory(adapter, splits.train, section.batch_size, True, recipe.seed, length)
        val = batch_factory(adapter, splits.val, section.eval_batch_size, False, max_length=length)
        test_batches = batch_factory(adapter, splits.test, section.eval_batch_size, False, max_length=length)
        result = fit(adapter, train, section.loop_config(), val=lambda: val(0), monitor=monitor,
                     logger=logger, checkpoint_dir=out / "checkpoints", resume=recipe.resume)
        test = adapter.evaluate(test_batches(0))
        logger.log_metrics({f"test/{k}": v for k, v in test.items()}, result.steps)
    finally:
        logger.close()
    adapter.model.cpu()
    save_pruned(adapter, out, config=recipe.model_dump(mode="json"))
    metrics = {"test": test, "best_val": result.best, "history": result.history,
               "stop_reason": result.stop_reason}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    if (out / "logs" / "metrics.csv").exists():
        plot_curves(out / "logs" / "metrics.csv", out / "curves.png",
                    title=f"{recipe.model} on {recipe.data.name}")
    return TrainOutcome(out, test, result.history, result.stop_reason)
