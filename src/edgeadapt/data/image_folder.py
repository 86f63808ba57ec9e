"""Local image folders in the ImageFolder layout (``root/<class>/<image>``) as tensors.

Real drift data (a camera's own captures, ImageNet-style test sets) usually arrives as folders.
Images come back like the built-in digits: float32 ``[N, 3, S, S]`` in [-1, 1] with long labels.
Because a model's head is tied to a class order, that order is validated against the folder
rather than trusted, and ignoring or remapping classes is explicit and checked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from edgeadapt.errors import ConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")  # skips .ipynb_checkpoints, .DS_Store and the like


def scan_image_folder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """Image files, their class indices and the class names (sorted directory names) under ``root``.

    Files are found recursively inside each class directory and sorted, so the order is stable.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"image folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and _visible(d))
    if not classes:
        raise ConfigError(f"no class directories in {root} (expected root/<class>/<image>)")
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        found = sorted(f for f in (root / name).rglob("*")
                       if f.is_file() and _visible(f) and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise ConfigError(f"class {name!r} in {root} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        files += found
        labels += [index] * len(found)
    return files, labels, classes


def _check_classes(found: list[str], expected: Sequence[str]) -> None:
    if list(expected) == found:
        return
    missing = [c for c in expected if c not in found]
    unexpected = [c for c in found if c not in expected]
    if missing or unexpected:
        raise ConfigError(f"folder classes differ from `classes`: missing {missing}, unexpected {unexpected}")
    raise ConfigError(f"folder class order {found} differs from `classes` {list(expected)}")


def _class_mapping(names: list[str], ignore: Sequence[str],
                   remap: Mapping[int, int] | None) -> tuple[dict[int, int], list[str]]:
    """Old index -> new index for the kept classes, and the final class names.

    Without ``remap`` the kept classes are renumbered 0..K-1 in folder order. With it, every kept
    class must be mapped to an index in 0..K-1; several old classes may share one new index (the
    merged name joins theirs with ``|``), but every new index up to the largest must be used.
    """
    unknown = [c for c in ignore if c not in names]
    if unknown:
        raise ConfigError(f"ignore_classes {unknown} are not folder classes {names}")
    kept = [i for i, name in enumerate(names) if name not in ignore]
    if not kept:
        raise ConfigError("ignore_classes removes every class")
    if remap is None:
        return {old: new for new, old in enumerate(kept)}, [names[i] for i in kept]
    bad_keys = sorted(set(remap) - set(kept))
    unmapped = [names[i] for i in kept if i not in remap]
    if bad_keys or unmapped:
        raise ConfigError(f"remap keys must be the kept class indices {kept}: "
                         f"invalid or ignored {bad_keys}, unmapped classes {unmapped}")
    values = sorted(set(remap.values()))
    if values != list(range(len(values))):  # a gap would be a class with no name and no samples
        raise ConfigError(f"remap values must be 0..M-1 without gaps (M <= {len(kept)}); "
                         f"got {sorted(remap.values())}")
    final = ["|".join(names[old] for old in kept if remap[old] == new) for new in values]
    return {old: remap[old] for old in kept}, final


def _load_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except OSError as err:  # includes PIL's UnidentifiedImageError
        raise ConfigError(f"cannot read image {path}: {err}") from err


def load_image_folder(root: str | Path, size: int, classes: Sequence[str] | None = None,
                      ignore_classes: Sequence[str] = (), remap: Mapping[int, int] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images ``[N, 3, size, size]`` in [-1, 1], labels ``[N]`` and the final class names.

    ``classes``, if given, must equal the folder's sorted class names in order. Samples of
    ``ignore_classes`` are dropped; ``remap`` maps a folder class index (before ignoring) to its
    new index, e.g. to merge classes or to match a head trained with another order.

    >>> x, y, names = load_image_folder("shots/", 32, classes=["bird", "cat", "dog"])  # doctest: +SKIP
    """
    if size < 1:
        raise ConfigError(f"size must be >= 1, got {size}")
    files, labels, names = scan_image_folder(root)
    if classes is not None:
        _check_classes(names, classes)
    mapping, final = _class_mapping(names, ignore_classes, remap)
    chosen = [(f, mapping[label]) for f, label in zip(files, labels) if label in mapping]
    pixels = np.stack([_load_image(f, size) for f, _ in chosen])  # [N, S, S, 3] uint8
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()
    y = torch.tensor([label for _, label in chosen], dtype=torch.long)
    return x, y, final
