"""Importance scores are what they claim to be."""

from __future__ import annotations

import pytest
import torch

from edgeadapt.pruning.groups import block_members
from edgeadapt.pruning.importance import _PerSampleTerms, magnitude, member_values
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
            expected = sum((member_values(adapter.model, m) * member_values(adapter.model, m, grad=True)).sum(1)
                           for m in block_members(block, kind))
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
