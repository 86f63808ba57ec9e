"""Adapters describe every family's structure correctly and run their task."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from edgeadapt.models.adapter import ArchSpec
from edgeadapt.models.families import register_family
from edgeadapt.models.registry import load_adapter
from tests.conftest import ALL, make_batches

EXPECTED = {  # name: (layers, heads, kv heads, ffn width, task)
    "tiny-vit": (4, 4, 4, 128, "classification"),
    "tiny-bert": (2, 4, 4, 128, "classification"),
    "tiny-gpt2": (2, 4, 4, 256, "causal-lm"),
    "tiny-opt": (2, 4, 4, 128, "causal-lm"),
    "tiny-llama": (2, 4, 2, 128, "causal-lm"),
    "minilm": (6, 12, 12, 1536, "sentence-embedding"),
}


@pytest.mark.parametrize("name", ALL)
def test_blocks_match_config_and_weights(name, load):
    adapter = load(name)
    layers, heads, kv, ffn, task = EXPECTED[name]
    blocks = adapter.blocks()
    assert len(blocks) == layers and adapter.task.name == task
    for b in blocks:
        a = b.attention
        assert (a.num_heads, a.num_kv_heads, b.mlp.width) == (heads, kv, ffn)
        for s in (a.q, a.k, a.v, *b.mlp.inputs):
            w = adapter.model.get_submodule(s.module).weight
            assert max(w.shape) >= (s.offset + (s.size or 0))
        for norm in b.norms:
            assert adapter.model.get_submodule(norm).weight.shape[-1] == adapter.fingerprint()["hidden_size"]


@pytest.mark.parametrize("name", ALL)
def test_task_loss_backpropagates_and_features_have_hidden_width(name, load):
    adapter = load(name)
    batch = make_batches(adapter, n=1)[0]
    loss = adapter.task_loss(batch)
    assert torch.isfinite(loss)
    loss.backward()
    q = adapter.model.get_submodule(adapter.blocks()[0].attention.q.module)
    assert q.weight.grad is not None and q.weight.grad.abs().sum() > 0
    feats = adapter.features(batch)
    assert feats.shape[0] == 4 and feats.shape[-1] == adapter.fingerprint()["hidden_size"]


def test_gqa_units_group_query_heads():
    adapter = load_adapter("tiny-llama")
    attn = adapter.blocks()[0].attention
    assert attn.num_units == 2 and attn.queries_per_unit == 2


def test_gpt2_fused_qkv_sections_cover_c_attn():
    attn = load_adapter("tiny-gpt2").blocks()[0].attention
    assert attn.q.module == attn.k.module == attn.v.module
    assert (attn.q.offset, attn.k.offset, attn.v.offset) == (0, 64, 128)


def test_unknown_model_name_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown model 'tiny-nope'.*tiny-llama"):
        load_adapter("tiny-nope")


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown task 'poetry'"):
        load_adapter("tiny-llama", task="poetry")


def test_family_without_that_task_is_refused():
    with pytest.raises(ValueError, match="no 'image-classification' variant"):
        load_adapter("tiny-llama", task="image-classification")


def test_local_directory_loads_with_same_outputs(tmp_path):
    adapter = load_adapter("tiny-llama")
    adapter.model.save_pretrained(tmp_path)
    adapter.tokenizer.save_pretrained(tmp_path)
    again = load_adapter(tmp_path)
    batch = make_batches(adapter, n=1)[0]
    with torch.no_grad():
        torch.testing.assert_close(again.model(input_ids=batch["input_ids"]).logits,
                                   adapter.model(input_ids=batch["input_ids"]).logits)
    assert again.tokenizer is not None


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_adapter(tmp_path)


def test_tiny_models_are_seeded():
    a, b = load_adapter("tiny-opt", seed=3), load_adapter("tiny-opt", seed=3)
    c = load_adapter("tiny-opt", seed=4)
    wa, wb, wc = (x.model.lm_head.weight for x in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_registering_a_duplicate_model_type_fails():
    spec = ArchSpec(family="bert2", model_types=("bert",), layers="x", attention="a", q="q", k="k", v="v",
                    o="o", mlp_inputs=("i",), mlp_output="o2", norms=(), embeddings=())
    with pytest.raises(ValueError, match="already registered"):
        register_family(spec)


def test_registering_a_malformed_family_fails():
    spec = ArchSpec(family="bad name!", model_types=("x",), layers="x", attention="a", q="q", k="k", v="v",
                    o="o", mlp_inputs=("i",), mlp_output="o2", norms=(), embeddings=())
    with pytest.raises(ValueError, match="alphanumeric"):
        register_family(spec)


def test_building_a_seeded_tiny_model_leaves_the_global_rng_untouched():
    torch.manual_seed(11)
    before = torch.random.get_rng_state()
    load_adapter("tiny-llama", seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_a_custom_family_registered_before_any_lookup_does_not_hide_the_builtins():
    # A fresh interpreter, so nothing has looked a family up yet.
    script = textwrap.dedent("""
        from edgeadapt.models.adapter import ArchSpec
        from edgeadapt.models.families import family_for, register_family
        register_family(ArchSpec(family="mine", model_types=("my-arch",), layers="blocks", attention="a",
                                 q="a.q", k="a.k", v="a.v", o="a.o", mlp_inputs=("fc1",), mlp_output="fc2",
                                 norms=(), embeddings=("embed",)))
        assert family_for("my-arch").family == "mine"
        assert family_for("llama").family == "llama" and family_for("vit").modality == "image"
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_head_attributes_are_data_checked_when_the_spec_is_built():
    fields = dict(family="x", model_types=("x",), layers="x", attention="a", q="q", k="k", v="v", o="o",
                  mlp_inputs=("i",), mlp_output="o2", norms=(), embeddings=())
    assert ArchSpec(**fields, head_attributes={"split": "heads * head_dim"}).head_attributes == \
        {"split": "heads*head_dim"}
    with pytest.raises(ValueError, match="not quantities"):
        ArchSpec(**fields, head_attributes={"split": "__import__('os').getcwd()"})
    with pytest.raises(ValueError, match="modality"):
        ArchSpec(**fields, modality="audio")


