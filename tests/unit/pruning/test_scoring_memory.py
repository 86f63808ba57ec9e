"""Memory-bounded scoring: the same scores as the whole-model backward, a peak bounded by the weights
plus one block, a prediction that holds the measurement, and a refusal that names what fits."""

from __future__ import annotations

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from edgeadapt.cli.main import main
from edgeadapt.errors import InfeasibleError
from edgeadapt.memory.accounting import measure_peak
from edgeadapt.models.registry import wrap
from edgeadapt.pruning.blockwise import NotAChain, blockwise_gradient_scores
from edgeadapt.pruning.importance import score
from edgeadapt.pruning.memory import check_scoring_memory, predict_scoring_peak, tokens_per_sample
from tests.conftest import make_batches


def _assert_same(new: dict, old: dict, rtol: float = 1e-5) -> None:
    assert new.keys() == old.keys()
    for kind in old:
        for n, o in zip(new[kind], old[kind], strict=True):
            scale = o.abs().max().clamp_min(1e-30)
            assert ((n - o).abs() / scale).max().item() <= rtol, kind


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-vit"])
@pytest.mark.parametrize("method", ["magnitude", "taylor", "fisher"])
def test_memory_bounded_scores_equal_the_whole_model_backward(name, method, load):
    adapter = load(name)
    batches = make_batches(adapter, n=2)
    old = score(adapter, method, batches, memory_bounded=False)
    _assert_same(score(adapter, method, batches), old)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-vit", "tiny-gpt2", "minilm"])
def test_the_blockwise_walk_is_taken_not_the_fallback(name, load):
    """The equality above must come from the block-by-block walk: it raises NotAChain otherwise."""
    adapter = load(name)
    adapter.model.eval()
    def nothing(_block):
        return {"heads": torch.zeros(1), "neurons": torch.zeros(1)}

    totals, layers, _, n = blockwise_gradient_scores(adapter, make_batches(adapter, n=1), nothing)
    assert n == 1 and layers.abs().sum() > 0 and len(totals["heads"]) == len(adapter.blocks())


def test_a_block_input_that_is_not_the_previous_output_falls_back_to_the_same_scores(load):
    adapter = load("tiny-llama")
    batches = make_batches(adapter, n=2)
    layers = adapter.model.get_submodule(adapter.layers_path())
    handle = layers[1].register_forward_pre_hook(lambda _m, args: (args[0] * 1.0, *args[1:]))
    try:
        with pytest.raises(NotAChain):
            blockwise_gradient_scores(adapter, batches, lambda b: {})
        old = score(adapter, "taylor", batches, memory_bounded=False)
        _assert_same(score(adapter, "taylor", batches), old)
    finally:
        handle.remove()


def _deep_llama(dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=512, num_hidden_layers=8,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    adapter = wrap(LlamaForCausalLM(cfg).to(dtype))
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 256, (2, 16), generator=g),
                "attention_mask": torch.ones(2, 16, dtype=torch.long)} for _ in range(2)]
    return adapter, batches


def test_taylor_peak_holds_one_blocks_gradients_not_the_models():
    adapter, batches = _deep_llama()
    weights = sum(p.numel() * p.element_size() for p in adapter.model.parameters())
    block = sum(p.numel() * 4 for p in adapter.model.model.layers[0].parameters())
    _, old = measure_peak(lambda: score(adapter, "taylor", batches, memory_bounded=False),
                          modules=[adapter.model])
    _, new = measure_peak(lambda: score(adapter, "taylor", batches), modules=[adapter.model])
    assert old.peak_bytes > weights  # the whole-model backward holds every gradient
    assert new.peak_bytes < 2.5 * block  # one block's gradients plus small activations
    assert new.total_bytes < 0.6 * old.total_bytes


@pytest.mark.parametrize("method,bounded", [("taylor", True), ("taylor", False), ("fisher", True),
                                            ("activation", True), ("magnitude", True)])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-vit", "deep-llama"])
def test_prediction_is_an_upper_bound_within_60_percent_of_the_measured_peak(name, method, bounded, load):
    adapter, batches = _deep_llama() if name == "deep-llama" else (load(name), None)
    batches = batches or make_batches(adapter, n=2)
    size = next(iter(batches[0].values())).shape[0]
    _, measured = measure_peak(lambda: score(adapter, method, batches, memory_bounded=bounded),
                               modules=[adapter.model])
    predicted = predict_scoring_peak(adapter, method, size, tokens_per_sample(adapter, batches[0]),
                                     len(batches), bounded)
    assert measured.total_bytes <= predicted.total_bytes <= 1.6 * measured.total_bytes


def test_bf16_model_scores_in_bf16_close_to_the_whole_model_backward():
    adapter, batches = _deep_llama(torch.bfloat16)
    new = score(adapter, "taylor", batches)
    assert all(p.dtype == torch.bfloat16 and p.grad is None for p in adapter.model.parameters())
    old = score(adapter, "taylor", batches, memory_bounded=False)
    _assert_same(new, old, rtol=2e-2)


def test_refusal_names_a_calibration_that_fits(load):
    adapter = load("tiny-llama")
    names = {"num_batches": "--calibration-batches", "batch_size": "--batch-size"}
    need = predict_scoring_peak(adapter, "taylor", 8, 24, 8).total_bytes
    assert check_scoring_memory(adapter, "taylor", 8, 24, 8, need, names).total_bytes == need
    with pytest.raises(InfeasibleError, match="fits with --calibration-batches") as err:
        check_scoring_memory(adapter, "taylor", 8, 24, 8, need - 1, names)
    assert "--batch-size" not in str(err.value)  # fewer batches alone suffice
    with pytest.raises(InfeasibleError, match="smallest calibration; raise the limit"):
        check_scoring_memory(adapter, "taylor", 8, 24, 8, 1024, names)


def test_prune_cli_refuses_over_max_memory_before_scoring(capsys, tmp_path):
    out = tmp_path / "o"
    assert main(["prune", "tiny-llama", "--unit-sparsity", "0.25", "--importance", "taylor",
                 "--max-memory", "20MiB", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "over the memory limit 20.0 MiB" in err and "--calibration-batches" in err
    assert not (out / "plan.json").exists()


def test_llm_prune_refuses_over_max_memory_before_any_compute(tmp_path, capsys):
    config = {"kind": "llm-prune", "model": "tiny-llama", "unit_sparsity": 0.25, "targets": ["neurons"],
              "seq_len": 32, "batch_size": 2, "save": str(tmp_path / "save"),
              "log_dir": str(tmp_path / "logs"), "tracker": "none", "recovery": {"method": "none"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["llm-prune", "--config", str(path), "--mode", "train", "--max-memory", "1MiB"]) == 2
    captured = capsys.readouterr()
    assert "over the memory limit 1.0 MiB" in captured.err and "raise the limit" in captured.err
    assert "perplexity" not in captured.out  # refused before the dense perplexity pass
