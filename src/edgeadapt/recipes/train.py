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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeadapt.errors import ConfigError
from edgeadapt.training.config import TrainConfig


class DataSection(BaseModel):
    """Which registered dataset to train on and how to cut it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="A registered dataset (see `edgeadapt data list`).")
    root: Path | None = Field(None, description="Local data folder or file, for datasets that read one.")
    options: dict[str, Any] = Field(default_factory=dict, description="Dataset options, e.g. {size: 16} or "
                                    "{corruption: fog, severity: 3} for digits-c.")
    ignore_classes: list[str | int] = Field(default_factory=list, description="Classes to drop (names, "
                                            "aliases or indices).")
    remap: dict[int, int] | None = Field(None, description="Old class index -> new class index.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Validation share carved from train when "
                                "the source has no validation split.")
    max_length: int = Field(128, ge=8, description="Tokens per sequence for text data.")
    tokenizer: Literal["model", "bpe"] = Field("model", description="Text tokenization: the model's own "
                                               "tokenizer, or a byte-level BPE trained on this dataset's "
                                               "train split (random-init tiny-* models only).")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from edgeadapt.data.registry import dataset_info

        dataset_info(name)
        return name

    @field_validator("root")
    @classmethod
    def _root_exists(cls, root: Path | None) -> Path | None:
        if root is not None and not root.exists():
            raise ConfigError(f"data.root {str(root)!r} does not exist; point it at your local data "
                             "(relative paths are relative to the current directory)")
        return root

    @model_validator(mode="after")
    def _options(self) -> DataSection:
        from edgeadapt.data.registry import dataset_info

        info = dataset_info(self.name)
        unknown = sorted(set(self.options) - set(info.options))
        if unknown:
            raise ConfigError(f"data.options: {unknown} are not options of dataset {self.name!r}; "
                             f"it takes {list(info.options) or 'none'}")
        if self.name == "digits-c":
            from edgeadapt.data.corruptions import check_corruption

            options = self.options
            check_corruption(options.get("corruption", "gaussian_noise"), options.get("severity", 3))
        return self


class TrainSection(TrainConfig):
    """The loop's hyperparameters plus batch sizes and the validation metric."""

    epochs: int = Field(ge=1, description="Passes over the training data.")
    learning_rate: float = Field(gt=0, description="Peak learning rate.")
    batch_size: int = Field(ge=1, description="Samples per micro-batch.")
    eval_batch_size: int = Field(256, ge=1, description="Samples per evaluation batch.")
    monitor: str | None = Field(None, description="Validation metric for early stopping and best-weight "
                                "restore; default accuracy for classification, loss otherwise.")


class TrackingSection(BaseModel):
    """Where metrics go besides the console."""

    model_config = ConfigDict(extra="forbid")

    backends: list[Literal["tensorboard", "csv", "wandb", "mlflow", "none"]] = Field(
        default_factory=lambda: ["tensorboard", "csv"], description="Metric loggers.")
    project: str = Field("edgeadapt", description="W&B project / MLflow experiment name.")


class ModelDataConfig(BaseModel):
    """Base of every config that runs a model on a registered dataset: both must exist and match
    (an image model on image data, a text model on text data), checked before any compute."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Built-in model name, local Hugging Face directory or edgeadapt "
                       "model artifact.")
    data: DataSection

    @field_validator("model")
    @classmethod
    def _model_exists(cls, model: str) -> str:
        model_modality(model)
        return model

    @model_validator(mode="after")
    def _model_matches_data(self) -> ModelDataConfig:
        check_model_data(self.model, self.data.name)
        return self


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


def check_model_data(model: str, dataset: str) -> None:
    """Refuse an image model on text data and vice versa, naming ``data.name``."""
    from edgeadapt.data.registry import dataset_info

    modality, task = model_modality(model), dataset_info(dataset).task
    if (modality == "image") != (task == "image-classification"):
        raise ConfigError(f"data.name: dataset {dataset!r} is {task} data but model {model!r} "
                         f"is {'an image' if modality == 'image' else 'a text'} model; "
                         "pick a matching dataset or model")


def make_run_logger(tracking: TrackingSection, run_dir: Path) -> Any:
    """The configured metric loggers writing into ``run_dir``."""
    from edgeadapt.tracking import make_logger

    backends = tracking.backends
    options = {k: v for k, v in {"wandb": {"project": tracking.project},
                                 "mlflow": {"experiment": tracking.project}}.items() if k in backends}
    return make_logger(run_dir, backends, **options)


def model_config(model: str) -> dict[str, Any] | None:
    """The HF config of a local model directory or edgeadapt model artifact (None for built-ins)."""
    from edgeadapt.models.registry import BUILTIN

    if model in BUILTIN:
        return None
    path = Path(model).expanduser()
    for name in ("config.json", "base_config.json"):
        if (path / name).is_file():
            return json.loads((path / name).read_text())
    hint = "" if path.exists() else (" (it does not exist yet: if an earlier step writes it, such as "
                                      "`edgeadapt train`, run that step first)")
    raise ConfigError(f"model {model!r} is neither a built-in name ({', '.join(BUILTIN)}) nor a local "
                     f"Hugging Face model directory (config.json) or edgeadapt model artifact{hint}")


def model_modality(model: str) -> str:
    """'image' or 'text' for a built-in name, local HF directory or artifact, without loading weights."""
    from edgeadapt.models.tiny import TINY

    if model in TINY:
        return TINY[model][2]
    config = model_config(model)
    return "image" if config is not None and config.get("model_type") in ("vit", "deit", "dinov2") else "text"


@dataclass
class TrainOutcome:
    """What a training run produced."""

    out: Path
    test: dict[str, float]
    history: list[dict[str, float]]
    stop_reason: str


def _order(n: int, shuffle: bool, seed: int) -> torch.Tensor:
    """A seeded permutation of ``range(n)``, or the identity."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)


