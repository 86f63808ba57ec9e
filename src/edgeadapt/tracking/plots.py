"""Training curves as a PNG, one panel per metric family (losses, accuracies, learning rate).

Uses matplotlib's object-oriented ``Figure`` without ``pyplot``: no global figure state and no
backend switch, so plotting from a library call or a worker thread does not disturb a user's
interactive session. The PNG is rendered in memory and written atomically.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeadapt.artifacts import atomic_write_bytes
from edgeadapt.errors import ConfigError

Curves = Mapping[str, Sequence[tuple[int, float]]]


def metric_family(name: str) -> str:
    """The panel a metric goes in: ``"loss"``, ``"accuracy"``, ``"lr"``, or the name itself.

    Matching is on name tokens (split at ``/``, ``_``, ``.`` ...) so ``"grad_accum"`` is not
    an accuracy and ``"url_hits"`` is not a learning rate.
    """
    tokens = [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]
    if any("loss" in t for t in tokens):
        return "loss"
    if any(re.fullmatch(r"(top\d+)?acc(uracy)?\d*", t) for t in tokens):
        return "accuracy"
    if "lr" in tokens or "learning_rate" in name.lower():
        return "lr"
    return name


def _group(names: Sequence[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {"loss": [], "accuracy": [], "lr": []}
    for name in names:
        groups.setdefault(metric_family(name), []).append(name)
    return {family: members for family, members in groups.items() if members}


def plot_curves(
    metrics: Curves | str | Path,
    path: str | Path,
    keys: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Plot ``metrics`` (``{name: [(step, value)]}``, or a ``metrics.csv`` / run directory) to ``path``.

    ``keys`` selects metrics (default: all). Returns the written path.
    """
    from matplotlib.figure import Figure  # heavy: imported only when plotting

    if isinstance(metrics, (str, Path)):
        from edgeadapt.tracking.csv_logger import read_metrics

        metrics = read_metrics(metrics)
    names = list(keys) if keys is not None else list(metrics)
    missing = [k for k in names if k not in metrics]
    if missing:
        raise ConfigError(f"no metric(s) {missing} to plot; available: {sorted(metrics)}")
    if not names:
        raise ConfigError("no metrics to plot")
    groups = _group(names)
    ncols = 1 if len(groups) == 1 else 2
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(6 * ncols, 3.5 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (family, members) in zip(axes, groups.items()):
        for name in members:
            points = sorted(metrics[name])
            marker = "." if len(points) < 30 else None  # sparse curves (eval every N) need visible points
            ax.plot([s for s, _ in points], [v for _, v in points], label=name, marker=marker)
        values = [v for name in members for _, v in metrics[name]]
        # Learning-rate schedules span decades (warm-up, decay); a log axis shows their shape.
        if family == "lr" and values and min(values) > 0 and max(values) / min(values) > 100:
            ax.set_yscale("log")
        ax.set_title(family)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(members) > 1 or family != members[0]:
            ax.legend(fontsize="small")
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=100)


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Render a matplotlib figure to PNG and write it atomically (no half-written plots)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
