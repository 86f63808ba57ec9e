"""Built-in calibration batches for importance scoring, chosen by the model's modality.

Images come from the digits training split; text from the built-in documentation corpus
(train split), tokenized with the model's tokenizer. Sentence encoders get paragraph halves as
positive pairs for their contrastive loss.
"""

from __future__ import annotations

import random

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ModelAdapter

Batch = dict


def calibration_batches(adapter: ModelAdapter, num_batches: int = 8, batch_size: int = 8,
                        max_length: int = 128, seed: int = 0, split: str = "train") -> list[Batch]:
    """``num_batches`` batches of built-in data suited to ``adapter`` (seeded sample)."""
    if num_batches < 1 or batch_size < 1:
        raise ConfigError("num_batches and batch_size must be >= 1")
    rng = random.Random(seed)
    if adapter.modality == "image":
        from edgeadapt.data.digits import digits_tensors, image_batches

        size = adapter.model.config.image_size
        x, y = digits_tensors(split, size=size, seed=0)
        idx = rng.sample(range(len(x)), min(len(x), num_batches * batch_size))
        return list(image_batches(x[idx], y[idx], batch_size))
    from edgeadapt.data.text import builtin_paragraphs, text_batches

    if getattr(adapter, "tokenizer", None) is None:
        raise ConfigError(f"model {getattr(adapter, 'name', '?')!r} has no tokenizer; text calibration needs one")
    texts = builtin_paragraphs(split)
    texts = rng.sample(texts, min(len(texts), num_batches * batch_size))
    pairs = adapter.task.name == "sentence-embedding"
    return list(text_batches(adapter.tokenizer, texts, batch_size, max_length, pairs=pairs))
