"""LLM evaluation: exact sliding-window perplexity, interleaved speed, peak memory."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from edgeadapt.data.tokens import corpus_ids
from edgeadapt.llm.evaluate import compare_speed, lm_batch, peak_memory, perplexity, throughput
from edgeadapt.models.registry import build_from_config, load_adapter

VOCAB = 11


class Oracle(nn.Module):
    """A perfect LM: it reads the next token from its input and puts all mass on it."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = torch.zeros(*input_ids.shape, VOCAB)
        logits[:, :-1].scatter_(-1, input_ids[:, 1:, None], 1e4)
        return logits + self.anchor


class Uniform(nn.Module):
    """Equal logits for every token of the vocabulary."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros(*input_ids.shape, VOCAB) + self.anchor


class Repeat(nn.Module):
    """The same model, run ``times`` times per forward: artificially slower."""

    def __init__(self, inner: nn.Module, times: int) -> None:
        super().__init__()
        self.inner, self.times = inner, times

    def forward(self, **inputs: torch.Tensor):
        for _ in range(self.times):
            out = self.inner(**inputs)
        return out


@pytest.fixture(scope="module")
def llama():
    return load_adapter("tiny-llama")


@pytest.fixture(scope="module")
def ids(llama):
    return torch.randint(7, llama.model.config.vocab_size, (101,), generator=torch.Generator().manual_seed(0))


def _reference(model: nn.Module, ids: torch.Tensor, max_length: int, stride: int) -> tuple[float, int]:
    """The Hugging Face guide's loop, one window at a time, with HF's own loss and an exact count."""
    nll, count, prev_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, len(ids), stride):
            end = min(begin + max_length, len(ids))
            window = ids[None, begin:end]
            labels = window.clone()
            labels[:, :-(end - prev_end)] = -100
            n = int((labels[:, 1:] != -100).sum())  # HF shifts labels by one inside the model
            if n:
                nll += model(input_ids=window, labels=labels).loss.item() * n
                count += n
            prev_end = end
            if end == len(ids):
                break
    return nll / count, count


def test_disjoint_equals_mean_nll_over_blocks(llama, ids):
    got = perplexity(llama, ids, max_length=16, batch_size=4, device="cpu")
    nll, count = _reference(llama.model, ids, 16, 16)
    # 6 full blocks of 16 and a tail of 5, each scoring all tokens but its first.
    assert got["windows"] == 7 and got["tokens"] == count == 6 * 15 + 4
    assert got["nll"] == pytest.approx(nll, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)


@pytest.mark.parametrize("stride", [1, 5, 8, 15])
def test_sliding_scores_every_token_once(llama, ids, stride):
    got = perplexity(llama.model, ids, max_length=16, stride=stride, batch_size=3, device="cpu")
    nll, count = _reference(llama.model, ids, 16, stride)
    assert got["tokens"] == count == len(ids) - 1
    assert got["nll"] == pytest.approx(nll, rel=1e-5)
    assert got["windows"] == math.ceil((len(ids) - 16) / stride) + 1


def test_batch_size_does_not_change_the_result(llama, ids):
    a = perplexity(llama, ids, max_length=16, stride=6, batch_size=1, device="cpu")
    b = perplexity(llama, ids, max_length=16, stride=6, batch_size=32, device="cpu")
    assert a["tokens"] == b["tokens"] and a["nll"] == pytest.approx(b["nll"], rel=1e-6)


def test_training_mode_is_restored(llama, ids):
    llama.model.train()
    try:
        perplexity(llama, ids[:20], max_length=8, device="cpu")
        assert llama.model.training
    finally:
        llama.model.eval()


def test_perfect_and_uniform_models():
    ids = torch.randint(0, VOCAB, (50,), generator=torch.Generator().manual_seed(1))
    assert perplexity(Oracle(), ids, max_length=8, stride=3, device="cpu")["perplexity"] == 1.0
    uniform = perplexity(Uniform(), ids, max_length=8, device="cpu")
    assert uniform["perplexity"] == pytest.approx(VOCAB, rel=1e-6)
    assert uniform["nll"] == pytest.approx(math.log(VOCAB), rel=1e-6)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"max_length": 1}, "max_length"), ({"max_length": 8, "stride": 9}, "stride"),
    ({"max_length": 8, "stride": 0}, "stride"), ({"max_length": 8, "batch_size": 0}, "batch_size"),
])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        perplexity(Uniform(), torch.arange(10) % VOCAB, device="cpu", **kwargs)


@pytest.mark.parametrize("ids", [torch.tensor([3]), torch.zeros(2, 5, dtype=torch.long)])
def test_bad_corpus_is_named(ids):
    with pytest.raises(ValueError, match="token_ids"):
        perplexity(Uniform(), ids, max_length=4, device="cpu")


def test_corpus_ids_matches_both_tokenizer_kinds(llama):
    texts = ["The quick brown fox.", "Jumps over the lazy dog."]
    got = corpus_ids(llama.tokenizer, texts)
    assert got.dtype == torch.long and got.dim() == 1
    assert got.tolist() == llama.tokenizer("The quick brown fox.\n\nJumps over the lazy dog.")["input_ids"]
    assert corpus_ids(llama.tokenizer.backend_tokenizer, texts).tolist() == got.tolist()
    with pytest.raises(TypeError):
        corpus_ids(llama.tokenizer, "one string")


def test_lm_batch_takes_the_first_blocks(ids):
    batch = lm_batch(ids, 3, 10)
    assert batch["input_ids"].tolist() == ids[:30].view(3, 10).tolist()
    assert torch.equal(batch["labels"], batch["input_ids"]) and bool(batch["attention_mask"].all())
    with pytest.raises(ValueError, match="token_ids"):
        lm_batch(ids, 11, 10)


def test_throughput_train_leaves_the_model_unchanged(llama, ids):
    before = {k: v.clone() for k, v in llama.model.state_dict().items()}
    for mode in ("inference", "train"):
        got = throughput(llama, lm_batch(ids, 2, 16), mode, repeats=2, warmup=1, device="cpu")
        assert got["tokens_per_s"] > 0 and len(got["seconds"]) == 2 and got["tokens"] == 32
    assert all(torch.equal(before[k], v) for k, v in llama.model.state_dict().items())
    assert not llama.model.training
    with pytest.raises(ValueError, match="mode"):
        throughput(llama, lm_batch(ids, 2, 16), "backward", device="cpu")


def test_compare_speed_ratio(llama, ids):
    models = {"dense": llama, "slow": Repeat(llama.model, 3)}
    got = compare_speed(models, lm_batch(ids, 4, 24), "inference", repeats=7, warmup=1, device="cpu")
    assert list(got) == ["dense", "slow"]
    assert got["dense"]["ratio"] == 1.0
    assert got["slow"]["ratio"] < 1.0 and len(got["slow"]["seconds"]) == 7


def test_peak_memory_train_above_inference_and_shrinks_with_ffn(llama, ids):
    batch = lm_batch(ids, 2, 16)
    before = {k: v.clone() for k, v in llama.model.state_dict().items()}
    train = peak_memory(llama, batch, "train", device="cpu")
    assert train > peak_memory(llama, batch, "inference", device="cpu")
    assert all(torch.equal(before[k], v) for k, v in llama.model.state_dict().items())
    config = copy.deepcopy(llama.model.config)
    config.intermediate_size //= 2
    narrow = build_from_config(config, "causal-lm")
    assert peak_memory(narrow, batch, "train", device="cpu") < train
