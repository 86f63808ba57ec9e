"""The ``data:`` section every config that reads a registered dataset shares, and its loading.

It is validated against the registry before any data is read (name, root, options, corruption,
a hub dataset missing from the local cache); :func:`check_data_fits_model` then checks it against
what the model's config bounds (image size and channels, number of labels, token positions,
vocabulary), and :func:`load_splits` builds the splits with the same seed every stage uses, so
``train``, ``offline`` and the rest see the same partition of the same folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from edgeadapt.data.builtin import parse_only_classes
from edgeadapt.data.corruptions import check_corruption
from edgeadapt.data.external import HF_TEXT_DATASETS
from edgeadapt.data.registry import build_dataset, dataset_info, options_at_size, resolve_class
from edgeadapt.data.splits import Splits, TextSplit
from edgeadapt.errors import ConfigError
from edgeadapt.models.inspect import check_context, model_limits
from edgeadapt.models.registry import minilm_path, model_config_dict, task_of
from edgeadapt.models.tiny import TINY

# Channels of every built-in image dataset (digits, digits-c, image-folder load RGB).
IMAGE_CHANNELS = 3
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


class DataSection(BaseModel):
    """Which registered dataset to use and how to cut it."""

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
    def _cached(self, info: ValidationInfo) -> DataSection:
        check_hub_cached(self.name, self.root, "data.root", info)
        return self

    def num_classes(self) -> int | None:
        """Classes the model sees after ``ignore_classes`` and ``remap``; ``None`` when the registry
        does not fix them (text, or an image folder whose subfolders name them)."""
        info = dataset_info(self.name)
        if not info.classes:
            return None
        dropped = {resolve_class(info, info.classes, c) for c in self.ignore_classes}
        if self.remap is not None:
            return len(set(self.remap.values()))
        return len(info.classes) - len(dropped)

    def label_values(self) -> tuple[int, ...] | None:
        """The label values the data yields when ``options.only_classes`` keeps a subset of the classes
        (only_classes leaves labels unchanged; ``ignore_classes``/``remap`` then renumber as for the
        whole set), e.g. ``(0, 1, 2)`` for ``only_classes: [0, 1, 2]``; ``None`` without only_classes."""
        info = dataset_info(self.name)
        if "only_classes" not in info.options or not info.classes:
            return None
        only = parse_only_classes(self.options.get("only_classes"))
        if only is None:
            return None
        dropped = {resolve_class(info, info.classes, c) for c in self.ignore_classes}
        kept = [i for i in range(len(info.classes)) if i not in dropped]
        table = self.remap if self.remap is not None else {old: new for new, old in enumerate(kept)}
        return tuple(sorted({int(table[c]) for c in only if c in table}))

    @model_validator(mode="after")
    def _options(self) -> DataSection:
        info = dataset_info(self.name)
        unknown = sorted(set(self.options) - set(info.options))
        if unknown:
            raise ConfigError(f"data.options: {unknown} are not options of dataset {self.name!r}; "
                              f"it takes {list(info.options) or 'none'}")
        if self.name == "digits-c":
            options = self.options
            check_corruption(options.get("corruption", "gaussian_noise"), options.get("severity", 3))
        return self


def load_splits(data: DataSection, image_size: int | None = None, seed: int = 0) -> Splits:
    """The dataset's train/val/test splits. For an image dataset with a ``size`` option,
    ``image_size`` (the model's input side in pixels) is the default size, and a different
    ``data.options.size`` is refused (:class:`~edgeadapt.errors.ConfigError`), and so is an empty
    split (every stage trains, validates or tests on each), naming it and the three sizes."""
    options = options_at_size(data.name, data.options, image_size, "data.options.size")
    splits = build_dataset(data.name, root=data.root, ignore_classes=data.ignore_classes, remap=data.remap,
                           val_fraction=data.val_fraction, seed=seed, **options)
    for name, split in splits._asdict().items():
        if len(split) == 0:
            unit = "documents" if isinstance(split, TextSplit) else "samples"
            sizes = ", ".join(f"{k} {len(v)}" for k, v in splits._asdict().items())
            raise ConfigError(f"data: the {name!r} split of dataset {data.name!r} is empty ({sizes} {unit}; "
                              f"root {data.root}); every split needs at least one: give more data, or "
                              f"the {name} split explicitly (a {name} file or subfolder under data.root)")
    return splits


def hub_dataset_cached(name: str) -> bool:
    """False only when ``name`` is a hub text dataset (wikitext2, c4) that offline mode
    (``HF_HUB_OFFLINE=1``, which the CLI sets) cannot find in the local Hugging Face cache; loading
    it would then fail. Asks ``datasets`` for the builder, which reads no data."""
    if name not in HF_TEXT_DATASETS:
        return True
    if os.environ.get("HF_HUB_OFFLINE", "").upper() not in {"1", "ON", "YES", "TRUE"}:
        return True  # loading may download
    import datasets

    src = HF_TEXT_DATASETS[name]
    shard = (src.shards or {}).get(src.splits["test"])
    try:
        if shard:
            datasets.load_dataset_builder(src.path, data_files={src.splits["test"]: shard})
        else:
            datasets.load_dataset_builder(src.path, src.config)
    except (OSError, ValueError):  # ConnectionError/FileNotFoundError (offline, not cached)
        return False
    return True


def check_hub_cached(name: str, root: Path | None, field: str, info: ValidationInfo | None = None,
                     fix: str | None = None) -> None:
    """Refuse, before compute, a hub text dataset that is not cached and has no local ``root``
    (:class:`~edgeadapt.errors.ConfigError` naming ``field``; ``fix`` defaults to pointing ``field``,
    the config's local-files field, at local copies). Under ``edgeadapt validate`` (validation
    context given) caching it is an earlier step, so it is a note, like an input an earlier config
    writes."""
    if root is not None or hub_dataset_cached(name):
        return
    cache = f"HF_HUB_OFFLINE=0 edgeadapt data show {name}"
    fix = fix or (f"set {field} to a folder of local .parquet/.json/.txt copies named by split "
                  "(train/val/test)")
    context = info.context if info is not None else None
    if context is not None:
        note = f"dataset {name} not cached yet (run `{cache}` once, or {fix})"
        context.setdefault("notes", []).append(note)
        return
    raise ConfigError(f"{field}: dataset {name!r} is not in the local Hugging Face cache and edgeadapt "
                      f"does not download; {fix}, or cache it once with `{cache}`")


def model_config(model: str) -> dict[str, Any]:
    """The Hugging Face config (a dict) of a built-in name, local model directory or edgeadapt
    artifact, read without loading weights (:class:`~edgeadapt.errors.ConfigError` otherwise)."""
    if model in TINY:
        return TINY[model][0]().to_dict()
    if model == "minilm":
        return model_config_dict(minilm_path()) or {}
    return model_config_dict(model) or {}


def model_task(model: str) -> str | None:
    """The task of a built-in name, local HF directory (its ``architectures``) or edgeadapt artifact
    (its manifest's base class), without loading weights; ``None`` when nothing says."""
    if model in TINY:
        return TINY[model][1]
    archs = model_config(model).get("architectures") or []
    if not archs:
        try:
            manifest = json.loads((Path(model).expanduser() / "manifest.json").read_text())
            archs = [manifest["base"]["class"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return task_of(str(archs[0]))


def num_labels(config: dict[str, Any]) -> int | None:
    """A classifier's outputs, as transformers reads them from ``config`` (a saved config omits
    ``id2label`` when it holds transformers' default of 2 labels)."""
    from transformers import AutoConfig

    if "model_type" not in config:
        return None
    fields = {k: v for k, v in config.items() if k != "model_type"}
    return int(AutoConfig.for_model(config["model_type"], **fields).num_labels)


def tokenizer_size(model_or_tokenizer: str | Path) -> int | None:
    """Tokens of the tokenizer a model (or tokenizer directory) loads with, so its ids are
    ``0..n-1``; ``None`` when it ships none, and for the built-in ``tiny-*`` models, whose BPE is
    built with the model's own ``vocab_size``. Loads the tokenizer files only, never weights."""
    name = str(model_or_tokenizer)
    if name in TINY:
        return None
    path = minilm_path() if name == "minilm" else Path(name).expanduser()
    for folder in (path / "tokenizer", path):  # an edgeadapt artifact keeps it in tokenizer/
        if any((folder / f).is_file() for f in _TOKENIZER_FILES):
            from transformers import AutoTokenizer

            return len(AutoTokenizer.from_pretrained(folder))
    return None


def check_vocab(tokens: int | None, vocab: int | None, field: str, model: str, fix: str) -> None:
    """Refuse a tokenizer of ``tokens`` ids for a model whose embedding has ``vocab`` rows (an id
    past the table is an ``IndexError`` mid-run), naming ``field`` and both numbers."""
    if tokens is not None and vocab is not None and tokens > vocab:
        raise ConfigError(f"{field}: the tokenizer has {tokens} tokens (ids up to {tokens - 1}) but model "
                          f"{model!r} has vocab_size {vocab} (ids up to {vocab - 1}); {fix}")


def check_images_fit_model(model: str, dataset: str, classes: int | None, size: int | None = None,
                           field: str = "data", head_from_data: bool = False,
                           label_values: Sequence[int] | None = None) -> None:
    """Refuse images of ``dataset`` (``classes`` classes, ``size`` pixels a side when the config
    sets it) that image model ``model`` cannot take, naming ``field`` and both numbers
    (:class:`~edgeadapt.errors.ConfigError`): another input side than ``image_size``, other channels
    than ``num_channels``, and — for a classifier whose head is not built for the data
    (``head_from_data``) — another number of classes than ``num_labels``. When the data keeps a
    subset of its classes (``label_values``: the labels ``only_classes`` yields, unchanged), what the
    head needs is an output per label instead: every value below ``num_labels`` (so a 3-label model
    takes digits ``only_classes: [0, 1, 2]``; for ``[5, 7, 9]`` drop the other digits with
    ``ignore_classes``, which renumbers the kept ones 0, 1, 2)."""
    config, limits = model_config(model), model_limits(model)
    side = limits.image_size
    if size is not None and side is not None and size != side:
        raise ConfigError(f"{field}.options.size: {size} but model {model!r} takes {side}x{side} images "
                          f"(image_size {side}); remove the option (it defaults to the model's) or set it "
                          f"to {side}")
    channels = config.get("num_channels")
    if isinstance(channels, int) and channels != IMAGE_CHANNELS:
        raise ConfigError(f"{field}: dataset {dataset!r} has {IMAGE_CHANNELS}-channel images but model "
                          f"{model!r} takes {channels} (num_channels {channels}); use a model with "
                          f"num_channels {IMAGE_CHANNELS}")
    classifier = model_task(model) == "image-classification"
    labels = num_labels(config) if classifier else None
    if classifier and not head_from_data and labels is not None and label_values is not None:
        beyond = [v for v in label_values if v >= labels]
        if beyond:
            others = [c for c in range(classes or 0) if c not in label_values]
            raise ConfigError(f"{field}.options.only_classes: dataset {dataset!r} keeps classes "
                              f"{list(label_values)} with their labels unchanged, but model {model!r} has "
                              f"{labels} labels (num_labels {labels}, outputs 0..{labels - 1}), so label(s) "
                              f"{beyond} have no output; keep classes below {labels}, or instead of "
                              f"only_classes set ignore_classes: {others}, which renumbers the kept classes "
                              f"from 0")
    elif classifier and not head_from_data and None not in (classes, labels) and classes != labels:
        raise ConfigError(f"{field}: dataset {dataset!r} has {classes} classes but model {model!r} has "
                          f"{labels} labels (num_labels {labels}); give data with {labels} classes or a "
                          f"model trained on these {classes} classes")


def check_stream_fits_model(model: str, field: str = "offline") -> None:
    """Refuse a foundation model that cannot take the drift stream's images (digits-c: 3 channels,
    its 10 classes; built at the model's own image size), naming ``field``."""
    info = dataset_info("digits-c")
    check_images_fit_model(model, info.name, len(info.classes), None, field)


def check_data_fits_model(data: DataSection, model: str, head_from_data: bool = False) -> None:
    """Refuse, before compute, data the model's config cannot take (:class:`~edgeadapt.errors.ConfigError`
    naming the ``data.*`` field, the data's value, the model's limit and the fix):

    - images (:func:`check_images_fit_model`): ``data.options.size`` must be the model's
      ``image_size``, the model must take 3-channel images (``num_channels``), and the data's
      classes (after ignore_classes/remap) must be the model's ``num_labels`` unless
      ``head_from_data`` (a built-in model whose head is built for the data);
    - text: ``data.max_length`` within the model's positions, and the model's tokenizer
      (``data.tokenizer: model``) within its ``vocab_size``."""
    if dataset_info(data.name).task == "image-classification":
        size = data.options.get("size")
        check_images_fit_model(model, data.name, data.num_classes(), size if isinstance(size, int) else None,
                               "data", head_from_data, data.label_values())
        return
    limits = model_limits(model)
    check_context(data.max_length, limits.positions, "data.max_length")
    if data.tokenizer == "model":
        check_vocab(tokenizer_size(model), limits.vocab, "data.tokenizer", model,
                    "use a model whose embedding covers its tokenizer (or tokenizer: bpe for a tiny-* model)")


def check_offline_fits_model(cfg: Any) -> None:
    """``edgeadapt offline``: the foundation model ``cfg.model`` keeps its head, so ``cfg.data`` must
    fit it as is (:func:`check_data_fits_model`); skipped while the model is not built yet."""
    if str(cfg.model) in TINY or str(cfg.model) == "minilm" or Path(cfg.model).exists():
        check_data_fits_model(cfg.data, str(cfg.model))


def check_adapt_fits_model(cfg: Any) -> None:
    """``edgeadapt adapt``: the foundation model in ``cfg.offline/lora`` must take the drift stream
    (:func:`check_stream_fits_model`); skipped while it is not built yet (the run says so)."""
    lora = Path(cfg.offline) / "lora"
    if (lora / "base_config.json").is_file():
        check_stream_fits_model(str(lora), "offline")
