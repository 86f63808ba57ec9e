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


# -- a half-updated `save_pretrained` of a pruned model (issue 12 §1) --------------------------------

HALF_UPDATED = {"tiny-llama": ["heads", "neurons", "layers"], "tiny-gpt2": ["neurons"],
                "tiny-bert": ["heads"], "tiny-opt": ["neurons", "heads"], "tiny-vit": ["heads", "neurons"]}


@pytest.mark.parametrize("name", HALF_UPDATED)
def test_inspect_of_a_half_updated_save_pretrained_is_one_paragraph_naming_the_mismatch(
        name, load, tmp_path, capsys):
    from edgeadapt.cli.main import main

    adapter = load(name)
    prune(adapter, HALF_UPDATED[name], "magnitude", unit_sparsity=0.5)
    adapter.model.save_pretrained(tmp_path / "d")  # config: original widths; weights: pruned ones
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"edgeadapt inspect: error: {tmp_path / 'd'}")
    assert "config says" in err and "edgeadapt export" in err  # both numbers, and the fix
    assert "\n" not in err and "Traceback" not in err and "LOAD REPORT" not in err


def test_a_transformers_load_failure_becomes_an_artifact_error(tmp_path):
    from transformers import BertConfig

    from edgeadapt.errors import ArtifactError
    from edgeadapt.pruning.checkpoint import load_model

    from transformers import BertModel

    config = BertConfig(vocab_size=32, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=32)
    BertModel(config).save_pretrained(tmp_path / "d")
    config.num_attention_heads = 3  # 64 is not a multiple of 3 heads: transformers raises ValueError
    config.to_json_file(tmp_path / "d" / "config.json")
    with pytest.raises(ArtifactError, match="transformers cannot load this model directory.*export"):
        load_model(tmp_path / "d")


def test_a_model_directory_without_weights_is_named(tmp_path):
    from transformers import BertConfig

    from edgeadapt.errors import ArtifactError
    from edgeadapt.pruning.checkpoint import load_model

    (tmp_path / "d").mkdir()
    BertConfig(vocab_size=32, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
               intermediate_size=32).to_json_file(tmp_path / "d" / "config.json")
    with pytest.raises(ArtifactError, match="config.json but no weights"):
        load_model(tmp_path / "d")
