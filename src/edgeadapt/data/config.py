"""The ``data:`` section every config that reads a registered dataset shares, and its loading.

It is validated against the registry before any data is read (name, root, options, corruption);
:func:`load_splits` then builds the splits with the same seed every stage uses, so ``train``,
``offline`` and the rest see the same partition of the same folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeadapt.data.corruptions import check_corruption
from edgeadapt.data.registry import build_dataset, dataset_info
from edgeadapt.data.splits import Splits
from edgeadapt.errors import ConfigError


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
    ``data.options.size`` is refused (:class:`~edgeadapt.errors.ConfigError`)."""
    info = dataset_info(data.name)
    options = dict(data.options)
    if image_size is not None and info.task == "image-classification" and "size" in info.options:
        if options.setdefault("size", image_size) != image_size:
            raise ConfigError(f"data.options.size is {options['size']} but the model takes {image_size}x"
                              f"{image_size} images; remove the option or set it to {image_size}")
    return build_dataset(data.name, root=data.root, ignore_classes=data.ignore_classes, remap=data.remap,
                         val_fraction=data.val_fraction, seed=seed, **options)
