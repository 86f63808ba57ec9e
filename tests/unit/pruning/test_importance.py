"""Importance scores are what they claim to be."""

from __future__ import annotations

import pytest
import torch

from edgeadapt.errors import ConfigError
from edgeadapt.pruning.groups import block_members, num_units
from edgeadapt.pruning.importance import IMPORTANCES, _PerSampleTerms, magnitude, member_values, score
from tests.conftest import TINY, make_batches


@pytest.mark.parametrize("name", [*TINY, "minilm"])
def test_per_sample_terms_sum_to_the_group_weight_gradient_product(name, load):
    """sum over samples of the hook terms == sum over the group of w * dL/dw from .grad."""
    adapter = load(name)
    adapter.model.eval()
    batch = make_batches(adapter, n=1)[0]
    blocks = adapter.blocks()
    collector = _PerSampleTerms(adapter.model, blocks)
    adapter.task_loss(batch).backward()
    collector.remove()
    for kind in ("heads", "neurons"):
        for i, block in enumerate(blocks):
            expected = sum((member_values(adapter.model, m) * member_values(adapter.model, m, grad=True))
                           .sum(1) for m in block_members(block, kind))
            got = sum(per.sum(0) for (k, b, _), per in collector.terms.items() if k == kind and b == i)
            torch.testing.assert_close(got, expected.float(), rtol=1e-3, atol=1e-6)


def test_magnitude_is_the_joint_group_norm(load):
    adapter = load("tiny-llama")
    block = adapter.blocks()[1]
    l2 = magnitude(adapter, p=2)["neurons"][1]
    g = adapter.model.model.layers[1].mlp
    manual = (g.gate_proj.weight.pow(2).sum(1) + g.up_proj.weight.pow(2).sum(1) +
              g.down_proj.weight.pow(2).sum(0)).sqrt()
    torch.testing.assert_close(l2, manual.detach())
    assert block.mlp.width == l2.numel()


def test_taylor_is_first_order_abs_and_fisher_the_squared_per_sample_term(load):
    """The one vocabulary: ``taylor`` = sum |w·g| over the group with g the gradient of the mean
    calibration loss (averaged over batches *before* the absolute value, as torch-pruning's
    accumulated gradients); ``fisher`` = (sum w·g)² per sample, averaged (here one sample per batch)."""
    adapter = load("tiny-llama")
    adapter.model.eval()
    batches = make_batches(adapter, n=2, size=1)
    blocks = adapter.blocks()
    second = {k: [torch.zeros(num_units(b, k)) for b in blocks] for k in ("heads", "neurons")}
    per_batch_abs = {k: [torch.zeros(num_units(b, k)) for b in blocks] for k in ("heads", "neurons")}
    mean_grad = {}
    for batch in batches:
        adapter.model.zero_grad(set_to_none=True)
        adapter.task_loss(batch).backward()
        for name, q in adapter.model.named_parameters():
            mean_grad[name] = mean_grad.get(name, 0) + q.grad.detach() / len(batches)
        for kind in second:
            for i, block in enumerate(blocks):
                prods = [member_values(adapter.model, m) * member_values(adapter.model, m, grad=True)
                         for m in block_members(block, kind)]
                second[kind][i] += sum(p.sum(1) for p in prods).detach().float().pow(2) / len(batches)
                per_batch_abs[kind][i] += sum(p.abs().sum(1) for p in prods).detach().float() / len(batches)
    for name, q in adapter.model.named_parameters():
        q.grad = mean_grad[name]
    first = {kind: [sum((member_values(adapter.model, m) * member_values(adapter.model, m, grad=True)).abs()
                        .sum(1) for m in block_members(block, kind)).detach().float() for block in blocks]
             for kind in second}
    adapter.model.zero_grad(set_to_none=True)
    taylor, fisher = score(adapter, "taylor", batches), score(adapter, "fisher", batches)
    for kind in first:
        for i in range(len(blocks)):
            torch.testing.assert_close(taylor[kind][i], first[kind][i], rtol=1e-4, atol=1e-9)
            torch.testing.assert_close(fisher[kind][i], second[kind][i], rtol=1e-3, atol=1e-9)
            # not the per-batch |w·g_b| average (which adds gradient noise)
            assert not torch.allclose(taylor[kind][i], per_batch_abs[kind][i], rtol=1e-3)


def test_retired_and_unknown_importance_names_are_refused_with_the_fix(load):
    adapter = load("tiny-llama")
    with pytest.raises(ConfigError, match=r"importance 'taylor-abs' was renamed: use 'taylor' \(first-order"):
        score(adapter, "taylor-abs", make_batches(adapter))
    with pytest.raises(ConfigError, match="unknown importance 'l1'; choose one of magnitude, magnitude-l2, "
                                          "taylor, fisher, activation, random"):
        score(adapter, "l1")


def test_random_importance_is_seeded_and_needs_no_data(load):
    adapter = load("tiny-llama")
    a, b = score(adapter, "random", seed=0), score(adapter, "random", seed=0)
    c = score(adapter, "random", seed=1)
    assert torch.equal(a["neurons"][0], b["neurons"][0]) and not torch.equal(a["neurons"][0], c["neurons"][0])
    assert not IMPORTANCES["random"].needs_batches and IMPORTANCES["taylor"].needs_batches
