"""Sample grids of corrupted images, to eyeball what each corruption and severity looks like.

A picture catches what accuracy tables hide — a "blur" that shifts the digit, fog that is pure
white, noise that only lands on the background — so calibrating a corruption starts here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from edgeadapt.data.corruptions import CORRUPTIONS, SEVERITIES, check_corruption, corrupt, resize_images
from edgeadapt.errors import ConfigError


def _to_display(images: torch.Tensor) -> np.ndarray:
    """``[N, C, H, W]`` in [-1, 1] → one ``[H, N*W, C]`` strip (``[H, N*W]`` if grey-1) in [0, 1]."""
    x = ((torch.cat(list(images), dim=-1).detach().float().cpu() + 1) / 2).clamp(0, 1).permute(1, 2, 0)
    return (x[..., 0] if x.shape[-1] == 1 else x).numpy()


def corruption_grid(images: torch.Tensor, path: str | Path, corruptions: Sequence[str] | None = None,
                    severities: Sequence[int] = SEVERITIES, seed: int = 0, n_images: int = 1,
                    size: int | None = None) -> Path:
    """Write a PNG grid: a 'clean' row, then one row per corruption, one column per severity.

    Each cell shows the first ``n_images`` images side by side. CIFAR-10-C's parameters are for
    32×32 images, so pass 32×32 images; with ``size`` every cell (clean too) is shown resized to
    ``size``×``size`` after corrupting — what ``digits-c`` at that size holds. The file is written
    atomically (temporary file + ``os.replace``) so a reader never sees half a PNG. Returns ``path``.
    Example: ``corruption_grid(digits_tensors("test", size=32)[0], "runs/preview/c.png", size=16)``.
    """
    # The Figure API draws with Agg without touching pyplot's global backend or figure registry.
    from matplotlib.figure import Figure

    names = list(CORRUPTIONS if corruptions is None else corruptions)
    for name in names:
        for severity in severities:
            check_corruption(name, severity)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0:
        raise ConfigError("images must be a non-empty tensor [N, C, H, W] in [-1, 1]")
    if n_images < 1:
        raise ConfigError(f"n_images must be >= 1, got {n_images}")
    batch = images[:n_images]

    rows, cols = len(names) + 1, len(severities)
    fig = Figure(figsize=(1.2 * cols * len(batch), 1.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    clean = batch if size is None else resize_images(batch, size)
    axes[0][0].imshow(_to_display(clean), cmap="gray", vmin=0, vmax=1)
    axes[0][0].set_ylabel("clean", rotation=0, ha="right", va="center", fontsize=8)
    for c, severity in enumerate(severities):
        axes[0][c].set_title(f"severity {severity}", fontsize=8)
    for r, name in enumerate(names, start=1):
        axes[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        for c, severity in enumerate(severities):
            shown = _to_display(corrupt(batch, name, severity, seed=seed, size=size))
            axes[r][c].imshow(shown, cmap="gray", vmin=0, vmax=1)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