@pytest.mark.parametrize("name,attrs", [("tiny-gpt2", {"num_heads": 2, "split_size": 32}),
                                        ("tiny-bert", {"num_attention_heads": 2, "all_head_size": 32})])
def test_set_attention_units_sets_the_table_quantities(name, attrs):
    adapter = load_adapter(name)
    adapter.set_attention_units(0, 2)
    module = adapter.model.get_submodule(adapter.blocks()[0].attention.module)
    assert {a: getattr(module, a) for a in attrs} == attrs


@pytest.mark.parametrize("name,modality", [("tiny-vit", "image"), ("tiny-bert", "text"), ("tiny-llama", "text")])
def test_modality_comes_from_the_family_table(name, modality, tmp_path):
    from edgeadapt.models.registry import model_modality

    adapter = load_adapter(name)
    assert adapter.modality == adapter.spec.modality == modality == model_modality(name)
    adapter.model.save_pretrained(tmp_path)
    assert model_modality(tmp_path) == modality


def test_identity_is_set_through_the_constructor_and_rebase():
    from edgeadapt.models.registry import wrap
    from edgeadapt.pruning.apply import apply_plan
    from edgeadapt.pruning.plan import PruningPlan

    adapter = load_adapter("tiny-bert")
    declared = wrap(adapter.model, base_hash="ab" * 32)
    assert declared.base_hash() == "ab" * 32 and declared.parent_hash is None
    declared.rebase()
    assert declared.parent_hash == "ab" * 32 and declared.base_hash() == adapter.base_hash()
    pruned = load_adapter("tiny-bert")
    plan = PruningPlan.dense(pruned.fingerprint())
    plan.blocks[0].neurons = list(range(64))
    apply_plan(pruned, plan)
    with pytest.raises(ValueError, match="pruned"):
        pruned.rebase()
