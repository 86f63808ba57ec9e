"""Pruning to a budget (unit or parameter sparsity): zero sparsity is the identity, a layer and a head
removal change parameter counts exactly as predicted, zero-importance units go first (exact),
pruned models save, reload and generate, each budget removes what its name says, and bad input is
refused clearly."""

from __future__ import annotations

import pytest
import torch

from edgeadapt.errors import InfeasibleError
from edgeadapt.models.registry import load_adapter
from edgeadapt.pruning.budget import prune_to_param_sparsity, prune_to_unit_sparsity
from edgeadapt.pruning.checkpoint import load_pruned, save_pruned
from edgeadapt.pruning.importance import random_scores, score
from tests.conftest import make_batches, outputs


def params(adapter) -> int:
    return sum(p.numel() for p in adapter.model.parameters())


@pytest.fixture
def llama():
    adapter = load_adapter("tiny-llama")  # 2 layers, hidden 64, 4 query heads in 2 KV groups, FFN 128
    return adapter, make_batches(adapter, n=2, size=4, length=16)


@pytest.mark.parametrize("targets", [["heads", "neurons"], ["layers"], ["heads", "neurons", "layers"]])
def test_zero_sparsity_is_the_identity(llama, targets):
    adapter, batches = llama
    before, n = outputs(adapter, batches[0]), params(adapter)
    outcome = prune_to_param_sparsity(adapter, 0.0, targets, score(adapter, "taylor", batches))
    assert outcome.param_sparsity == 0.0 and params(adapter) == n
    torch.testing.assert_close(outputs(adapter, batches[0]), before, rtol=0, atol=0)


def test_layer_removal_changes_params_exactly(llama):
    adapter, batches = llama
    layer = sum(p.numel() for p in adapter.model.model.layers[0].parameters())
    n = params(adapter)
    outcome = prune_to_param_sparsity(adapter, 0.5, ["layers"], score(adapter, "taylor", batches))
    assert params(adapter) == n - layer
    assert len(adapter.model.model.layers) == 1 and adapter.model.config.num_hidden_layers == 1
    assert outcome.param_sparsity == pytest.approx(0.5)


def test_head_removal_changes_params_exactly(llama):
    adapter, batches = llama
    c = adapter.model.config
    head_dim = c.hidden_size // c.num_attention_heads
    per_group = c.num_attention_heads // c.num_key_value_heads
    # one KV group: its query rows, its k and v rows, and the o columns of its query heads (no biases)
    unit = 2 * per_group * head_dim * c.hidden_size + 2 * head_dim * c.hidden_size
    block = sum(p.numel() for p in adapter.model.model.layers.parameters())
    n = params(adapter)
    target = 2 * unit / block  # one group in each of the 2 layers
    outcome = prune_to_param_sparsity(adapter, target, ["heads"], score(adapter, "taylor", batches),
                                      scope="uniform")
    assert params(adapter) == n - 2 * unit
    assert outcome.param_sparsity == pytest.approx(target)
    assert [layer.self_attn.k_proj.out_features for layer in adapter.model.model.layers] == [head_dim] * 2


def test_sparsity_is_met_and_global_ranking_keeps_floors(llama):
    adapter, batches = llama
    outcome = prune_to_param_sparsity(adapter, 0.5, ["heads", "neurons"], score(adapter, "fisher", batches),
                                      scope="global", min_keep=4)
    assert abs(outcome.param_sparsity - 0.5) < 0.02
    for block in outcome.plan.blocks:
        assert len(outcome.plan.kept_neurons(block)) >= 4 and len(outcome.plan.kept_heads(block)) >= 1


def test_zero_importance_neurons_are_pruned_first_and_exactly(llama):
    adapter, batches = llama
    with torch.no_grad():
        for layer in adapter.model.model.layers:
            mlp = layer.mlp
            for j in (5, 77):
                mlp.gate_proj.weight[j] = 0
                mlp.up_proj.weight[j] = 0
                mlp.down_proj.weight[:, j] = 0
    before = outputs(adapter, batches[0])
    block = sum(p.numel() for p in adapter.model.model.layers.parameters())
    per_neuron = 3 * adapter.model.config.hidden_size
    scores = score(adapter, "taylor", batches)
    outcome = prune_to_param_sparsity(adapter, 4 * per_neuron / block, ["neurons"], scores)
    for b in outcome.plan.blocks:
        assert 5 not in outcome.plan.kept_neurons(b) and 77 not in outcome.plan.kept_neurons(b)
    torch.testing.assert_close(outputs(adapter, batches[0]), before, rtol=0, atol=1e-6)


def test_pruned_model_saves_reloads_exactly_and_generates(llama, tmp_path):
    adapter, batches = llama
    prune_to_param_sparsity(adapter, 0.4, ["heads", "neurons", "layers"], random_scores(adapter, seed=1))
    save_pruned(adapter, tmp_path / "m")
    again = load_pruned(tmp_path / "m")
    torch.testing.assert_close(outputs(again, batches[0]), outputs(adapter, batches[0]), rtol=0, atol=0)
    prompt = batches[0]["input_ids"][:1, :5]
    out = again.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                               do_sample=False, pad_token_id=0)
    assert out.shape == (1, 11)


