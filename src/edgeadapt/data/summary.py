"""Human-readable summaries of datasets and drift streams (what `edgeadapt data show` prints)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from edgeadapt.data.splits import ImageSplit, TextSplit
from edgeadapt.data.stream import Domain


def summarize_dataset(name: str, root: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Task, classes, split sizes, sample shape and per-class counts of a registered dataset."""
    from edgeadapt.data.registry import build_dataset, dataset_info

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
