"""LM and sentence-encoder adaptation losses: their terms, guards and direction."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from edgeadapt.data.registry import build_dataset
from edgeadapt.errors import ConfigError
from edgeadapt.models.registry import load_adapter
from edgeadapt.online.lm_losses import (
    EncoderAdaptLossConfig,
    LMAdaptLossConfig,
    encoder_adaptation_loss,
    has_mlm_head,
    lm_adaptation_loss,
    mask_tokens,
    next_token_kl,
    next_token_loss,
    sentence_embedding,
)
from edgeadapt.online.losses import SourceStats, mmd
from edgeadapt.training.batches import batch_factory
from edgeadapt.training.config import TrainConfig
from edgeadapt.training.loop import fit
from tests.conftest import make_batches


def test_next_token_loss_is_the_models_own_causal_lm_loss_with_padding() -> None:
    lm = load_adapter("tiny-llama")
    batch = make_batches(lm, n=1)[0]  # row 0 half padding
    logits = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = lm.task.loss(lm.model, batch).item()
    assert next_token_loss(logits, batch).item() == pytest.approx(expected, rel=1e-5)


def test_distillation_is_zero_when_student_is_the_teacher_and_positive_otherwise() -> None:
    lm = load_adapter("tiny-llama")
    batch = make_batches(lm, n=1)[0]
    only_kl = LMAdaptLossConfig(next_token=0.0, replay=0.0, distill=1.0, temperature=2.0)
    same = lm_adaptation_loss(lm, None, only_kl, teacher=copy.deepcopy(lm))(lm, batch)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    other = load_adapter("tiny-llama", seed=1)
    assert lm_adaptation_loss(lm, None, only_kl, teacher=other)(lm, batch).item() > 0.01
    logits = torch.randn(2, 5, 11)
    assert next_token_kl(logits, logits.clone(), {"attention_mask": torch.ones(2, 5)}, 3.0).item() == 0.0


def test_teacher_with_another_vocabulary_is_refused() -> None:
    with pytest.raises(ConfigError, match="share the student's tokenizer"):
        next_token_kl(torch.randn(1, 4, 8), torch.randn(1, 4, 9), {}, 1.0)


def test_replay_term_is_the_next_token_loss_of_a_source_batch() -> None:
    lm = load_adapter("tiny-llama")
    target, source = make_batches(lm, n=2)
    only_replay = LMAdaptLossConfig(next_token=0.0, distill=0.0, replay=1.0)
    loss = lm_adaptation_loss(lm, [source], only_replay)(lm, target)
    assert loss.item() == pytest.approx(lm.task.loss(lm.model, source).item(), rel=1e-5)
    # no source batches and no teacher: those terms are off, the next-token term alone remains
    plain = lm_adaptation_loss(lm, None, LMAdaptLossConfig())(lm, target)
    assert plain.item() == pytest.approx(lm.task.loss(lm.model, target).item(), rel=1e-5)


def test_all_zero_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="all 0"):  # pydantic wraps the ConfigError
        LMAdaptLossConfig(next_token=0, distill=0, replay=0)
    with pytest.raises(ValueError, match="both 0"):
        EncoderAdaptLossConfig(mmd=0, mlm=0)


@pytest.mark.slow
def test_a_few_steps_lower_held_out_perplexity_on_the_domain() -> None:
    """Retrain-style: a docs-trained tiny llama, 15 steps of the LM adaptation loss (next token +
    distillation from its frozen copy + docs replay) on source code: code perplexity falls."""
    lm = load_adapter("tiny-llama")
    docs = build_dataset("stdlib-text", source="pydoc-topics")
    fit(lm, batch_factory(lm, docs.train, 16, shuffle=True, max_length=64),
        TrainConfig(epochs=2, learning_rate=3e-3, max_steps=40, log_every=1000))
    code = build_dataset("stdlib-text", source="source-code")
    held_out = list(batch_factory(lm, code.test, 16, shuffle=False, max_length=64)(0))[:6]
    before = lm.evaluate(held_out)["perplexity"]
    replay = list(batch_factory(lm, docs.train, 8, shuffle=True, max_length=64)(0))[:8]
    loss_fn = lm_adaptation_loss(lm, replay, LMAdaptLossConfig(), teacher=copy.deepcopy(lm))
    fit(lm, batch_factory(lm, code.train, 8, shuffle=True, max_length=64),
        TrainConfig(epochs=1, learning_rate=1e-3, max_steps=15, log_every=1000), loss_fn=loss_fn)
    after = lm.evaluate(held_out)["perplexity"]
    assert after < 0.9 * before, (before, after)


def _token_batches(low: int, high: int, n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(low, high, (16, 12), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def test_encoder_loss_lowers_mmd_to_the_source_bank() -> None:
    encoder = load_adapter("tiny-bert", task="encoder")
    assert not has_mlm_head(encoder.model)
    with torch.no_grad():
        bank = torch.cat([sentence_embedding(encoder.model, b) for b in _token_batches(7, 300, 4, 0)])
    stats = SourceStats(bank, bank.mean(0), bank.var(0), torch.empty(0))
    target = _token_batches(1500, 2048, 4, 1)  # other tokens: a shifted domain

    def distance() -> float:
        with torch.no_grad():
            feats = torch.cat([sentence_embedding(encoder.model, b) for b in target])
            return mmd(feats, bank, unbiased=False).item()

    before = distance()
    loss_fn = encoder_adaptation_loss(encoder, stats, EncoderAdaptLossConfig(mlm=0.0))
    opt = torch.optim.AdamW(encoder.model.parameters(), lr=3e-4)
    encoder.model.eval()  # dropout off: the embeddings the bank holds
    for step in range(30):
        opt.zero_grad()
        loss_fn(encoder, target[step % len(target)]).backward()
        opt.step()
    assert distance() < 0.5 * before


def test_bare_encoder_warns_that_the_masked_token_term_is_off() -> None:
    encoder = load_adapter("tiny-bert", task="encoder")
    bank = torch.randn(8, encoder.model.config.hidden_size)
    stats = SourceStats(bank, bank.mean(0), bank.var(0), torch.empty(0))
    with pytest.warns(UserWarning, match="no masked-LM head"):
        encoder_adaptation_loss(encoder, stats, EncoderAdaptLossConfig(mlm=1.0))
    with pytest.raises(ConfigError, match="no masked-LM head"), pytest.warns(UserWarning):
        encoder_adaptation_loss(encoder, stats, EncoderAdaptLossConfig(mmd=0.0, mlm=1.0))


def test_encoder_with_an_mlm_head_adds_the_masked_token_loss() -> None:
    from transformers import BertForMaskedLM

    tokenizer = load_adapter("tiny-bert").tokenizer
    model = BertForMaskedLM(load_adapter("tiny-bert").model.config).eval()
    assert has_mlm_head(model)
    holder = SimpleNamespace(model=model, tokenizer=tokenizer)
    batch = _token_batches(7, 2048, 1, 0)[0]
    bank = sentence_embedding(model, batch).detach()
    stats = SourceStats(bank, bank.mean(0), bank.var(0), torch.empty(0))
    only_mlm = encoder_adaptation_loss(holder, stats, EncoderAdaptLossConfig(mmd=0.0, mlm=1.0))
    loss = only_mlm(holder, batch)
    assert loss.item() > 1.0 and loss.requires_grad  # ~log(vocab) for an untrained head

    padded = {"input_ids": torch.tensor([[2, 40, 41, 42, 3, 0]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]])}
    masked, labels = mask_tokens(padded, tokenizer.mask_token_id, tokenizer.all_special_ids, 0.99,
                                 torch.Generator().manual_seed(0))
    chosen = labels[0] != -100
    assert chosen.tolist() == [False, True, True, True, False, False]  # never [CLS]/[SEP]/padding
    assert (masked["input_ids"][0][chosen] == tokenizer.mask_token_id).all()