def batch_factory(data: DataSection, adapter: Any, split: Any, batch_size: int, shuffle: bool, seed: int = 0
                  ) -> Callable[[int], Iterable[dict[str, torch.Tensor]]]:
    """A per-epoch batch factory for ``split`` suited to the model's task (images, contrastive
    paragraph pairs for sentence encoders, fixed-length token blocks for causal LMs)."""
    from edgeadapt.data.splits import ImageSplit

    if isinstance(split, ImageSplit):
        return lambda epoch: split.batches(batch_size, shuffle=shuffle, seed=seed + epoch)
    texts = list(split.texts)
    if adapter.task.name == "sentence-embedding":
        from edgeadapt.data.text import text_batches

        def sentence(epoch: int) -> Iterable[dict[str, torch.Tensor]]:
            chosen = [texts[i] for i in _order(len(texts), shuffle, seed + epoch)]
            return text_batches(adapter.tokenizer, chosen, batch_size, data.max_length, pairs=True)
        return sentence
    from edgeadapt.data.external import lm_blocks

    blocks = lm_blocks(adapter.tokenizer, texts, data.max_length)

    def lm(epoch: int) -> Iterable[dict[str, torch.Tensor]]:
        order = _order(len(blocks), shuffle, seed + epoch)
        for start in range(0, len(blocks), batch_size):
            ids = blocks[order[start:start + batch_size]]
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return lm


def load_splits(data: DataSection, model: str, seed: int = 0) -> Any:
    """The dataset's splits, with image size taken from ``model`` when the dataset has a size option."""
    from edgeadapt.data.registry import build_dataset, dataset_info

    info = dataset_info(data.name)
    options = dict(data.options)
    if info.task == "image-classification" and "size" in info.options:
        size = _image_size(model)
        if options.setdefault("size", size) != size:
            raise ConfigError(f"data.options.size is {options['size']} but model {model!r} takes "
                             f"{size}x{size} images; remove the option or set it to {size}")
    return build_dataset(data.name, root=data.root, ignore_classes=data.ignore_classes, remap=data.remap,
                         val_fraction=data.val_fraction, seed=seed, **options)


def run_training(recipe: TrainRecipe) -> TrainOutcome:
    """Train ``recipe.model`` on ``recipe.data`` and write the artifact directory ``recipe.out``."""
    from edgeadapt.data.registry import dataset_info
    from edgeadapt.models.registry import load_adapter
    from edgeadapt.pruning.checkpoint import save_pruned
    from edgeadapt.tracking import plot_curves
    from edgeadapt.training.loop import fit

    info = dataset_info(recipe.data.name)
    splits = load_splits(recipe.data, recipe.model, recipe.seed)
    num_labels = len(splits.train.classes) if info.task == "image-classification" else None
    adapter = load_adapter(recipe.model, task=recipe.task, seed=recipe.seed, num_labels=num_labels)
    if recipe.data.tokenizer == "bpe" and info.task != "image-classification":
        from edgeadapt.data.text import bpe_tokenizer

        adapter.tokenizer = bpe_tokenizer(adapter.model.config.vocab_size, list(splits.train.texts))
    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(**recipe.train.model_dump(exclude={"batch_size", "eval_batch_size", "monitor"}))
    monitor = recipe.train.monitor or ("accuracy" if adapter.task.name == "classification" else "loss")
    logger = make_run_logger(recipe.tracking, out / "logs")
    logger.log_params(recipe.model_dump(mode="json"))
    try:
        val = batch_factory(recipe.data, adapter, splits.val, recipe.train.eval_batch_size, False)
        result = fit(adapter, batch_factory(recipe.data, adapter, splits.train, recipe.train.batch_size, True,
                                            recipe.seed), cfg,
                     val=lambda: val(0), monitor=monitor, logger=logger, checkpoint_dir=out / "checkpoints",
                     resume=recipe.resume)
        test = adapter.evaluate(batch_factory(recipe.data, adapter, splits.test, recipe.train.eval_batch_size,
                                              False)(0))
        logger.log_metrics({f"test/{k}": v for k, v in test.items()}, result.steps)
    finally:
        logger.close()
    adapter.model.cpu()
    save_pruned(adapter, out, config=recipe.model_dump(mode="json"))
    from edgeadapt.artifacts import atomic_write_text

    metrics = {"test": test, "best_val": result.best, "history": result.history,
               "stop_reason": result.stop_reason}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    if (out / "logs" / "metrics.csv").exists():
        plot_curves(out / "logs" / "metrics.csv", out / "curves.png",
                    title=f"{recipe.model} on {recipe.data.name}")
    return TrainOutcome(out, test, result.history, result.stop_reason)


def _image_size(model: str) -> int:
    from edgeadapt.models.tiny import TINY

    if model in TINY:
        return TINY[model][0]().image_size
    return int(model_config(model)["image_size"])
