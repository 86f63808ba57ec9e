"""The torch-pruning peer for Llama LMs removes exactly the requested units and keeps the model runnable."""

from __future__ import annotations

import copy
import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import torch

from tests.conftest import make_batches

_PATH = Path(__file__).resolve().parents[3] / "benchmarks" / "peer_torch_pruning_llm.py"


def _load_peer():
    """Import the benchmark module by path (``benchmarks/`` is not a package)."""
    if "peer_torch_pruning_llm" not in sys.modules:
        spec = importlib.util.spec_from_file_location("peer_torch_pruning_llm", _PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules["peer_torch_pruning_llm"]


peer = _load_peer()
prune = peer.prune_llama_with_torch_pruning


@pytest.fixture(scope="module")
def tiny():
    from edgeadapt.models.registry import load_adapter

    adapter = load_adapter("tiny-llama")
    return adapter, make_batches(adapter, n=2, size=4, length=16)


def _fresh(tiny):
    adapter, batches = tiny
    return copy.deepcopy(adapter.model).eval(), batches, adapter.task.loss


def _logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("importance", ["taylor", "magnitude", "random"])
@pytest.mark.parametrize("target", ["neurons", "heads", "both"])
def test_removes_exact_counts_and_still_generates(tiny, target, importance):
    model, batches, loss = _fresh(tiny)
    c = model.config
    hidden, width, head_dim, layers = c.hidden_size, c.intermediate_size, c.head_dim, c.num_hidden_layers
    heads, kv = c.num_attention_heads, c.num_key_value_heads
    rep = heads // kv
    mlp = model.model.layers[0].mlp
    assert all(m.bias is None for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    n_neurons = round(0.5 * width) if target in ("neurons", "both") else 0
    n_groups = round(0.5 * kv) if target in ("heads", "both") else 0
    # Bias-free Llama: a neuron owns a gate row, an up row and a down column; a KV group owns
    # k and v rows plus `rep` query heads' q rows and o columns.
    removed = layers * hidden * (3 * n_neurons + n_groups * head_dim * (2 * rep + 2))
    before = _n_params(model)

    assert prune(model, target, 0.5, importance, batches, loss) is model

    assert before - _n_params(model) == removed
    assert (c.intermediate_size, c.num_key_value_heads) == (width - n_neurons, kv - n_groups)
    assert (c.num_attention_heads, c.hidden_size, c.head_dim) == (heads - n_groups * rep, hidden, head_dim)
    ids = batches[0]["input_ids"]
    assert _logits(model, batches[0]).shape == (*ids.shape, c.vocab_size)
    out = model.generate(ids[:1, :5], attention_mask=torch.ones(1, 5, dtype=torch.long),
                         max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 8)


def test_target_list_is_both(tiny):
    (a, batches, loss), (b, _, _) = _fresh(tiny), _fresh(tiny)
    prune(a, "both", 0.25, "magnitude", batches, loss)
    prune(b, ["heads", "neurons"], 0.25, "magnitude", batches, loss)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_zero_sparsity_changes_nothing(tiny):
    model, batches, loss = _fresh(tiny)
    ref, state = _logits(model, batches[0]), copy.deepcopy(model.state_dict())
    prune(model, "both", 0.0, "taylor", batches, loss)
    assert torch.equal(_logits(model, batches[0]), ref)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("importance", ["taylor", "magnitude"])
def test_zeroed_neuron_goes_first(tiny, importance):
    model, batches, loss = _fresh(tiny)
    victims = [5, 77]  # a different channel in each layer
    with torch.no_grad():
        for layer, j in zip(model.model.layers, victims):
            layer.mlp.gate_proj.weight[j] = 0
            layer.mlp.up_proj.weight[j] = 0
            layer.mlp.down_proj.weight[:, j] = 0
    ref, gate = _logits(model, batches[0]), [l.mlp.gate_proj.weight.clone() for l in model.model.layers]

    prune(model, "neurons", 1 / model.config.intermediate_size, importance, batches, loss)

    for layer, j, w in zip(model.model.layers, victims, gate):
        assert torch.equal(layer.mlp.gate_proj.weight, torch.cat([w[:j], w[j + 1:]]))
    assert torch.equal(_logits(model, batches[0]), ref)  # removing a zero unit is exact


@pytest.mark.parametrize("importance", ["taylor", "magnitude"])
def test_zeroed_kv_group_goes_first(tiny, importance):
    model, batches, loss = _fresh(tiny)
    c = model.config
    d, rep = c.head_dim, c.num_attention_heads // c.num_key_value_heads
    victims = [1, 0]  # a different KV group in each layer
    with torch.no_grad():
        for layer, g in zip(model.model.layers, victims):
            a = layer.self_attn
            q = slice(g * rep * d, (g + 1) * rep * d)
            a.q_proj.weight[q] = 0
            a.o_proj.weight[:, q] = 0
            a.k_proj.weight[g * d:(g + 1) * d] = 0
            a.v_proj.weight[g * d:(g + 1) * d] = 0
    ref, k = _logits(model, batches[0]), [l.self_attn.k_proj.weight.clone() for l in model.model.layers]

    prune(model, "heads", 0.5, importance, batches, loss)

    for layer, g, w in zip(model.model.layers, victims, k):
        assert torch.equal(layer.self_attn.k_proj.weight, torch.cat([w[:g * d], w[(g + 1) * d:]]))
    assert torch.equal(_logits(model, batches[0]), ref)  # removing a zero unit is exact


@pytest.mark.parametrize("importance", ["taylor", "magnitude"])
def test_without_gqa_matches_torch_pruning_traced_heads(importance):
    """Where torch-pruning can trace the attention (no GQA), the declared group picks the same heads."""
    import torch_pruning as tp
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=8, intermediate_size=96, pad_token_id=0)
    base = LlamaForCausalLM(config).eval()
    ids = torch.randint(1, 128, (4, 12))
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]

    def loss(model, batch):
        return model(**batch, labels=batch["input_ids"]).loss

    ours = prune(copy.deepcopy(base), "heads", 0.5, importance, batches, loss)

    ref = copy.deepcopy(base)
    if importance == "taylor":
        imp = tp.importance.GroupTaylorImportance()
        loss(ref, batches[0]).backward()
    else:
        imp = tp.importance.GroupMagnitudeImportance(p=2)
    attn = [layer.self_attn for layer in ref.model.layers]
    ignored = [ref.model.embed_tokens, ref.lm_head]
    mlps = [layer.mlp for layer in ref.model.layers]
    ignored += [lin for mlp in mlps for lin in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)]
    ratio = (4 - 0.5) / 8  # removes exactly 4 of 8 heads (torch-pruning takes the ceiling)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # untraced RMSNorm weights sit in the unpruned hidden group
        tp.pruner.BasePruner(
            ref, example_inputs={**batches[0], "use_cache": False}, importance=imp, global_pruning=False,
            pruning_ratio=ratio, ignored_layers=ignored, output_transform=lambda out: out.logits,
            num_heads={lin: 8 for a in attn for lin in (a.q_proj, a.k_proj, a.v_proj)},
            prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio,
        ).step()

    got, want = ours.state_dict(), ref.state_dict()
    assert ours.model.layers[0].self_attn.q_proj.out_features == 32
    assert all(got[k].shape == want[k].shape and torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("kwargs", [dict(target="layers"), dict(importance="hessian"), dict(sparsity=1.0),
                                    dict(sparsity=0.9)])  # 0.9 * 2 KV heads rounds to both
def test_refuses_bad_arguments(tiny, kwargs):
    model, batches, loss = _fresh(tiny)
    args = dict(target="heads", sparsity=0.5, importance="magnitude") | kwargs
    with pytest.raises(ValueError):
        prune(model, args["target"], args["sparsity"], args["importance"], batches, loss)
