"""In-memory dataset splits: labeled (or unlabeled) images and text paragraphs.

Edge datasets are small enough to hold in memory, which keeps batching, corruption and seeded
splitting simple and exactly reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

from edgeadapt.errors import ConfigError


@dataclass(frozen=True)
class ImageSplit:
    """Images ``[N, C, H, W]`` (float, normalised to [-1, 1]), labels ``[N]`` or None, class names."""

    images: torch.Tensor
    labels: torch.Tensor | None
    classes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """``{"pixel_values", "labels"}`` batches; shuffling uses its own seeded generator."""
        from edgeadapt.data.digits import image_batches

        return image_batches(self.images, self.labels, batch_size, shuffle=shuffle, seed=seed)

    def map(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> ImageSplit:
        """The same samples with ``transform`` applied to the image tensor."""
        out = transform(self.images)
        if not isinstance(out, torch.Tensor) or out.shape[0] != len(self):
            raise ConfigError("transform must return an image tensor with the same number of samples")
        return replace(self, images=out)

    def unlabeled(self) -> ImageSplit:
        return replace(self, labels=None)

    def subset(self, index: torch.Tensor | list[int]) -> ImageSplit:
        index = torch.as_tensor(index, dtype=torch.long)
        return replace(self, images=self.images[index], labels=None if self.labels is None else self.labels[index])

    def split(self, fraction: float, seed: int = 0) -> tuple[ImageSplit, ImageSplit]:
        """A seeded (stratified when labeled) split into ``(1 - fraction, fraction)`` parts."""
        from sklearn.model_selection import train_test_split

        idx = list(range(len(self)))
        strat = None if self.labels is None else self.labels.numpy()
        if strat is not None:
            counts = torch.bincount(self.labels)
            counts = counts[counts > 0]
            # Stratify only when every class can appear on both sides.
            if counts.min() < 2 or round(fraction * len(self)) < len(counts):
                strat = None
        a, b = train_test_split(idx, test_size=fraction, random_state=seed, stratify=strat)
        return self.subset(sorted(a)), self.subset(sorted(b))


@dataclass(frozen=True)
class TextSplit:
    """Paragraphs (or documents) of text."""

    texts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def map(self, transform: Callable[[str], str]) -> TextSplit:
        return TextSplit(tuple(transform(t) for t in self.texts))

    def split(self, fraction: float, seed: int = 0) -> tuple[TextSplit, TextSplit]:
        """A seeded split into ``(1 - fraction, fraction)`` parts, keeping document order."""
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=g).tolist()
        cut = set(order[: max(1, round(fraction * len(self)))])
        return (TextSplit(tuple(t for i, t in enumerate(self.texts) if i not in cut)),
                TextSplit(tuple(t for i, t in enumerate(self.texts) if i in cut)))


class Splits(NamedTuple):
    """The train/val/test splits of one dataset."""

    train: ImageSplit | TextSplit
    val: ImageSplit | TextSplit
    test: ImageSplit | TextSplit