def test_random_scores_are_seeded():
    a = load_adapter("tiny-llama")
    s1, s2, s3 = random_scores(a, 0), random_scores(a, 0), random_scores(a, 1)
    assert all(torch.equal(x, y) for x, y in zip(s1["neurons"], s2["neurons"]))
    assert not torch.equal(s1["neurons"][0], s3["neurons"][0])


def test_bad_input_is_refused(llama):
    adapter, batches = llama
    scores = random_scores(adapter)
    with pytest.raises(ValueError, match=r"param_sparsity must be in \[0, 1\)"):
        prune_to_param_sparsity(adapter, 1.0, ["neurons"], scores)
    with pytest.raises(ValueError, match="targets: 'filters'"):
        prune_to_param_sparsity(adapter, 0.2, ["filters"], scores)
    with pytest.raises(ValueError, match="most achievable"):
        prune_to_param_sparsity(adapter, 0.9, ["heads"], scores)
    with pytest.raises(ValueError, match="unknown importance 'psychic'"):
        score(adapter, "psychic", batches)


def test_targets_the_architecture_lacks_is_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgeadapt.models.registry import wrap

    # multi-query attention: one KV head per layer, so no head unit can go; one layer: no layer can go
    config = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=1, intermediate_size=64)
    adapter = wrap(LlamaForCausalLM(config), None, "mqa-llama")
    with pytest.raises(InfeasibleError, match="1 KV head unit per layer.*no heads can be removed"):
        prune_to_param_sparsity(adapter, 0.2, ["heads"], random_scores(adapter))
    with pytest.raises(InfeasibleError, match="the model has 1 layer and keeps at least one"):
        prune_to_param_sparsity(adapter, 0.2, ["layers"], random_scores(adapter))


def test_protected_layers_keep_every_unit(llama):
    adapter, batches = llama
    outcome = prune_to_param_sparsity(adapter, 0.3, ["heads", "neurons"], score(adapter, "taylor", batches),
                                      protect_first=1)
    first, second = outcome.plan.blocks
    assert first.heads is None and first.neurons is None  # untouched
    assert len(outcome.plan.kept_neurons(second)) < adapter.base_config.intermediate_size
    assert abs(outcome.param_sparsity - 0.3) < 0.02


def block_params(adapter) -> int:
    return sum(p.numel() for p in adapter.model.model.layers.parameters())


def test_unit_budget_removes_that_fraction_of_every_kind(llama):
    adapter, batches = llama
    dense = [(layer.self_attn.k_proj.out_features, layer.mlp.gate_proj.out_features)
             for layer in adapter.model.model.layers]
    outcome = prune_to_unit_sparsity(adapter, 0.5, ["heads", "neurons"], score(adapter, "taylor", batches))
    got = [(layer.self_attn.k_proj.out_features, layer.mlp.gate_proj.out_features)
           for layer in adapter.model.model.layers]
    assert got == [(k // 2, n // 2) for k, n in dense]
    assert outcome.unit_sparsity == 0.5 and outcome.layers_dropped == 0
    assert 0.45 < outcome.param_sparsity < 0.55  # a by-product here, not the target


def test_unit_budget_on_layers_drops_round_s_times_l(llama):
    adapter, batches = llama
    outcome = prune_to_unit_sparsity(adapter, 0.5, ["layers"], random_scores(adapter))
    assert outcome.layers_dropped == 1 and len(adapter.model.model.layers) == 1


def test_param_budget_hits_the_parameter_share_not_the_unit_share(llama):
    adapter, batches = llama
    before = block_params(adapter)
    outcome = prune_to_param_sparsity(adapter, 0.3, ["neurons"], score(adapter, "taylor", batches))
    assert abs(1 - block_params(adapter) / before - 0.3) < 0.01
    assert outcome.unit_sparsity > 0.4  # FFN neurons hold ~2/3 of the block: more than 30% of them go
    assert outcome.param_sparsity == pytest.approx(1 - block_params(adapter) / before)


def test_prune_takes_either_budget_by_name(llama):
    from edgeadapt.pruning.prune import prune

    adapter, batches = llama
    unit = prune(load_adapter("tiny-llama"), ["neurons"], "taylor", batches, unit_sparsity=0.25)
    assert all(len(unit.kept_neurons(b)) == 96 for b in unit.blocks)  # 128 -> 96 in every layer
    before = block_params(adapter)
    prune(adapter, ["neurons"], "taylor", batches, param_sparsity=0.3)
    assert abs(1 - block_params(adapter) / before - 0.3) < 0.01
    with pytest.raises(ValueError, match="exactly one budget: unit_sparsity .* or param_sparsity"):
        prune(adapter, ["neurons"], "magnitude", unit_sparsity=0.2, param_sparsity=0.2)
    with pytest.raises(ValueError, match="exactly one budget"):
        prune(adapter, ["neurons"], "magnitude")
    with pytest.raises(TypeError, match="budget by name"):
        prune(adapter, 0.5, ["neurons"], "magnitude")
