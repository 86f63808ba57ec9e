"""Reordering units is function-preserving, invertible, and makes every prefix width valid."""

from __future__ import annotations

import pytest
import torch

from edgeadapt.pruning.apply import apply_plan
from edgeadapt.pruning.groups import num_units
from edgeadapt.pruning.importance import score
from edgeadapt.pruning.ops import weight_matrix
from edgeadapt.pruning.plan import PruningPlan
from edgeadapt.pruning.reorder import inverse, permuted_state, reorder_units
from tests.conftest import ALL, make_batches, outputs, state

KINDS = ["heads", "neurons"]


def random_orders(adapter, kinds, seed: int = 0) -> dict[int, dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    return {pos: {k: torch.randperm(num_units(b, k), generator=g).tolist() for k in kinds}
            for pos, b in enumerate(adapter.blocks())}


@pytest.mark.parametrize("name", ALL)
def test_random_reorder_keeps_outputs_and_inverse_restores_state(name, load):
    adapter = load(name)
    batch = make_batches(adapter, n=1, size=2, length=12)[0]
    before, sd = outputs(adapter, batch), state(adapter)
    orders = random_orders(adapter, KINDS)  # a wrong member of either kind changes the outputs
    predicted = permuted_state(adapter, orders)
    reorder_units(adapter, orders)
    after = adapter.model.state_dict()
    assert all(torch.equal(predicted[k], after[k]) for k in sd)
    torch.testing.assert_close(outputs(adapter, batch), before, atol=1e-5, rtol=0)
    reorder_units(adapter, {p: {k: inverse(o) for k, o in ks.items()} for p, ks in orders.items()})
    assert all(torch.equal(sd[k], v) for k, v in adapter.model.state_dict().items())


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_moves_only_its_own_members(kind, load):
    adapter = load("tiny-llama")
    sd = state(adapter)
    reorder_units(adapter, random_orders(adapter, [kind]))
    moved = {k.split(".")[-2] for k, v in adapter.model.state_dict().items() if not torch.equal(sd[k], v)}
    assert moved == ({"q_proj", "k_proj", "v_proj", "o_proj"} if kind == "heads" else
                     {"gate_proj", "up_proj", "down_proj"})


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_fused_and_gqa_units_move_whole(name, load):
    """GPT-2 permutes q, k and v each within its own section of c_attn; Llama moves a KV head
    together with all its query heads (and their o columns)."""
    adapter = load(name)
    attn = adapter.blocks()[0].attention
    order = list(reversed(range(attn.num_units)))
    matrix = lambda path: weight_matrix(adapter.model.get_submodule(path)).detach().clone()  # noqa: E731
    old = {s: matrix(s.module) for s in (attn.q, attn.k, attn.v, attn.o)}
    reorder_units(adapter, {0: {"heads": order}})
    qw, d = attn.queries_per_unit * attn.head_dim, attn.head_dim
    for s, width in ((attn.q, qw), (attn.k, d), (attn.v, d), (attn.o, qw)):
        new = matrix(s.module)
        if s.axis == "in":
            new, before = new.T, old[s].T
        else:
            before = old[s]
        for i, u in enumerate(order):
            a, b = s.offset + i * width, s.offset + u * width
            assert torch.equal(new[a:a + width], before[b:b + width])


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gpt2", "tiny-llama"])
def test_reordering_a_pruned_adapter_keeps_outputs(name, load):
    adapter = load(name)
    batch = make_batches(adapter, n=1)[0]
    plan = PruningPlan.dense(adapter.fingerprint())
    plan.blocks[0].neurons = list(range(0, plan.architecture["ffn_width"], 3))
    plan.blocks[-1].heads = [0, plan.architecture["num_kv_heads"] - 1]
    apply_plan(adapter, plan)
    before = outputs(adapter, batch)
    orders = random_orders(adapter, KINDS, seed=3)
    assert len(orders[0]["neurons"]) == len(plan.blocks[0].neurons)  # local positions
    reorder_units(adapter, orders)
    torch.testing.assert_close(outputs(adapter, batch), before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad, match", [
    ({0: {"heads": [0, 0, 1, 2]}}, "block 0 heads"),
    ({1: {"neurons": list(range(127))}}, "block 1 neurons"),
    ({1: {"heads": [0.0, 1.0, 2.0, 3.0]}}, "block 1 heads"),
    ({0: {"heads": [3, 2, 1, 0]}, 1: {"neurons": [5] * 128}}, "block 1 neurons"),
    ({0: {"layers": [0, 1]}}, "kind"),
    ({9: {"heads": [0, 1, 2, 3]}}, "out of range"),
])
def test_non_permutations_are_refused_and_leave_the_model_untouched(bad, match, load):
    adapter = load("tiny-bert")
    sd = state(adapter)
    with pytest.raises(ValueError, match=match):
        reorder_units(adapter, bad)
    assert all(torch.equal(sd[k], v) for k, v in state(adapter).items())


@pytest.mark.parametrize("name", ALL)
def test_after_importance_order_every_prefix_is_the_pruned_model(name, load):
    """Dropping the last units of the reordered model == pruning the least important units."""
    fm = load(name)
    batch = make_batches(fm, n=1, size=2, length=12)[0]
    scores = score(fm, "magnitude")
    kb = load(name)
    reorder_units(kb, {p: {k: torch.argsort(scores[k][p], descending=True, stable=True) for k in KINDS}
                       for p in range(len(kb.blocks()))})
    fm_plan, kb_plan = PruningPlan.dense(fm.fingerprint()), PruningPlan.dense(kb.fingerprint())
    for pos, (fp, kp) in enumerate(zip(fm_plan.blocks, kb_plan.blocks)):
        for kind in KINDS:
            s = scores[kind][pos]
            keep = max(1, s.numel() // 2 - pos)  # a different width per block
            setattr(fp, kind, sorted(torch.argsort(s, descending=True)[:keep].tolist()))
            setattr(kp, kind, list(range(keep)))
    apply_plan(fm, fm_plan)
    apply_plan(kb, kb_plan)
    assert sum(p.numel() for p in fm.model.parameters()) == sum(p.numel() for p in kb.model.parameters())
    torch.testing.assert_close(outputs(kb, batch), outputs(fm, batch), atol=1e-5, rtol=0)
