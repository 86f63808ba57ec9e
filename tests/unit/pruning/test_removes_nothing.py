"""A prune request that removes nothing says so (issue 12 §1), in every command and family: the whole
request removing nothing is an InfeasibleError (exit 2 on the CLI) naming the target, its units per
layer and the smallest sparsity that removes one; one target of several removing nothing is a
warning naming it. The rule is one function, ``pruning.budget.check_request``."""

from __future__ import annotations

import re
import warnings

import pytest
import yaml
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

from edgeadapt.cli.main import main
from edgeadapt.data.text import bpe_tokenizer
from edgeadapt.errors import InfeasibleError
from edgeadapt.models.registry import load_adapter, wrap
from edgeadapt.pruning.budget import prune_to_param_sparsity, prune_to_unit_sparsity
from edgeadapt.pruning.importance import random_scores
from edgeadapt.pruning.prune import prune

FAMILIES = ["tiny-vit", "tiny-bert", "tiny-gpt2", "tiny-opt", "tiny-llama"]
# head units per layer of each tiny config (Llama: 2 KV groups of 2 query heads), and the smallest
# unit sparsity s with round(s * units) >= 1 (Python rounds half to even: round(0.5) == 0)
HEAD_UNITS = {"tiny-vit": 4, "tiny-bert": 4, "tiny-gpt2": 4, "tiny-opt": 4, "tiny-llama": 2}
SMALLEST = {4: 0.126, 2: 0.251}


def params(adapter) -> int:
    return sum(p.numel() for p in adapter.model.parameters())


def one_kv_head(kind: str = "mistral"):
    """A causal LM with multi-query attention: one KV head per layer, so no head unit can go."""
    cls = MistralConfig if kind == "mistral" else LlamaConfig
    config = cls(vocab_size=2048, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=1, intermediate_size=128, max_position_embeddings=256)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_heads_rounding_to_zero_are_refused_naming_the_smallest_sparsity(name):
    adapter = load_adapter(name)
    n, units = params(adapter), HEAD_UNITS[name]
    with pytest.raises(InfeasibleError) as err:
        prune(adapter, ["heads"], "magnitude", unit_sparsity=0.1)
    message = str(err.value)
    assert f"heads: {units} KV head units per layer, round(0.1 × {units}) = 0" in message
    assert f"the smallest unit_sparsity that removes one is {SMALLEST[units]}" in message
    assert params(adapter) == n  # untouched
    with pytest.raises(InfeasibleError, match=f"round\\(0.1 × {units}\\) = 0"):
        prune_to_unit_sparsity(adapter, 0.1, ["heads"], random_scores(adapter))
    # the suggested sparsity does remove one head unit per layer
    prune(adapter, ["heads"], "magnitude", unit_sparsity=SMALLEST[units])
    assert [b.attention.num_units for b in adapter.blocks()] == [units - 1] * len(adapter.blocks())


@pytest.mark.parametrize("name", FAMILIES)
def test_one_target_of_several_rounding_to_zero_is_a_warning_naming_it(name):
    adapter = load_adapter(name)
    width = adapter.blocks()[0].mlp.width
    with pytest.warns(UserWarning, match="unit_sparsity 0.1 removes no heads .*round\\(0.1 × "):
        prune(adapter, ["heads", "neurons"], "magnitude", unit_sparsity=0.1)
    assert [b.mlp.width for b in adapter.blocks()] == [width - round(0.1 * width)] * len(adapter.blocks())
    assert all(b.attention.num_units == HEAD_UNITS[name] for b in adapter.blocks())


def test_tiny_llama_quarter_of_heads_and_neurons_warns_that_heads_stay():
    """The quoted case: 2 KV groups per layer, round(0.25 * 2) = 0, used to keep every head silently."""
    adapter = load_adapter("tiny-llama")
    with pytest.warns(UserWarning, match="removes no heads .*2 KV head units per layer, "
                                         "round\\(0.25 × 2\\) = 0"):
        prune(adapter, ["heads", "neurons"], "magnitude", unit_sparsity=0.25)


