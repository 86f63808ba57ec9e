"""The dataset registry: every dataset edgeadapt trains or evaluates on, under one name.

A dataset is a class registered with ``@register_dataset(name=..., classes=..., task=...)``.
The class knows how to read the splits its source has (``load(root, split)``); the registry
does the rest the same way for every dataset: a seeded validation split carved out of train
when the source has none, a transform, ignored classes, an index remap (merge or reorder
classes), class-order validation against the data, and an in-process cache.

Example::

    @register_dataset(name="my-parts", classes=["ok", "scratch", "dent"], task="image-classification",
                      class_aliases={"good": "ok"})
    class MyParts:
        splits = ("train", "test")          # no val: the registry carves one out of train
        def __init__(self, size: int = 32): ...
        def load(self, root, split): return ImageSplit(images, labels, classes)

    splits = build_dataset("my-parts", root="data/parts", ignore_classes=["dent"])

This module knows nothing of the built-in datasets: ``edgeadapt.data.builtin`` registers them
into it, and the ``edgeadapt.data`` package imports that module, so they are present however the
registry is reached (dependencies point one way: builtin -> registry, never back).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from edgeadapt.data.splits import ImageSplit, Splits, TextSplit
from edgeadapt.errors import ConfigError

TASKS = ("image-classification", "language-modeling", "text")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows about one dataset."""

    name: str
    task: str
    classes: tuple[str, ...]
    class_aliases: Mapping[str, str]
    factory: type
    description: str = ""
    options: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, DatasetInfo] = {}
_CACHE: dict[tuple, Splits] = {}


