"""Digit pairs: two scikit-learn digits side by side, labelled by the sum of their values mod 10.

A task built offline on which depth matters: the label ``(a + b) % 10`` combines both digits'
identities, which a linear classifier on shallow features cannot compute — a linear score is a sum
``s_k(a) + t_k(b)`` of per-digit terms, and no such sum puts its maximum on ``k = (a + b) % 10`` for
every pair. (BranchyNet-style early exits, a linear head on pooled shallow features, reach the full
network's accuracy on single digits; here they should not.)

Each image is ``[3, size, size]`` in [-1, 1] (the background is -1): the left digit in the left half,
the right digit in the right half, each resized to ``size/2 × size/2`` and centred vertically. With
``wide=True`` each digit keeps the full ``size × size`` and the image is ``[3, size, 2·size]`` (two
square digits side by side, no padding) — four times the pixels of a square pair, so a network's
compute per image grows while the task stays the same. Pairs of
train digits form the train split, pairs of val digits the val split and pairs of test digits the test
split (digits' own stratified 70/10/20 partition), so no test digit is ever seen in training; pairs
are drawn uniformly with replacement by a seeded generator per split.
"""

from __future__ import annotations

import torch

from edgeadapt.data.digits import digits_tensors
from edgeadapt.data.splits import ImageSplit, Splits
from edgeadapt.errors import ConfigError

CLASSES = tuple(str(d) for d in range(10))
DEFAULT_PAIRS = {"train": 16000, "val": 2000, "test": 4000}


def pair_images(left: torch.Tensor, right: torch.Tensor, size: int, wide: bool = False) -> torch.Tensor:
    """Two ``[N, 3, size/2, size/2]`` digit batches side by side on a ``[N, 3, size, size]`` canvas
    (background -1, the digits centred vertically); with ``wide``, two ``[N, 3, size, size]`` batches
    joined into ``[N, 3, size, 2·size]``."""
    if wide:
        return torch.cat([left, right], dim=3)
    half = size // 2
    canvas = torch.full((len(left), 3, size, size), -1.0)
    top = (size - half) // 2
    canvas[:, :, top:top + half, :half] = left
    canvas[:, :, top:top + half, half:2 * half] = right
    return canvas


def pair_split(split: str, n: int, size: int = 32, seed: int = 0,
               wide: bool = False) -> tuple[ImageSplit, torch.Tensor]:
    """``n`` pairs of digits from digits' ``split``: the images, labels ``(a + b) % 10``, and the
    ``[n, 2]`` indices into that split's digits (for checking; the split's digits are
    :func:`edgeadapt.data.digits.digits_tensors` ``(split, size // 2)``, or ``(split, size)`` with
    ``wide``).

    Raises ConfigError when ``n < 1`` or ``size`` is odd or below 16 (each digit needs at least 8×8)."""
    if n < 1:
        raise ConfigError(f"digit pairs need n >= 1, got {n}")
    if size < 16 or size % 2:
        raise ConfigError(f"digit pairs need an even size >= 16 (two 8x8 digits side by side), got {size}")
    x, y = digits_tensors(split, size=size if wide else size // 2)
    offset = {"train": 0, "val": 1, "test": 2}[split]
    gen = torch.Generator().manual_seed(seed * 3 + offset)
    idx = torch.randint(len(x), (n, 2), generator=gen)
    images = pair_images(x[idx[:, 0]], x[idx[:, 1]], size, wide)
    labels = (y[idx[:, 0]] + y[idx[:, 1]]) % 10
    return ImageSplit(images, labels, CLASSES), idx


def digit_pairs(size: int = 32, train: int = DEFAULT_PAIRS["train"], val: int = DEFAULT_PAIRS["val"],
                test: int = DEFAULT_PAIRS["test"], seed: int = 0, wide: bool = False) -> Splits:
    """Train/val/test digit-pair splits (``train``/``val``/``test`` pairs each) at ``size`` × ``size``
    (``size`` × ``2·size`` with ``wide``)."""
    counts = {"train": train, "val": val, "test": test}
    return Splits(*(pair_split(s, counts[s], size, seed, wide)[0] for s in ("train", "val", "test")))
