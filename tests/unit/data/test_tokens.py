"""One token-block batcher: `edgeadapt train` (causal LMs), llm-prune calibration/recovery and the
speed/memory probe batch all cut the corpus with :func:`edgeadapt.data.tokens.token_blocks`."""

from __future__ import annotations

import pytest
import torch

from edgeadapt.data.splits import TextSplit
from edgeadapt.data.text import builtin_paragraphs
from edgeadapt.data.tokens import corpus_ids, token_blocks
from edgeadapt.llm.evaluate import lm_batch
from edgeadapt.models.registry import load_adapter
from edgeadapt.training.batches import batch_factory


@pytest.fixture(scope="module")
def llama():
    return load_adapter("tiny-llama")


def test_token_blocks_cut_disjoint_blocks_and_shuffle_per_epoch():
    ids = torch.arange(100)
    plain = list(token_blocks(ids, 10, 4)(0))
    assert [len(b["input_ids"]) for b in plain] == [4, 4, 2]  # 10 blocks, no tail
    assert plain[0]["input_ids"][1].tolist() == list(range(10, 20))
    assert all(torch.equal(b["labels"], b["input_ids"]) and b["attention_mask"].all() for b in plain)
    shuffled = token_blocks(ids, 10, 4, shuffle=True, seed=1)
    first, again, other = (torch.cat([b["input_ids"] for b in shuffled(e)]) for e in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert sorted(first[:, 0].tolist()) == list(range(0, 100, 10))
    assert len(list(token_blocks(ids, 10, 4, max_blocks=3)(0))[0]["input_ids"]) == 3
    with pytest.raises(ValueError, match="seq_len"):
        token_blocks(ids[:5], 10, 4)


def test_train_recipe_batches_a_causal_lm_with_the_same_batcher(llama):
    texts = builtin_paragraphs("val")[:40]
    got = list(batch_factory(llama, TextSplit(tuple(texts)), 4, shuffle=True, seed=7, max_length=32)(2))
    want = list(token_blocks(corpus_ids(llama.tokenizer, texts), 32, 4, shuffle=True, seed=7)(2))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_probe_batch_is_the_first_batch_of_the_batcher(llama):
    ids = corpus_ids(llama.tokenizer, builtin_paragraphs("val")[:40])
    first = next(iter(token_blocks(ids, 16, 3)(0)))
    batch = lm_batch(ids, 3, 16)
    assert all(torch.equal(batch[k], first[k]) for k in first)
