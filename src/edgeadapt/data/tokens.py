"""A text corpus as one stream of token ids, cut into fixed-length blocks: the one token-block
batcher that language-model training (``edgeadapt train``), LLM pruning calibration and recovery
(``edgeadapt llm-prune``) and speed/memory probes (:func:`edgeadapt.llm.evaluate.lm_batch`) share.

Example::

    ids = corpus_ids(tokenizer, texts)                        # [n_tokens]
    batches = token_blocks(ids, seq_len=128, batch_size=8, shuffle=True, seed=0)
    for batch in batches(epoch):                               # {"input_ids", "attention_mask", "labels"}
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from edgeadapt.errors import ConfigError

Batch = dict[str, torch.Tensor]


def corpus_ids(tokenizer: Any, texts: Sequence[str], separator: str = "\n\n") -> torch.Tensor:
    """The whole corpus as one 1-D tensor of token ids: ``texts`` joined with ``separator`` and
    tokenized once (the WikiText recipe), by a ``transformers`` tokenizer or a
    ``tokenizers.Tokenizer``."""
    if isinstance(texts, str):  # joining a bare string would interleave its characters
        raise TypeError("texts must be a sequence of strings, not a single string")
    from tokenizers import Tokenizer

    joined = separator.join(texts)
    ids = tokenizer.encode(joined).ids if isinstance(tokenizer, Tokenizer) \
        else tokenizer(joined, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def token_blocks(ids: torch.Tensor, seq_len: int, batch_size: int, shuffle: bool = False, seed: int = 0,
                 max_blocks: int | None = None) -> Callable[[int], Iterator[Batch]]:
    """Per-epoch batches of the disjoint ``seq_len`` blocks of the 1-D corpus ``ids`` (a partial
    tail is dropped; at most ``max_blocks`` blocks, the first ones).

    ``batches(epoch)`` yields ``{"input_ids", "attention_mask", "labels"}``, each ``[b, seq_len]``
    with ``b <= batch_size`` (labels equal the inputs: the causal-LM loss shifts them). With
    ``shuffle`` the block order is a permutation seeded by ``seed + epoch`` (its own generator;
    the process-wide RNG is untouched). Raises :class:`ConfigError` when the corpus is shorter than
    one block or a size is not positive."""
    if ids.dim() != 1:
        raise ConfigError(f"ids must be a 1-D corpus of token ids, got shape {tuple(ids.shape)}")
    if seq_len < 1 or batch_size < 1 or (max_blocks is not None and max_blocks < 1):
        raise ConfigError(f"seq_len, batch_size and max_blocks must be >= 1, got {seq_len}, {batch_size}, "
                          f"{max_blocks}")
    if len(ids) < seq_len:
        raise ConfigError(f"seq_len: the text has {len(ids)} tokens, fewer than one block of "
                          f"seq_len={seq_len} (each split a model trains or evaluates on — train, val, test "
                          "— needs at least one); lower seq_len (data.max_length) or give more text to the "
                          "short split")
    blocks = ids[: len(ids) // seq_len * seq_len].view(-1, seq_len)[:max_blocks]

    def batches(epoch: int) -> Iterator[Batch]:
        g = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(len(blocks), generator=g) if shuffle else torch.arange(len(blocks))
        for start in range(0, len(blocks), batch_size):
            x = blocks[order[start:start + batch_size]]
            yield {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}
    return batches
