"""Per-epoch batch factories for a dataset split, suited to the model's task.

What :func:`~edgeadapt.training.loop.fit` consumes: ``batches(epoch)`` yields that epoch's batches,
shuffled by ``seed + epoch`` with its own generator (the process-wide RNG is untouched).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from edgeadapt.data.splits import ImageSplit, TextSplit
from edgeadapt.data.text import text_batches
from edgeadapt.data.tokens import corpus_ids, token_blocks
from edgeadapt.models.adapter import ModelAdapter

Batch = dict[str, torch.Tensor]


def _order(n: int, shuffle: bool, seed: int) -> torch.Tensor:
    """A seeded permutation of ``range(n)``, or the identity."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)


def batch_factory(adapter: ModelAdapter, split: ImageSplit | TextSplit, batch_size: int, shuffle: bool,
                  seed: int = 0, max_length: int = 128) -> Callable[[int], Iterable[Batch]]:
    """A per-epoch batch factory for ``split``: image batches for an image split; for text,
    contrastive paragraph pairs (``pair_input_ids``, each side at most ``max_length`` tokens) for
    a sentence encoder, else fixed-length blocks of ``max_length`` tokens of the joined corpus
    (causal LMs), tokenized by ``adapter.tokenizer``.

    >>> train = batch_factory(adapter, splits.train, 64, shuffle=True, seed=0)  # doctest: +SKIP
    >>> fit(adapter, train, TrainConfig(epochs=3))                              # doctest: +SKIP
    """
    if isinstance(split, ImageSplit):
        return lambda epoch: split.batches(batch_size, shuffle=shuffle, seed=seed + epoch)
    texts = list(split.texts)
    if adapter.task.name == "sentence-embedding":
        def sentence(epoch: int) -> Iterable[Batch]:
            chosen = [texts[i] for i in _order(len(texts), shuffle, seed + epoch)]
            return text_batches(adapter.tokenizer, chosen, batch_size, max_length, pairs=True)
        return sentence
    return token_blocks(corpus_ids(adapter.tokenizer, texts), max_length, batch_size, shuffle, seed)
