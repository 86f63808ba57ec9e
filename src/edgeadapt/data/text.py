"""The built-in text corpus (Python's bundled documentation, ``pydoc_data``) and tokenization.

The corpus ships with every CPython, so text models can be calibrated, trained and evaluated
offline. Splits are deterministic: documentation topics are assigned to train/val/test by a hash
of their name, so no paragraph leaks between splits.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from edgeadapt.errors import ConfigError
from edgeadapt.paths import cache_dir

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"]


def _split_of(topic: str) -> str:
    bucket = int(hashlib.sha256(topic.encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def builtin_paragraphs(split: str = "train", min_chars: int = 80) -> list[str]:
    """Paragraphs of the bundled Python documentation for ``split`` (train/val/test/all)."""
    if split not in ("train", "val", "test", "all"):
        raise ConfigError(f"split must be one of train/val/test/all, got {split!r}")
    from pydoc_data.topics import topics

    paragraphs: list[str] = []
    seen: set[str] = set()
    for name in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[name]):
            text = " ".join(para.split())
            # Topics repeat some paragraphs; each belongs to the split of its first topic only,
            # so no text leaks between train and test.
            if len(text) < min_chars or text in seen:
                continue
            seen.add(text)
            if split == "all" or _split_of(name) == split:
                paragraphs.append(text)
    return paragraphs


def bpe_tokenizer(vocab_size: int = 2048, corpus: Sequence[str] | None = None) -> Any:
    """A byte-level BPE tokenizer trained on ``corpus`` (default: the built-in corpus's train
    split), cached by vocabulary size and corpus hash.

    Returned as a ``transformers.PreTrainedTokenizerFast`` with pad/unk/cls/sep/mask/bos/eos set.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if corpus is None:
        path = cache_dir("tokenizers") / f"pydoc-bpe-{vocab_size}.json"
    else:
        digest = hashlib.sha256("\x00".join(corpus).encode()).hexdigest()[:16]
        path = cache_dir("tokenizers") / f"bpe-{vocab_size}-{digest}.json"
    if path.exists():
        tok = Tokenizer.from_file(str(path))
    else:
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(builtin_paragraphs("train") if corpus is None else corpus, trainer=trainer)
        tmp = path.with_suffix(".tmp")
        tok.save(str(tmp))
        tmp.replace(path)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", bos_token="<s>", eos_token="</s>",
    )


def text_batches(tokenizer: Any, texts: list[str], batch_size: int, max_length: int,
                 pairs: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Tokenized, padded batches. With ``pairs=True`` each paragraph is split in two halves and
    the second half is returned as ``pair_input_ids``/``pair_attention_mask`` (a positive view for
    contrastive losses)."""
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        if pairs:
            halves = [t.split() for t in chunk]
            first = [" ".join(w[: len(w) // 2]) for w in halves]
            second = [" ".join(w[len(w) // 2:]) for w in halves]
            a = tokenizer(first, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            b = tokenizer(second, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            batch = {k: v for k, v in a.items() if k in ("input_ids", "attention_mask")}
            batch.update({f"pair_{k}": v for k, v in b.items() if k in ("input_ids", "attention_mask")})
        else:
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        yield batch