@pytest.mark.parametrize("kind", ["mistral", "llama"])
def test_one_kv_head_is_refused_for_heads_and_warned_in_a_mix(kind):
    adapter = wrap(one_kv_head(kind), None, f"mqa-{kind}")
    for call in (lambda: prune(adapter, ["heads"], "magnitude", unit_sparsity=0.5),
                 lambda: prune(adapter, ["heads"], "magnitude", param_sparsity=0.2),
                 lambda: prune_to_unit_sparsity(adapter, 0.5, ["heads"], random_scores(adapter)),
                 lambda: prune_to_param_sparsity(adapter, 0.2, ["heads"], random_scores(adapter))):
        with pytest.raises(InfeasibleError, match="1 KV head unit per layer and every layer keeps at least"):
            call()
    with pytest.warns(UserWarning, match="removes no heads"):
        prune_to_param_sparsity(adapter, 0.2, ["heads", "neurons"], random_scores(adapter))


def test_protected_layers_leaving_nothing_are_refused():
    adapter = load_adapter("tiny-llama")
    with pytest.raises(InfeasibleError, match="every one of the 2 layers is protected .*Lower protect_first"):
        prune(adapter, ["neurons"], "magnitude", unit_sparsity=0.5, protect_first=1, protect_last=1)
    with pytest.raises(InfeasibleError, match="every one of the 2 layers is protected"):
        prune_to_param_sparsity(adapter, 0.2, ["neurons"], random_scores(adapter), protect_first=2)


def test_min_keep_leaving_nothing_is_refused():
    adapter = load_adapter("tiny-llama")
    with pytest.raises(InfeasibleError, match="keeps at least 2 \\(min_keep\\)"):
        prune(adapter, ["heads"], "magnitude", unit_sparsity=0.5, min_keep=2)


def test_single_layer_model_cannot_lose_its_layer():
    config = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64)
    adapter = wrap(AutoModelForCausalLM.from_config(config), None, "one-layer")
    with pytest.raises(InfeasibleError, match="layers: the model has 1 layer"):
        prune(adapter, ["layers"], "magnitude", unit_sparsity=0.5)


@pytest.mark.parametrize("name", FAMILIES)
def test_param_share_rounding_to_nothing_is_refused_naming_the_smallest(name):
    adapter = load_adapter(name)
    scores = random_scores(adapter)
    with pytest.raises(InfeasibleError, match="param_sparsity 1e-05 removes nothing .*smallest "
                                              "param_sparsity that removes anything is about ") as err:
        prune_to_param_sparsity(adapter, 1e-5, ["neurons"], scores)
    suggested = float(re.search(r"is about ([0-9.]+[0-9])", str(err.value)).group(1))
    outcome = prune_to_param_sparsity(adapter, suggested, ["neurons"], scores)
    assert outcome.param_sparsity > 0


@pytest.mark.parametrize("name", FAMILIES)
def test_zero_sparsity_asks_for_nothing_and_passes(name):
    adapter = load_adapter(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prune(adapter, ["heads", "neurons"], "magnitude", unit_sparsity=0.0)


# -- the CLI: exit 2 with the message, or the warning on stderr ---------------------------------------

@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mistral-1kv")
    one_kv_head().save_pretrained(d)
    bpe_tokenizer(2048).save_pretrained(d)
    return d


def test_cli_prune_heads_of_a_one_kv_head_mistral_exits_2(mistral_dir, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["prune", str(mistral_dir), "--unit-sparsity", "0.5", "--target", "heads",
                 "--importance", "magnitude", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "removes nothing (targets heads)" in err and "1 KV head unit per layer" in err
    assert not (out / "model.safetensors").exists()


def test_cli_prune_tiny_llama_heads_and_neurons_warns_on_stderr(tmp_path, capsys):
    assert main(["prune", "tiny-llama", "--unit-sparsity", "0.25", "--target", "heads,neurons",
                 "--importance", "magnitude", "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if "removes no heads" in line]
    # one line in the CLI's own format: no file name, line number or source line
    assert len(warning) == 1 and warning[0].startswith("edgeadapt prune: warning: unit_sparsity 0.25")
    assert "round(0.25 × 2) = 0" in warning[0] and "request.py" not in captured.err
    assert "FFN neurons 192/256" in captured.out


def test_llm_prune_refuses_before_any_compute(mistral_dir, tmp_path, capsys):
    config = {"kind": "llm-prune", "model": str(mistral_dir), "unit_sparsity": 0.5,
              "targets": ["heads"], "seq_len": 32, "batch_size": 2, "save": str(tmp_path / "save"),
              "log_dir": str(tmp_path / "logs"), "tracker": "none", "recovery": {"method": "none"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["llm-prune", "--config", str(path), "--mode", "train"]) == 2
    captured = capsys.readouterr()
    assert "removes nothing (targets heads)" in captured.err
    assert "perplexity" not in captured.out  # refused before the dense perplexity pass
