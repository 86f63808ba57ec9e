"""Selecting units from scores: uniform vs global scope, floors, protected blocks, layer removal."""

from __future__ import annotations

import pytest
import torch

from edgeadapt.models.registry import load_adapter
from edgeadapt.pruning.plan import PlanError
from edgeadapt.pruning.select import select


def fake_scores(adapter, neurons: list[torch.Tensor] | None = None, layers: list[float] | None = None):
    blocks = adapter.blocks()
    return {
        "heads": [torch.arange(b.attention.num_units, dtype=torch.float) for b in blocks],
        "neurons": neurons or [torch.arange(b.mlp.width, dtype=torch.float) for b in blocks],
        "layers": [torch.tensor(layers or [float(i) for i in range(len(blocks))])],
    }


def test_uniform_removes_the_lowest_scores_in_every_block():
    adapter = load_adapter("tiny-vit")
    plan = select(adapter, fake_scores(adapter), "neurons", 0.25)
    assert all(plan.kept_neurons(b) == list(range(32, 128)) for b in plan.blocks)


def test_global_ranks_across_blocks_with_a_floor():
    adapter = load_adapter("tiny-llama")  # 2 blocks x 128 neurons
    low, high = torch.zeros(128), torch.ones(128)
    plan = select(adapter, fake_scores(adapter, neurons=[low, high]), "neurons", 0.5, scope="global")
    kept = [len(plan.kept_neurons(b)) for b in plan.blocks]
    assert kept == [1, 127]  # block 0 is pruned down to its floor of one, block 1 pays the rest


def test_protected_blocks_are_untouched():
    adapter = load_adapter("tiny-vit")
    plan = select(adapter, fake_scores(adapter), "heads", 0.5, protect_first=1, protect_last=1)
    assert [len(plan.kept_heads(b)) for b in plan.blocks] == [4, 2, 2, 4]


def test_layer_removal_drops_the_least_important_unprotected_layers():
    adapter = load_adapter("tiny-vit")
    plan = select(adapter, fake_scores(adapter, layers=[0.1, 5.0, 0.2, 3.0]), "layers", 0.5)
    assert [b.index for b in plan.blocks] == [1, 3]
    plan = select(adapter, fake_scores(adapter, layers=[0.1, 5.0, 0.2, 3.0]), "layers", 0.5, protect_first=1)
    assert [b.index for b in plan.blocks] == [0, 1]


def test_cannot_remove_more_layers_than_unprotected():
    adapter = load_adapter("tiny-llama")
    with pytest.raises(PlanError, match="cannot remove 1 of 2 layers with 2 protected"):
        select(adapter, fake_scores(adapter), "layers", 0.5, protect_first=1, protect_last=1)


def test_unknown_scope_and_kind_are_refused():
    adapter = load_adapter("tiny-llama")
    with pytest.raises(ValueError, match="scope must be one of uniform, global"):
        select(adapter, fake_scores(adapter), "neurons", 0.5, scope="everywhere")
    with pytest.raises(ValueError, match="kind must be one of"):
        select(adapter, fake_scores(adapter), "channels", 0.5)