def register_dataset(name: str, task: str, classes: Sequence[str] = (),
                     class_aliases: Mapping[str, str] | Sequence[tuple[str, str]] | None = None
                     ) -> Callable[[type], type]:
    """Class decorator adding a dataset under ``name``. ``classes`` is the label order (empty when
    the data defines it, e.g. an image folder); ``class_aliases`` maps other names to classes.
    Duplicate or malformed names, unknown tasks and inconsistent classes raise ``ValueError``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"dataset name {name!r} is malformed: use lowercase letters, digits, '.', '_', '-'")
    if name in _REGISTRY:
        raise ConfigError(f"dataset {name!r} is already registered (by {_REGISTRY[name].factory.__qualname__})")
    if task not in TASKS:
        raise ConfigError(f"task for dataset {name!r} must be one of {TASKS}, got {task!r}")
    classes = tuple(classes)
    if len(set(classes)) != len(classes) or not all(isinstance(c, str) and c for c in classes):
        raise ConfigError(f"classes of dataset {name!r} must be distinct non-empty strings, got {list(classes)}")
    aliases = dict(class_aliases or {})
    for alias, target in aliases.items():
        if target not in classes:
            raise ConfigError(f"class alias {alias!r} of dataset {name!r} points to unknown class {target!r}")
        if alias in classes:
            raise ConfigError(f"class alias {alias!r} of dataset {name!r} shadows a class name")

    def decorate(cls: type) -> type:
        if not callable(getattr(cls, "load", None)):
            raise ConfigError(f"dataset class {cls.__qualname__} needs a load(root, split) method")
        import inspect

        options = tuple(p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs"))
        _REGISTRY[name] = DatasetInfo(name, task, classes, aliases, cls, (cls.__doc__ or "").strip().split("\n")[0],
                                      options)
        return cls

    return decorate


def unregister_dataset(name: str) -> None:
    """Remove a dataset (for tests and plugins that re-register)."""
    _REGISTRY.pop(name, None)
    for key in [k for k in _CACHE if k[0] == name]:
        del _CACHE[key]


def list_datasets() -> list[DatasetInfo]:
    """Every registered dataset, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry for ``name``, or a ``ValueError`` listing the choices."""
    if name not in _REGISTRY:
        raise ConfigError(f"dataset {name!r} is unknown; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def resolve_class(info: DatasetInfo, classes: Sequence[str], label: str | int) -> int:
    """Index of a class given by name, alias or index."""
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < len(classes):
            raise ConfigError(f"class index {label} is out of range for dataset {info.name!r} ({len(classes)} classes)")
        return label
    name = info.class_aliases.get(str(label), str(label))
    if name not in classes:
        raise ConfigError(f"class {label!r} is not in dataset {info.name!r}; classes: {list(classes)}")
    return list(classes).index(name)


def build_dataset(name: str, root: str | Path | None = None, transform: Callable[[Any], Any] | None = None,
                  ignore_classes: Sequence[str | int] = (), remap: Mapping[int, int] | None = None,
                  val_fraction: float = 0.1, seed: int = 0, **options: Any) -> Splits:
    """Train/val/test splits of a registered dataset (cached in-process).

    ``options`` go to the dataset class (e.g. ``size=32`` for digits). ``transform`` is applied to
    each split's images (a batch tensor) or texts. ``ignore_classes`` drops samples of those classes
    (names, aliases or indices); ``remap`` maps old class index → new index (merging allowed);
    without it the remaining classes are renumbered in order."""
    info = dataset_info(name)
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        raise ConfigError(f"dataset {name!r} has no option(s) {unknown}; it takes {list(info.options)}")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    # repr: an option may be a list (only_classes: [0, 1, 2] in YAML), which a tuple cannot hash.
    key = (name, str(root), repr(sorted(options.items())), val_fraction, seed)
    if key not in _CACHE:
        _CACHE[key] = _load_raw(info, root, val_fraction, seed, options)
    splits = _CACHE[key]
    if ignore_classes or remap is not None:
        splits = Splits(*(_relabel(info, s, ignore_classes, remap) for s in splits))
    if transform is not None:
        splits = Splits(*(s.map(transform) for s in splits))
    return splits


def _load_raw(info: DatasetInfo, root: str | Path | None, val_fraction: float, seed: int,
              options: dict[str, Any]) -> Splits:
    source = info.factory(**options)
    have = tuple(getattr(source, "splits", ("train", "val", "test")))
    if "train" not in have or "test" not in have:
        raise ConfigError(f"dataset {info.name!r} must provide train and test splits, has {have}")
    root = Path(root) if root is not None else None
    train, test = source.load(root, "train"), source.load(root, "test")
    val = source.load(root, "val") if "val" in have else None
    for split_name, split in (("train", train), ("val", val), ("test", test)):
        if split is not None:
            _validate_classes(info, split, split_name)
    if val is None:
        train, val = train.split(val_fraction, seed)
    return Splits(train, val, test)


def _validate_classes(info: DatasetInfo, split: ImageSplit | TextSplit, split_name: str) -> None:
    if not isinstance(split, ImageSplit) or split.labels is None:
        return
    if info.classes and tuple(split.classes) != info.classes:
        raise ConfigError(f"dataset {info.name!r} {split_name} split has classes {list(split.classes)}, but "
                         f"registered order is {list(info.classes)}; fix the registration or the data")
    if len(split.labels) and (split.labels.min() < 0 or split.labels.max() >= len(split.classes)):
        raise ConfigError(f"dataset {info.name!r} {split_name} split has labels outside 0..{len(split.classes) - 1}")


def _relabel(info: DatasetInfo, split: ImageSplit | TextSplit, ignore: Sequence[str | int],
             remap: Mapping[int, int] | None) -> ImageSplit | TextSplit:
    if not isinstance(split, ImageSplit) or split.labels is None:
        raise ConfigError(f"ignore_classes/remap need a labeled dataset; {info.name!r} has no classes")
    classes = list(split.classes)
    dropped = {resolve_class(info, classes, c) for c in ignore}
    kept = [i for i in range(len(classes)) if i not in dropped]
    if remap is None:
        remap = {old: new for new, old in enumerate(kept)}
    remap = {int(k): int(v) for k, v in remap.items()}
    missing, extra = sorted(set(kept) - set(remap)), sorted(set(remap) - set(kept))
    if missing or extra:
        raise ConfigError(f"remap must map exactly the kept class indices {kept}: missing {missing}, "
                         f"unexpected {extra} (ignored classes need no entry)")
    targets = sorted(set(remap.values()))
    if targets != list(range(len(targets))):
        raise ConfigError(f"remap targets must be 0..{len(targets) - 1} without gaps, got {targets}")
    names = ["+".join(classes[o] for o in kept if remap[o] == t) for t in targets]
    keep = torch.tensor([int(label) not in dropped for label in split.labels], dtype=torch.bool)
    table = torch.full((len(classes),), -1, dtype=torch.long)
    for old, new in remap.items():
        table[old] = new
    return replace(split, images=split.images[keep], labels=table[split.labels[keep]], classes=tuple(names))


def options_at_size(name: str, options: dict[str, Any], image_size: int | None, field: str) -> dict[str, Any]:
    """``options`` for dataset ``name`` with its ``size`` option defaulting to ``image_size`` (the
    model's input side in pixels) when the dataset is an image dataset that takes ``size``; a
    different explicit size is a :class:`~edgeadapt.errors.ConfigError` naming ``field`` (e.g.
    ``data.options.size`` or ``stream[2].options.size``), both sizes and the fix."""
    options = dict(options)
    info = dataset_info(name)
    if image_size is not None and info.task == "image-classification" and "size" in info.options:
        if options.setdefault("size", image_size) != image_size:
            raise ConfigError(f"{field}: {options['size']} but the model takes {image_size}x{image_size} "
                              f"images; remove the option or set it to {image_size}")
    return options
