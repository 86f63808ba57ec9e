"""EATA and SAR reproduce their defining behaviour on toy cases: EATA's entropy and redundancy
filters keep samples out of the loss (zero gradient), its weights favour confident samples and its
Fisher term pulls toward the source values; SAR leaves unreliable samples out, its SAM step is the
gradient at the perturbed point (not plain SGD), and a collapse resets the adapted parameters to
the source exactly. Also: a method's own step runs under retrain's budget and memory measurement."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeadapt.errors import ConfigError
from edgeadapt.models.registry import load_adapter
from edgeadapt.online.losses import norm_parameters, sample_entropy, source_stats
from edgeadapt.online.methods import MethodContext, build
from edgeadapt.online.methods.eata import EATAStep, eata_entropy_loss, fisher_information, fisher_penalty
from edgeadapt.online.methods.sar import SARStep, sar_parameters
from edgeadapt.online.retrain import RetrainBudget, retrain, step_memory
from tests.conftest import make_batches

C = 10
E0 = 0.4 * math.log(C)


class Toy(nn.Module):
    """LayerNorm + linear head: a classifier small enough to check gradients by hand."""

    def __init__(self, dim: int = 6, classes: int = C, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        with torch.no_grad():  # sharp enough that some predictions are reliable, some not
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.zero_()
            self.head.weight.mul_(6.0)
            self.head.bias.zero_()

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.head(self.norm(pixel_values)))


class ToyAdapter(SimpleNamespace):
    """The part of the ModelAdapter protocol EATA and SAR use: ``model`` and ``logits``."""

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch["pixel_values"]).logits


def toy(seed: int = 0) -> ToyAdapter:
    adapter = ToyAdapter(model=Toy(seed=seed))
    adapter.model.head.requires_grad_(False)  # norm affines only, as EATA and SAR adapt
    return adapter


def confident(cls: int, margin: float = 8.0) -> torch.Tensor:
    row = torch.zeros(C)
    row[cls] = margin
    return row


def toy_batch(seed: int = 0, n: int = 8, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": scale * torch.randn(n, 6, generator=g)}


# -- EATA ---------------------------------------------------------------------------------------
def test_eata_unreliable_samples_get_zero_gradient_and_confident_ones_weigh_more():
    logits = torch.stack([confident(0), torch.zeros(C), confident(3, 4.0), 0.1 * torch.randn(C)])
    logits.requires_grad_(True)
    ent = sample_entropy(logits.detach())
    loss, keep, probs = eata_entropy_loss(logits, E0, d_margin=2.0, running_probs=None)
    assert keep.tolist() == (ent < E0).tolist() == [True, False, True, False]
    loss.backward()
    assert torch.all(logits.grad[~keep] == 0)  # filtered samples contribute nothing
    assert torch.all(logits.grad[keep].abs().sum(-1) > 0)
    expected = (ent[keep] * torch.exp(E0 - ent[keep])).mean()
    assert torch.allclose(loss, expected)
    assert torch.allclose(probs, F.softmax(logits.detach()[keep], -1).mean(0))


def test_eata_redundancy_filter_drops_a_repeated_sample():
    a, b = confident(0), confident(5)
    _, keep1, running = eata_entropy_loss(a[None].requires_grad_(), E0, 0.5, None)
    assert keep1.tolist() == [True]
    batch = torch.stack([a, b]).requires_grad_(True)
    loss, keep2, running2 = eata_entropy_loss(batch, E0, 0.5, running)
    assert keep2.tolist() == [False, True]  # the repeat is redundant (cosine 1), the new class is not
    loss.backward()
    assert torch.all(batch.grad[0] == 0) and batch.grad[1].abs().sum() > 0
    assert torch.allclose(running2, 0.9 * running + 0.1 * F.softmax(b, -1))


def test_eata_skips_the_update_when_no_sample_is_selected():
    adapter = toy()
    before = copy.deepcopy(adapter.model.state_dict())
    step = EATAStep(e_margin=1e-3, d_margin=0.5)
    opt = torch.optim.SGD([adapter.model.norm.weight, adapter.model.norm.bias], lr=1.0)
    step(adapter, toy_batch(), opt)
    assert all(torch.equal(v, adapter.model.state_dict()[k]) for k, v in before.items())
    assert step.selected == 0


def test_fisher_is_the_mean_squared_pseudo_label_gradient_and_pulls_toward_the_source():
    adapter = toy()
    names = ["norm.weight", "norm.bias"]
    batches = [toy_batch(1, 4), toy_batch(2, 4)]
    fishers = fisher_information(adapter, batches, names)
    # by hand: CE to the argmax, per batch, squared gradient, averaged over the two batches
    expect = {n: torch.zeros_like(p) for n, p in adapter.model.named_parameters() if n in names}
    for b in batches:
        model = copy.deepcopy(adapter.model).requires_grad_(True)
        logits = model(**b).logits
        F.cross_entropy(logits, logits.argmax(-1)).backward()
        for n, p in model.named_parameters():
            if n in names:
                expect[n] += p.grad ** 2 / len(batches)
    for n in names:
        assert torch.allclose(fishers[n][0], expect[n])
        assert torch.equal(fishers[n][1], dict(adapter.model.named_parameters())[n].detach())
    assert not any(p.requires_grad for p in adapter.model.head.parameters())  # flags restored

    # move θ away from θ⁰: the penalty's gradient is 2λF(θ−θ⁰) and a step on it moves back toward θ⁰
    model = adapter.model
    theta0 = {n: fishers[n][1] for n in names}
    with torch.no_grad():
        model.norm.weight.add_(0.5)
        model.norm.bias.sub_(0.5)
    penalty = fisher_penalty(model, fishers, alpha=2000.0)
    penalty.backward()
    for n, p in model.named_parameters():
        if n in names:
            assert torch.allclose(p.grad, 2 * 2000.0 * fishers[n][0] * (p.detach() - theta0[n]))
    distance = lambda: sum((fishers[n][0] * (p.detach() - theta0[n]) ** 2).sum()  # noqa: E731
                           for n, p in model.named_parameters() if n in names)
    before = distance()
    torch.optim.SGD([model.norm.weight, model.norm.bias], lr=1e-3).step()
    assert 0 < distance() < before


def test_eata_from_the_registry_takes_its_fisher_from_the_replay_buffer():
    fm = load_adapter("tiny-vit", seed=0)
    stats = source_stats(fm, make_batches(fm, n=1, size=8), bank_size=8, replay_size=8)
    method = build(["eata"], MethodContext(fm=fm, stats=stats))[0]
    step = method.step(method.prepare(None))
    assert set(step.fishers) == set(norm_parameters(fm)) == set(method.trainable)
    assert sum(float(f.sum()) for f, _ in step.fishers.values()) > 0
    assert step.e_margin == pytest.approx(0.4 * math.log(10))
    assert step.d_margin == pytest.approx(0.5) and step.fisher_alpha == pytest.approx(2000 / 3)
    no_replay = source_stats(fm, make_batches(fm, n=1, size=8), bank_size=8, replay_size=0)
    with pytest.warns(UserWarning, match="no replay buffer"):
        assert not build(["eata"], MethodContext(fm=fm, stats=no_replay))[0].step(None).fishers


def test_eata_and_sar_refuse_a_model_without_class_logits():
    fm = load_adapter("tiny-gpt2", seed=0)
    for name in ("eata", "sar"):
        with pytest.raises(ConfigError, match=f"'{name}' adapts classifiers"):
            build([name], MethodContext(fm=fm))


# -- SAR ----------------------------------------------------------------------------------------
def sar_step(adapter, **kw) -> SARStep:
    params = dict(adapter.model.named_parameters())
    return SARStep({n: params[n] for n in ("norm.weight", "norm.bias")}, **{"e_margin": E0, **kw})


def sgd(adapter, lr: float = 0.5) -> torch.optim.Optimizer:
    return torch.optim.SGD([adapter.model.norm.weight, adapter.model.norm.bias], lr=lr)


def test_sar_leaves_high_entropy_samples_out():
    adapter = toy()
    batch = toy_batch(0, 8, scale=3.0)
    # four more samples made unreliable: a zero input leaves LayerNorm's zero bias, uniform logits
    mixed = {"pixel_values": torch.cat([batch["pixel_values"], torch.zeros(4, 6)])}
    ent = sample_entropy(adapter.model(**mixed).logits.detach())
    assert (ent[:8] < E0).sum() >= 2 and torch.all(ent[8:] >= E0)
    reliable = {"pixel_values": mixed["pixel_values"][ent < E0]}
    a, b = copy.deepcopy(adapter), copy.deepcopy(adapter)
    sar_step(a, reset_below=0.0)(a, mixed, sgd(a))
    sar_step(b, reset_below=0.0)(b, reliable, sgd(b))
    for pa, pb, p0 in zip(a.model.parameters(), b.model.parameters(), adapter.model.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)
    assert not torch.equal(a.model.norm.weight, adapter.model.norm.weight)


def test_sam_step_is_the_gradient_at_the_perturbed_point_not_plain_sgd():
    adapter = toy()
    batch = toy_batch(0, 8, scale=3.0)
    ent0 = sample_entropy(adapter.model(**batch).logits.detach())
    keep = ent0 < E0
    assert keep.any()
    rho, lr = 0.05, 0.5
    # plain SGD on the reliable entropy
    plain = copy.deepcopy(adapter)
    sample_entropy(plain.model(**batch).logits)[keep].mean().backward()
    sgd(plain, lr).step()
    # SAM by hand: ascend to θ + ρ g/‖g‖, take the gradient there, descend from θ
    probe = copy.deepcopy(adapter)
    sample_entropy(probe.model(**batch).logits)[keep].mean().backward()
    ps = [probe.model.norm.weight, probe.model.norm.bias]
    g = [p.grad.clone() for p in ps]
    norm = torch.sqrt(sum((x ** 2).sum() for x in g))
    with torch.no_grad():
        for p, x in zip(ps, g):
            p.add_(rho * x / norm)
        for p in ps:
            p.grad = None
    ent2 = sample_entropy(probe.model(**batch).logits)[keep]
    ent2[ent2.detach() < E0].mean().backward()
    start = (adapter.model.norm.weight, adapter.model.norm.bias)
    expected = [p0.detach() - lr * p.grad for p0, p in zip(start, ps)]

    sam = copy.deepcopy(adapter)
    step = sar_step(sam, rho=rho, reset_below=0.0)
    step(sam, batch, sgd(sam, lr))
    got = [sam.model.norm.weight.detach(), sam.model.norm.bias.detach()]
    for x, y in zip(got, expected):
        assert torch.allclose(x, y, atol=1e-6)
    assert not torch.allclose(got[0], plain.model.norm.weight.detach(), atol=1e-6)
    assert step.ema is not None and step.resets == 0


def test_collapse_resets_the_adapted_parameters_to_the_source_exactly():
    adapter = toy()
    source = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    batch = toy_batch(0, 8, scale=3.0)
    step = sar_step(adapter, reset_below=0.0)
    opt = torch.optim.AdamW([adapter.model.norm.weight, adapter.model.norm.bias], lr=0.05)
    for _ in range(3):
        step(adapter, batch, opt)
    assert not torch.equal(adapter.model.norm.weight, source["norm.weight"]) and opt.state
    ema = step.ema
    assert ema is not None
    step.reset_below = ema + 1.0  # the entropy average now counts as collapsed
    step(adapter, batch, opt)
    assert step.resets == 1 and step.ema is None and not opt.state
    for k, v in adapter.model.state_dict().items():
        assert torch.equal(v, source[k]), k


def test_sar_adapts_the_lower_blocks_norms_only():
    fm = load_adapter("tiny-vit", seed=0)  # 4 blocks: the top one and the final norm stay frozen
    names = sar_parameters(fm)
    assert names == [n for n in norm_parameters(fm) if n.startswith(("vit.layers.0.", "vit.layers.1.",
                                                                       "vit.layers.2."))]
    assert len(sar_parameters(fm, skip_top=0.5)) == 8
    method = build(["sar"], MethodContext(fm=fm))[0]
    step = method.step(None)
    assert method.trainable == names and set(step.source) == set(names)
    assert step.reset_below == pytest.approx(0.2 * math.log(10) / math.log(1000))


# -- retrain with a method's own step -------------------------------------------------------------
class CountingStep:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, adapter, batch, optimizer) -> torch.Tensor:
        self.calls += 1
        optimizer.zero_grad(set_to_none=True)
        loss = sample_entropy(adapter.model(**batch).logits).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def test_retrain_runs_a_step_function_within_the_budget_and_measures_it():
    fm = load_adapter("tiny-vit", seed=0)
    for n, p in fm.model.named_parameters():
        p.requires_grad_(n in norm_parameters(fm))
    batches = [{"pixel_values": b["pixel_values"]} for b in make_batches(fm, n=2, size=4)]
    step = CountingStep()
    before = fm.model.vit.layernorm.weight.detach().clone()
    budget = RetrainBudget(steps=3, batch_size=4, device="cpu", gradient_checkpointing=False)
    result = retrain(fm, lambda e: batches, None, budget, step=step, constrained=False)
    assert result.steps == 3 and step.calls == 3  # the memory probe ran on a copy of the step
    assert result.peak_memory_bytes > 0 and result.seconds > 0
    assert not torch.equal(fm.model.vit.layernorm.weight, before)
    assert step_memory(fm, None, batches[0], 1e-3, torch.device("cpu"), step=step) > 0 and step.calls == 3
    with pytest.raises(ConfigError, match="a loss function or a step function"):
        retrain(fm, lambda e: batches, None, budget)


def test_step_memory_is_the_steady_state_step_with_the_optimizer_state_already_held():
    """Before: the first step was measured, when AdamW's moments do not exist yet during backward,
    so every row's peak_memory_bytes was below what each later step needs (6.3 vs 7.2 MiB for a
    planned tiny-ViT proxy)."""
    from edgeadapt.memory.accounting import measure_peak
    from edgeadapt.online.losses import entropy

    fm = load_adapter("tiny-vit", seed=0)
    batch = {"pixel_values": make_batches(fm, n=1, size=8)[0]["pixel_values"]}
    reported = step_memory(fm, lambda a, b: entropy(a.logits(b)), batch, 1e-3, torch.device("cpu"))
    probe = copy.deepcopy(fm)
    opt = torch.optim.AdamW(probe.model.parameters(), lr=1e-3)

    def one_step():
        entropy(probe.logits(batch)).backward()
        opt.step()

    _, first = measure_peak(one_step, modules=[probe.model], optimizer=opt)
    opt.zero_grad(set_to_none=True)  # as every training loop does before the next step
    _, second = measure_peak(one_step, modules=[probe.model], optimizer=opt)
    assert second.total_bytes > first.total_bytes
    assert reported == pytest.approx(second.total_bytes, rel=0.02)
