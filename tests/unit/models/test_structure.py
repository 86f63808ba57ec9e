"""Structure read from the config is checked against the projection weights (issue 12 §1): a config
that disagrees with the weights is an ArtifactError naming both numbers — when a model is wrapped
(``check_structure``, inside ``HFAdapter``) and before a local directory is loaded
(``check_checkpoint``, from the safetensors headers) — never an IndexError later. The quoted case: a
pruned model saved with plain ``save_pretrained`` (layers updated in its config, heads and
intermediate size not) and then loaded."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, LlamaConfig

from edgeadapt.errors import ArtifactError
from edgeadapt.models.adapter import check_structure
from edgeadapt.models.registry import load_adapter, wrap
from edgeadapt.pruning.prune import prune

FAMILIES = ["tiny-vit", "tiny-bert", "tiny-gpt2", "tiny-opt", "tiny-llama"]
# what each tiny config declares for layer 0's query projection and what is left after half the heads
Q_MESSAGE = {
    "tiny-vit": "config says 4 heads × head_dim 16 = 64 but q_proj has 32 output rows",
    "tiny-bert": "config says 4 heads × head_dim 16 = 64 but query has 32 output rows",
    "tiny-gpt2": "config says 3 × 4 heads × head_dim 16 = 192 but c_attn has 96 output features",
    "tiny-opt": "config says 4 heads × head_dim 16 = 64 but q_proj has 32 output rows",
    "tiny-llama": "config says 4 heads × head_dim 16 = 64 but q_proj has 32 output rows",
}


@pytest.mark.parametrize("name", FAMILIES)
def test_save_pretrained_of_a_pruned_model_is_refused_naming_both_numbers(name, tmp_path):
    adapter = load_adapter(name)
    targets = ["heads", "neurons", "layers"] if name == "tiny-vit" else ["heads", "neurons"]
    prune(adapter, targets, "magnitude", unit_sparsity=0.5)
    adapter.model.save_pretrained(tmp_path)  # config: layers updated, heads/intermediate size not
    with pytest.raises(ArtifactError) as err:
        load_adapter(tmp_path)
    message = str(err.value)
    assert f"layer 0: {Q_MESSAGE[name]}" in message
    assert "FFN width" in message and str(tmp_path) in message


def test_half_updated_llama_with_a_layer_removed_names_heads_and_ffn(tmp_path):
    adapter = load_adapter("tiny-llama")
    prune(adapter, ["heads", "neurons", "layers"], "magnitude", unit_sparsity=0.5)
    adapter.model.save_pretrained(tmp_path)
    with pytest.raises(ArtifactError, match="layer 0: config says 2 key/value heads × head_dim 16 = 32 but "
                                            "k_proj has 16 output rows.*FFN width \\(intermediate_size\\) = "
                                            "128 but gate_proj has 64 output rows"):
        load_adapter(tmp_path)


def test_checkpoint_holding_fewer_layers_than_its_config_is_refused(tmp_path):
    adapter = load_adapter("tiny-llama")
    prune(adapter, ["layers"], "magnitude", unit_sparsity=0.5)
    adapter.model.config.num_hidden_layers = 2  # a config edited back by hand
    adapter.model.save_pretrained(tmp_path)
    with pytest.raises(ArtifactError, match="config says num_hidden_layers 2 but the weights hold 1 layers"):
        load_adapter(tmp_path)


def llama(**overrides):
    config = LlamaConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128)
    model = AutoModelForCausalLM.from_config(config)
    for key, value in overrides.items():
        setattr(model.config, key, value)
    return model


@pytest.mark.parametrize("overrides, message", [
    ({"num_key_value_heads": 4},
     "config says 4 key/value heads × head_dim 16 = 64 but k_proj has 32 output rows"),
    ({"num_attention_heads": 8, "num_key_value_heads": 4},
     "config says 8 heads × head_dim 16 = 128 but q_proj has 64 output rows"),
    ({"intermediate_size": 96}, "config says FFN width (intermediate_size) = 96 but gate_proj has 128"),
    ({"head_dim": 8}, "config says 4 heads × head_dim 8 = 32 but q_proj has 64 output rows"),
    ({"num_attention_heads": 3, "num_key_value_heads": 2}, "3 heads in 2 key/value groups"),
])
def test_wrapping_a_model_whose_config_disagrees_with_its_weights_is_refused(overrides, message):
    with pytest.raises(ArtifactError) as err:
        wrap(llama(**overrides), None, "edited")
    assert message in str(err.value)


def test_gpt2_head_count_that_does_not_divide_the_width_is_refused():
    adapter = load_adapter("tiny-gpt2")
    adapter.model.config.n_head = 3
    with pytest.raises(ArtifactError, match="hidden_size 64 with 3 heads, which does not divide"):
        wrap(adapter.model, None, "edited")


@pytest.mark.parametrize("name", FAMILIES)
def test_consistent_models_pass_dense_and_pruned(name, tmp_path):
    adapter = load_adapter(name)
    check_structure(adapter)
    prune(adapter, ["heads", "neurons"], "magnitude", unit_sparsity=0.5)
    check_structure(adapter)  # a pruned adapter is checked against its plan
    dense = load_adapter(name)
    dense.model.save_pretrained(tmp_path)
    load_adapter(tmp_path)
