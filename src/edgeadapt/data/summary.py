"""Human-readable summaries of datasets and drift streams (what `edgeadapt data show` prints)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from edgeadapt.data.splits import ImageSplit, TextSplit
from edgeadapt.data.stream import Domain
from edgeadapt.errors import ConfigError

# Image sides `data show` builds: the digits are 8x8 originals, and 256x256 already holds every
# split (~1800 images x 3 x 256^2 floats, 1.4 GB); beyond that a summary allocates tens of GB.
IMAGE_SIZES = (8, 256)


def check_image_size(size: Any, field: str = "size") -> int:
    """``size`` as an int in :data:`IMAGE_SIZES`, else :class:`~edgeadapt.errors.ConfigError`
    naming ``field`` and the range."""
    low, high = IMAGE_SIZES
    if isinstance(size, bool) or not isinstance(size, int):
        raise ConfigError(f"{field}: {size!r} is not an image side in pixels; give a whole number from "
                          f"{low} to {high}")
    if not low <= size <= high:
        raise ConfigError(f"{field}: {size} pixels is outside {low}..{high} (the digits are 8x8 originals; "
                          f"larger sides only allocate memory); give a size from {low} to {high}")
    return size


def summarize_dataset(name: str, root: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Task, classes, split sizes, sample shape and per-class counts of a registered dataset.
    An image ``size`` option outside :data:`IMAGE_SIZES` is refused before anything is built."""
    from edgeadapt.data.registry import build_dataset, dataset_info

    if "size" in options:
        check_image_size(options["size"])
    info = dataset_info(name)
    splits = build_dataset(name, root=root, **options)
    out: dict[str, Any] = {"name": name, "task": info.task, "description": info.description,
                           "options": list(info.options), "splits": {}}
    for split_name, split in zip(("train", "val", "test"), splits):
        row: dict[str, Any] = {"size": len(split)}
        if isinstance(split, ImageSplit):
            row["shape"] = list(split.images.shape[1:])
            out["classes"] = list(split.classes)
            if split.labels is not None:
                row["per_class"] = torch.bincount(split.labels, minlength=len(split.classes)).tolist()
        elif isinstance(split, TextSplit):
            row["characters"] = sum(len(t) for t in split.texts)
        out["splits"][split_name] = row
    return out


def summarize_stream(domains: Sequence[Domain], size: int = 16, seed: int = 0) -> dict[str, Any]:
    """Per domain: split sizes and how far the corruption moves pixels from the clean images."""
    from edgeadapt.data.digits import digits_tensors
    from edgeadapt.data.stream import stream_data

    check_image_size(size)
    clean, _ = digits_tensors("test", size=size)
    rows = []
    for d in stream_data(domains, size=size, seed=seed):
        shift = (d.test.images - clean).abs().mean().item()
        rows.append({"domain": str(d.domain), "adapt": len(d.adapt), "test": len(d.test), "pixel_shift": round(shift, 4)})
    return {"domains": rows}


def format_dataset_summary(s: dict[str, Any]) -> str:
    lines = [f"{s['name']}: {s['task']} — {s['description']}"]
    if s.get("options"):
        lines.append(f"options: {', '.join(s['options'])}")
    if "classes" in s:
        lines.append(f"classes ({len(s['classes'])}): {', '.join(s['classes'])}")
    for split, row in s["splits"].items():
        extra = f" shape {tuple(row['shape'])}" if "shape" in row else f" {row.get('characters', 0):,} chars"
        counts = f" per class {row['per_class']}" if "per_class" in row else ""
        lines.append(f"  {split:<5} {row['size']:>6} samples{extra}{counts}")
    return "\n".join(lines)


def format_stream_summary(s: dict[str, Any]) -> str:
    lines = [f"{'#':>2}  {'domain':<22} {'adapt':>6} {'test':>6} {'pixel shift':>12}"]
    for i, row in enumerate(s["domains"], 1):
        lines.append(f"{i:>2}  {row['domain']:<22} {row['adapt']:>6} {row['test']:>6} {row['pixel_shift']:>12.4f}")
    return "\n".join(lines)
