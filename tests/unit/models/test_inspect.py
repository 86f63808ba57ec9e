"""``inspect`` counts parameters and FLOPs correctly, before and after pruning."""

from __future__ import annotations

import pytest

from edgeadapt.models.inspect import format_inspection, inspect_model
from edgeadapt.pruning.prune import prune
from tests.conftest import TINY


@pytest.mark.parametrize("name", TINY)
def test_totals_and_per_block_rows(name, load):
    adapter = load(name)
    info = inspect_model(adapter)
    assert info.total_params == sum(p.numel() for p in adapter.model.parameters())
    layers = adapter.model.get_submodule(adapter.layers_path())
    assert [r.params for r in info.blocks] == [sum(p.numel() for p in layer.parameters()) for layer in layers]
    assert all(r.flops > 0 for r in info.blocks)
    text = format_inspection(info)
    assert "total" in text and f"{info.total_params:,}" in text


def test_flops_follow_the_formula_for_one_llama_block(load):
    adapter = load("tiny-llama")
    info = inspect_model(adapter, context=10)
    # q 64x64, k/v 32x64, o 64x64, gate/up 128x64, down 64x128 (no biases) → 2 FLOPs per weight
    linear = 2 * (64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 128 * 64)
    attention = 4 * 10 * 4 * 16
    assert info.blocks[0].flops == linear + attention


def test_pruning_halves_ffn_width_and_reduces_flops(load):
    adapter = load("tiny-vit")
    before = inspect_model(adapter)
    prune(adapter, ["neurons"], "magnitude", unit_sparsity=0.5)
    after = inspect_model(adapter)
    assert [r.ffn_width for r in after.blocks] == [r.ffn_width // 2 for r in before.blocks]
    assert after.total_flops < before.total_flops and after.total_params < before.total_params
