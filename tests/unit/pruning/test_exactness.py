"""Structural operations are exact: the case table runs every adapter through every operation."""

from __future__ import annotations

import pytest
import torch

from edgeadapt.pruning.apply import apply_plan
from edgeadapt.pruning.checkpoint import load_pruned, save_pruned
from edgeadapt.pruning.groups import block_members
from edgeadapt.pruning.importance import member_values
from edgeadapt.pruning.ops import weight_matrix
from edgeadapt.pruning.plan import PruningPlan
from edgeadapt.pruning.prune import prune
from tests.conftest import ALL, TINY, make_batches, outputs

KINDS = ["heads", "neurons"]


def zero_units(adapter, kind: str, per_block: dict[int, list[int]]) -> None:
    """Zero every weight (and output bias) a unit owns, so removing it cannot change outputs."""
    with torch.no_grad():
        for b, units in per_block.items():
            for m in block_members(adapter.blocks()[b], kind):
                module = adapter.model.get_submodule(m.slice.module)
                idx = m.index[units].reshape(-1)
                w = weight_matrix(module)
                if m.slice.axis == "out":
                    w[idx] = 0
                    if getattr(module, "bias", None) is not None:
                        module.bias[idx] = 0
                else:
                    w[:, idx] = 0


def victims(adapter, kind: str) -> dict[int, list[int]]:
    """Half the units of every block, a different half per block (non-uniform positions)."""
    out = {}
    for b in adapter.blocks():
        n = b.attention.num_units if kind == "heads" else b.mlp.width
        g = torch.Generator().manual_seed(b.index)
        out[b.index] = sorted(torch.randperm(n, generator=g)[: n // 2].tolist())
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ALL)
def test_removing_zeroed_units_leaves_outputs_unchanged(name, kind, load):
    adapter = load(name)
    dead = victims(adapter, kind)
    zero_units(adapter, kind, dead)
    batch = make_batches(adapter, n=1)[0]
    before = outputs(adapter, batch)
    params_before = sum(p.numel() for p in adapter.model.parameters())
    plan = PruningPlan.dense(adapter.fingerprint())
    for bp in plan.blocks:
        n = len(plan.kept_heads(bp) if kind == "heads" else plan.kept_neurons(bp))
        kept = [u for u in range(n) if u not in dead[bp.index]]
        setattr(bp, kind, kept)
    apply_plan(adapter, plan)
    after = outputs(adapter, batch)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    assert sum(p.numel() for p in adapter.model.parameters()) < params_before


IMPORTANCE_CASES = [(n, i) for n in ALL for i in ("magnitude", "fisher")] + [
    (n, i) for n in TINY for i in ("magnitude-l2", "taylor", "activation")]


@pytest.mark.parametrize("name, importance", IMPORTANCE_CASES)
def test_importance_ranks_zeroed_units_last_and_pruning_them_is_exact(name, importance, load):
    adapter = load(name)
    dead = victims(adapter, "neurons")
    zero_units(adapter, "neurons", dead)
    batches = make_batches(adapter)
    before = outputs(adapter, batches[0])
    plan = prune(adapter, ["neurons"], importance, batches, unit_sparsity=0.5)
    for bp in plan.blocks:
        assert set(plan.kept_neurons(bp)).isdisjoint(dead[bp.index])
    torch.testing.assert_close(outputs(adapter, batches[0]), before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_full_width_plan_is_the_identity(name, load):
    adapter = load(name)
    batch = make_batches(adapter, n=1)[0]
    before = outputs(adapter, batch)
    state = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    apply_plan(adapter, PruningPlan.dense(adapter.fingerprint()))
    assert torch.equal(outputs(adapter, batch), before)
    assert all(torch.equal(state[k], v) for k, v in adapter.model.state_dict().items())


@pytest.mark.parametrize("name", ALL)
def test_zero_sparsity_prune_is_the_identity(name, load):
    adapter = load(name)
    batch = make_batches(adapter, n=1)[0]
    before = outputs(adapter, batch)
    prune(adapter, ["heads", "neurons", "layers"], "magnitude", unit_sparsity=0.0)
    assert torch.equal(outputs(adapter, batch), before)


@pytest.mark.parametrize("name", ALL)
def test_nonuniform_pruning_saves_and_reloads_exactly(name, load, tmp_path):
    adapter = load(name)
    batch = make_batches(adapter, n=1)[0]
    plan = PruningPlan.dense(adapter.fingerprint())
    a = plan.architecture
    plan.blocks[0].heads = [0] if a["num_kv_heads"] > 1 else None
    plan.blocks[0].neurons = list(range(0, a["ffn_width"], 3))
    plan.blocks[-1].neurons = list(range(a["ffn_width"] // 2))
    if len(plan.blocks) > 2:
        del plan.blocks[1]  # also remove a whole layer
    apply_plan(adapter, plan)
    expected = outputs(adapter, batch)
    save_pruned(adapter, tmp_path / "pruned")
    again = load_pruned(tmp_path / "pruned")
    assert torch.equal(outputs(again, batch), expected)
    assert [(b.attention.num_heads, b.mlp.width) for b in again.blocks()] == \
        [(b.attention.num_heads, b.mlp.width) for b in adapter.blocks()]
    assert again.plan.to_dict() == adapter.plan.to_dict()


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-opt", "tiny-llama"])
def test_pruned_causal_lms_generate_after_reload(name, load, tmp_path):
    adapter = load(name)
    prune(adapter, ["heads", "neurons", "layers"], "magnitude", unit_sparsity=0.5)
    save_pruned(adapter, tmp_path)
    again = load_pruned(tmp_path)
    prompt = make_batches(again, n=1)[0]["input_ids"][:1, :5]
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    a = adapter.model.generate(prompt, **kw)
    b = again.model.generate(prompt, **kw)
    assert a.shape == (1, 11) and torch.equal(a, b)


@pytest.mark.parametrize("name", ALL)
def test_layer_and_head_removal_change_params_exactly_as_predicted(name, load):
    adapter = load(name)
    total = lambda: sum(p.numel() for p in adapter.model.parameters())  # noqa: E731
    block0 = adapter.blocks()[0]
    layer_params = sum(p.numel() for p in adapter.model.get_submodule(block0.module).parameters())
    head_params = sum(member_values(adapter.model, m)[0].numel() for m in block_members(block0, "heads"))
    p0 = total()
    plan = PruningPlan.dense(adapter.fingerprint())
    plan.blocks[0].heads = list(range(1, plan.architecture["num_kv_heads"]))
    apply_plan(adapter, plan)
    assert total() == p0 - head_params
    remaining0 = sum(p.numel() for p in adapter.model.get_submodule(block0.module).parameters())
    plan = PruningPlan(plan.architecture, plan.blocks[1:])
    apply_plan(adapter, plan)
    assert total() == p0 - head_params - remaining0
    assert remaining0 == layer_params - head_params
    assert len(adapter.blocks()) == plan.architecture["num_layers"] - 1


def test_pruning_twice_composes_into_one_base_relative_plan(load, tmp_path):
    adapter = load("tiny-llama")
    batch = make_batches(adapter, n=1)[0]
    prune(adapter, ["neurons"], "magnitude", unit_sparsity=0.25)
    first = [list(adapter.plan.kept_neurons(b)) for b in adapter.plan.blocks]
    prune(adapter, ["neurons"], "magnitude", unit_sparsity=0.5)
    second = [list(adapter.plan.kept_neurons(b)) for b in adapter.plan.blocks]
    assert all(set(s) <= set(f) for s, f in zip(second, first))
    assert [len(s) for s in second] == [48, 48]  # 128 -> 96 -> 48
    save_pruned(adapter, tmp_path)
    torch.testing.assert_close(outputs(load_pruned(tmp_path), batch), outputs(adapter, batch), atol=0, rtol=0)
