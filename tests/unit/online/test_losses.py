"""Adaptation losses: each term measures what it claims (MMD grows with shift, entropy/diversity
extremes, confidence filtering), the combined loss reaches the model and includes replay, the
trainable selection is exact, stats round-trip through safetensors, and a short adaptation of the
source ViT on low contrast helps without collapsing."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from edgeadapt.errors import ConfigError
from edgeadapt.models.registry import load_adapter
from edgeadapt.online.losses import (
    AdaptLossConfig,
    SourceStats,
    adaptation_loss,
    confident_distillation,
    diversity,
    domain_gate,
    entropy,
    mmd,
    norm_parameters,
    pseudo_label_loss,
    set_trainable,
    source_stats,
    tent_loss,
)
from tests.conftest import make_batches


@pytest.fixture(scope="module")
def vit():
    return load_adapter("tiny-vit", seed=0)


def test_mmd_is_zero_for_one_distribution_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 8, generator=g), torch.randn(128, 8, generator=g)
    assert abs(mmd(x, y).item()) < 0.01
    values = [mmd(x, y + shift).item() for shift in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert values[-1] > 0.3
    assert mmd(x, y, unbiased=False).item() >= 0
    assert mmd(x, y + 1, bandwidths=[8.0]).item() > mmd(x, y + 0.5, bandwidths=[8.0]).item()
    with pytest.raises(ValueError, match="2 samples"):
        mmd(x[:1], y)


def test_entropy_is_max_for_uniform_and_min_for_one_hot():
    uniform, one_hot = torch.zeros(4, 10), torch.full((4, 10), -1e4)
    one_hot[:, 3] = 1e4
    assert entropy(uniform).item() == pytest.approx(math.log(10), rel=1e-5)
    assert entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    mixed = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    assert 0 < entropy(mixed).item() < math.log(10)


def test_diversity_penalises_a_collapsed_batch():
    confident = torch.full((10, 10), -10.0)
    balanced = confident.clone()
    balanced[torch.arange(10), torch.arange(10)] = 10.0   # each sample a different class
    collapsed = confident.clone()
    collapsed[:, 0] = 10.0                                 # every sample class 0
    assert diversity(balanced).item() == pytest.approx(0.0, abs=1e-4)
    assert diversity(collapsed).item() == pytest.approx(math.log(10), rel=1e-3)
    prior = torch.tensor([0.5, 0.5] + [0.0] * 8)
    half = confident.clone()
    half[:5, 0], half[5:, 1] = 10.0, 10.0
    assert diversity(half, prior).item() < diversity(balanced, prior).item()


def test_pseudo_labels_ignore_unconfident_samples():
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.1, 0.0, 0.0]], requires_grad=True)
    expected = F.cross_entropy(logits[:1], torch.tensor([0])).item()
    assert pseudo_label_loss(logits, 0.9).item() == pytest.approx(expected)
    none = pseudo_label_loss(logits, 0.99999999)
    assert none.item() == 0.0
    none.backward()  # still a graph: a loss made only of this term does not crash
    loss = pseudo_label_loss(logits, 0.9)
    logits.grad = None
    loss.backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0


class _Teacher:
    """A stand-in FM with fixed logits (tracks its train/eval mode)."""

    def __init__(self, logits: torch.Tensor):
        self.model = torch.nn.Linear(1, 1)
        self.model.train()
        self.out = logits
        self.modes: list[bool] = []

    def logits(self, batch):
        self.modes.append(self.model.training)
        return self.out


def test_confident_distillation_uses_only_the_samples_the_teacher_is_sure_of():
    teacher = _Teacher(torch.tensor([[9.0, 0.0, 0.0], [0.2, 0.1, 0.0]]))  # sure of sample 0 only
    student = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 5.0]], requires_grad=True)
    loss = confident_distillation(student, teacher, {}, threshold=0.9)
    target = F.softmax(teacher.out[:1], -1)
    expected = F.kl_div(F.log_softmax(student[:1], -1), target, reduction="batchmean")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert student.grad[1].abs().sum() == 0 and student.grad[0].abs().sum() > 0
    assert teacher.modes == [False] and teacher.model.training  # evaluated in eval mode, then restored
    nobody = confident_distillation(student, teacher, {}, threshold=0.9999999)
    assert nobody.item() == 0.0 and nobody.requires_grad


def test_the_domain_gate_trusts_a_teacher_whose_predictions_follow_the_prior_not_a_collapsed_one():
    prior = torch.full((4,), 0.25)
    diverse = F.one_hot(torch.arange(64) % 4, 4).float() * 0.9 + 0.025  # confident, all classes
    collapsed = F.one_hot(torch.zeros(64, dtype=torch.long), 4).float() * 0.9 + 0.025  # one class
    state = {"sum": None, "n": 0}
    assert domain_gate(diverse, prior, state, 0.05) == pytest.approx(1.0)
    assert state["n"] == 64  # it accumulates over the domain's batches
    assert domain_gate(collapsed, prior, {"sum": None, "n": 0}, 0.05) < 1e-6
    # half-collapsed over two batches: the running mean, not the last batch, decides
    two = {"sum": None, "n": 0}
    domain_gate(diverse, prior, two, 0.05)
    assert 1e-6 < domain_gate(collapsed, prior, two, 0.5) < 1.0
    assert domain_gate(collapsed, prior, {"sum": None, "n": 0}, 0.0) == 1.0  # gate off
    assert domain_gate(collapsed, torch.empty(0), {"sum": None, "n": 0}, 0.05) == 1.0  # no prior kept


def test_the_distillation_term_needs_a_teacher_and_pulls_towards_it(vit):
    stats = _stats(vit, replay_size=0)
    batch = make_batches(vit, n=1, size=8)[0]
    del batch["labels"]
    with pytest.raises(ConfigError, match="loss.distill"):
        adaptation_loss(vit, stats, AdaptLossConfig(distill=1.0))
    cfg = AdaptLossConfig(mmd=0.0, diversity=0.0, replay=0.0, distill=1.0, distill_threshold=0.01,
                          distill_gate=0.0)
    with torch.no_grad():
        same = adaptation_loss(vit, stats, cfg, teacher=vit)(vit, batch)
        assert same.item() == pytest.approx(0.0, abs=1e-6)
        other = copy.deepcopy(vit)
        other.model.classifier.weight.add_(torch.randn_like(other.model.classifier.weight))
        assert adaptation_loss(vit, stats, cfg, teacher=other)(vit, batch).item() > 1e-3


def _stats(vit, replay_size: int) -> SourceStats:
    return source_stats(vit, make_batches(vit, n=3, size=8), bank_size=16, replay_size=replay_size)


def test_adaptation_loss_reaches_the_model_and_includes_replay(vit):
    stats = _stats(vit, replay_size=6)
    assert stats.features.shape == (16, 64) and stats.replay["pixel_values"].shape[0] == 6
    assert stats.class_prior.sum().item() == pytest.approx(1.0)
    batch = make_batches(vit, n=1, size=8)[0]
    del batch["labels"]
    vit.model.zero_grad()
    loss = adaptation_loss(vit, stats)(vit, batch)
    loss.backward()
    grads = [p.grad for p in vit.model.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    with torch.no_grad():
        cfg = dict(replay_batch=64)
        with_replay = adaptation_loss(vit, stats, AdaptLossConfig(**cfg))(vit, batch)
        without = adaptation_loss(vit, stats, AdaptLossConfig(**cfg, replay=0.0))(vit, batch)
        replay_logits = vit.model(pixel_values=stats.replay["pixel_values"]).logits
        ce = F.cross_entropy(replay_logits, stats.replay["labels"])
    assert (with_replay - without).item() == pytest.approx(ce.item(), rel=1e-4)


def test_supervised_and_tent_losses(vit):
    stats = _stats(vit, replay_size=0)
    assert stats.replay is None
    batch = make_batches(vit, n=1, size=8)[0]
    with torch.no_grad():
        sup = adaptation_loss(vit, stats, AdaptLossConfig(supervised=True))(vit, batch)
        assert sup.item() == pytest.approx(vit.task_loss(batch).item(), rel=1e-5)
        logits = vit.model(pixel_values=batch["pixel_values"]).logits
        assert tent_loss(vit)(vit, batch).item() == pytest.approx(entropy(logits).item())
    with pytest.raises(ValidationError, match="every weight is 0"):
        AdaptLossConfig(mmd=0, diversity=0, replay=0, distill=0)
    with pytest.raises(ValidationError):
        AdaptLossConfig(mmd_weight=1.0)


def test_set_trainable_selects_exactly(vit):
    adapter = copy.deepcopy(vit)
    layer_norms = {f"{m}.{p}" for m, mod in adapter.model.named_modules()
                   if isinstance(mod, torch.nn.LayerNorm) for p in ("weight", "bias")}
    assert len(layer_norms) == 18 and set(norm_parameters(adapter)) == layer_norms
    n = set_trainable(adapter, "norm")
    assert {k for k, p in adapter.model.named_parameters() if p.requires_grad} == layer_norms
    assert n == 18 * 64
    assert set_trainable(adapter, "norm+head") == n + 64 * 10 + 10
    assert set_trainable(adapter, "attention") == 4 * 4 * (64 * 64 + 64)
    assert set_trainable(adapter, "mlp") == 4 * (64 * 128 + 128 + 128 * 64 + 64)
    assert set_trainable(adapter, ["classifier", "vit.layernorm.weight"]) == 64 * 10 + 10 + 64
    assert set_trainable(adapter, "all") == sum(p.numel() for p in adapter.model.parameters())
    for bad in ("everything", ["vit.nowhere"]):
        with pytest.raises(ValueError, match="trainable"):
            set_trainable(adapter, bad)


def test_source_stats_round_trip(vit, tmp_path):
    stats = _stats(vit, replay_size=4)
    again = SourceStats.load(stats.save(tmp_path / "stats" / "source.safetensors"))
    for key, value in stats.to_dict().items():
        assert torch.equal(again.to_dict()[key], value), key
    assert set(again.replay) == {"pixel_values", "labels"}
    (tmp_path / "other.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ValueError, match="source-stats"):
        SourceStats.load(tmp_path / "other.safetensors")


@pytest.mark.slow
def test_short_adaptation_on_severe_contrast_helps_without_collapse(source_vit_dir):
    from edgeadapt.data.registry import build_dataset
    from edgeadapt.data.stream import stream_data
    from edgeadapt.pruning.checkpoint import load_pruned
    from edgeadapt.training.config import TrainConfig
    from edgeadapt.training.loop import fit

    fm = load_pruned(source_vit_dir)  # the session's trained source ViT, never a leftover in runs/
    stats = source_stats(fm, build_dataset("digits", size=16).train.batches(256))
    domain = stream_data("contrast:5")[0]  # source ~0.28 under the CIFAR-10-C table

    def predictions() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([fm.model(pixel_values=b["pixel_values"]).logits.argmax(-1)
                              for b in domain.test.batches(360)])

    before = (predictions() == domain.test.labels).float().mean().item()
    set_trainable(fm, "all")
    fit(fm, lambda e: domain.adapt.batches(64, shuffle=True, seed=e),
        TrainConfig(epochs=10, max_steps=10, learning_rate=3e-4, device="cpu", progress=False),
        loss_fn=adaptation_loss(fm, stats))
    preds = predictions()
    after = (preds == domain.test.labels).float().mean().item()
    assert after >= before, (before, after)
    assert torch.bincount(preds, minlength=10).max().item() / len(preds) < 0.5
