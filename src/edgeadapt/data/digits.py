"""scikit-learn's handwritten digits as small 3-channel images (offline, 1,797 samples).

The 8×8 originals are upsampled bilinearly to ``size`` × ``size`` and normalised to [-1, 1].
Train/val/test splits are stratified and seeded, so every run sees the same partition.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from edgeadapt.errors import ConfigError

SPLITS = ("train", "val", "test")


def digits_tensors(split: str = "train", size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N, 3, size, size]`` in [-1, 1] and labels ``[N]`` for one split (70/10/20%)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    if size < 8:
        raise ConfigError(f"size must be >= 8 (the source images are 8x8), got {size}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    idx = list(range(len(data.target)))
    train_val, test = train_test_split(idx, test_size=0.2, random_state=seed, stratify=data.target)
    train, val = train_test_split(train_val, test_size=0.125, random_state=seed,
                                  stratify=data.target[train_val])
    chosen = {"train": train, "val": val, "test": test}[split]
    x = torch.tensor(data.images[chosen], dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x * 2 - 1).repeat(1, 3, 1, 1)
    return x, torch.tensor(data.target[chosen], dtype=torch.long)


def image_batches(x: torch.Tensor, y: torch.Tensor | None, batch_size: int, shuffle: bool = False,
                  seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Batches ``{"pixel_values", "labels"}``; shuffling uses its own seeded generator."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)) if shuffle \
        else torch.arange(len(x))
    for start in range(0, len(x), batch_size):
        sel = order[start:start + batch_size]
        batch = {"pixel_values": x[sel]}
        if y is not None:
            batch["labels"] = y[sel]
        yield batch
