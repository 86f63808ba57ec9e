"""The neuron index maps KB units to FM units exactly, persists safely, and refuses other models."""

from __future__ import annotations

import json

import pytest
import torch

from edgeadapt.artifacts import ArtifactError, write_manifest
from edgeadapt.models.registry import load_adapter
from edgeadapt.offline.neuron_index import (
    NeuronIndex,
    build_index,
    check_index_matches,
    kb_state_to_fm,
    load_index,
    save_index,
    to_fm,
    to_kb,
)
from edgeadapt.pruning.apply import apply_plan
from edgeadapt.pruning.groups import block_members
from edgeadapt.pruning.importance import score
from edgeadapt.pruning.ops import is_transposed, weight_matrix
from edgeadapt.pruning.plan import PruningPlan
from tests.conftest import ALL, TINY, make_batches, outputs, state


def random_scores(adapter, seed: int = 0) -> dict[str, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {"heads": [torch.rand(b.attention.num_units, generator=g) for b in adapter.blocks()],
            "neurons": [torch.rand(b.mlp.width, generator=g) for b in adapter.blocks()]}


def ascending_scores(adapter) -> dict[str, list[torch.Tensor]]:
    """Scores that reverse every block: KB unit 0 is the FM's last unit."""
    return {"heads": [torch.arange(b.attention.num_units).float() for b in adapter.blocks()],
            "neurons": [torch.arange(b.mlp.width).float() for b in adapter.blocks()]}


@pytest.mark.parametrize("name", ALL)
def test_fm_kb_fm_round_trip_is_exact_and_trained_kb_syncs(name, load):
    fm = load(name)
    batch = make_batches(fm, n=1, size=2, length=12)[0]
    fm_state, before = state(fm), outputs(fm, batch)
    index = build_index(fm, random_scores(fm))
    kb = to_kb(fm, index)
    assert (kb.base_hash(), kb.fingerprint()) == (fm.base_hash(), fm.fingerprint())  # KB names its FM
    assert any(not torch.equal(fm_state[k], v) for k, v in kb.model.state_dict().items())
    torch.testing.assert_close(outputs(kb, batch), before, atol=1e-5, rtol=0)
    back = to_fm(kb, index)
    assert all(torch.equal(fm_state[k], v) for k, v in back.model.state_dict().items())
    synced = kb_state_to_fm(kb, index)
    assert synced.keys() == fm_state.keys() and all(torch.equal(fm_state[k], synced[k]) for k in fm_state)
    assert all(torch.equal(fm_state[k], v) for k, v in fm.model.state_dict().items())  # FM untouched

    # "Training": perturb every block weight of the KB; the synced FM must compute what the KB computes.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in kb.model.get_submodule(kb.layers_path()).parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    fm.model.load_state_dict(kb_state_to_fm(kb, index))
    torch.testing.assert_close(outputs(fm, batch), outputs(kb, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", TINY)
def test_a_kb_unit_edit_lands_at_its_fm_unit_and_nowhere_else(name, load):
    fm = load(name)
    index = build_index(fm, ascending_scores(fm))
    kb = to_kb(fm, index)
    fm_state = state(fm)
    b0, last = kb.blocks()[0], kb.blocks()[-1]
    q = block_members(b0, "heads")[0]
    out = next(m for m in block_members(last, "neurons") if m.slice.axis == "in")
    with torch.no_grad():
        weight_matrix(kb.model.get_submodule(q.slice.module))[q.index[0]] += 1.0  # KB head 0's q rows
        weight_matrix(kb.model.get_submodule(out.slice.module))[:, out.index[0]] += 1.0  # KB neuron 0
    synced = kb_state_to_fm(kb, index)
    head, neuron = index.blocks[0].heads[0], index.blocks[-1].neurons[0]
    assert (head, neuron) == (b0.attention.num_units - 1, last.mlp.width - 1)
    changed = {k for k in fm_state if not torch.equal(fm_state[k], synced[k])}
    assert changed == {f"{q.slice.module}.weight", f"{out.slice.module}.weight"}
    for member, unit, axis in ((q, head, 0), (out, neuron, 1)):
        key = f"{member.slice.module}.weight"
        diff = synced[key] - fm_state[key]
        diff = diff.T if is_transposed(fm.model.get_submodule(member.slice.module)) else diff  # as [out, in]
        hit = torch.nonzero((diff != 0).any(dim=1 - axis)).reshape(-1)
        assert hit.tolist() == member.index[unit].tolist()  # FM positions, not KB positions
        assert torch.allclose(diff.index_select(axis, hit), torch.ones(()))


def test_build_index_orders_by_descending_score_ties_keep_fm_order(load):
    fm = load("tiny-bert")
    scores = score(fm, "magnitude")
    index = build_index(fm, scores)
    for pos, b in enumerate(index.blocks):
        s = scores["neurons"][pos]
        assert s[list(b.neurons)].diff().le(0).all() and b.heads[0] == int(scores["heads"][pos].argmax())
    tied = {"heads": [torch.tensor([1.0, 2.0, 2.0, 1.0])] * 2, "neurons": [torch.zeros(128)] * 2}
    index = build_index(fm, tied)
    assert index.blocks[0].heads == (1, 2, 0, 3) and index.blocks[1].neurons == tuple(range(128))
    assert index.fm_units(0, "heads", [0, 1]) == [1, 2]
    assert index.kb_units(0, "heads", [1, 2, 0, 3]) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="KB heads positions 0..3, got \\[4\\]"):
        index.fm_units(0, "heads", [4])
    with pytest.raises(ValueError, match="got 1 tensors"):
        build_index(fm, {"heads": tied["heads"][:1], "neurons": tied["neurons"]})
    with pytest.raises(ValueError, match="scores\\['neurons'\\].*bad blocks \\[1\\]"):
        build_index(fm, {**tied, "neurons": [torch.zeros(128), torch.full((128,), torch.inf)]})


def test_save_load_round_trip_and_corruption(load, tmp_path):
    fm = load("tiny-llama")
    index = build_index(fm, random_scores(fm))
    d = save_index(index, tmp_path / "idx", config={"importance": "random"})
    assert load_index(d).to_dict() == index.to_dict()
    assert json.loads((d / "manifest.json").read_text())["config"] == {"importance": "random"}
    raw = bytearray((d / "index.json").read_bytes())
    raw[raw.index(b'"heads": [') + 11] ^= 1  # flip one digit of a head id
    (d / "index.json").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="corrupted"):
        load_index(d)
    bad = index.to_dict()
    bad["blocks"][0]["heads"] = [0, 0]
    (d / "index.json").write_text(json.dumps(bad))
    write_manifest(d, "neuron-index", 1, ["index.json"], base={"hash": index.base_hash})
    with pytest.raises(ArtifactError, match="not a valid neuron index.*permutation"):
        load_index(d)
    write_manifest(d, "pruned-model", 1, [])
    with pytest.raises(ArtifactError, match="expected 'neuron-index'"):
        load_index(d)
    with pytest.raises(ArtifactError, match="no manifest"):
        load_index(tmp_path / "missing")


def test_index_for_another_base_model_is_refused(load):
    fm = load("tiny-bert")
    index = build_index(fm, random_scores(fm))
    other = load_adapter("tiny-bert", seed=1)
    assert other.base_hash() != fm.base_hash()
    for fn in (check_index_matches, lambda i, a: to_kb(a, i), lambda i, a: kb_state_to_fm(a, i)):
        with pytest.raises(ValueError, match="another base model: same architecture but different weights"):
            fn(index, other)
    with pytest.raises(ValueError, match="architecture differs.*model_type"):
        check_index_matches(index, load("tiny-opt"))
    check_index_matches(index, fm)
    kb = to_kb(fm, index)
    check_index_matches(index, kb)  # the KB still identifies as its FM
    with pytest.raises(ValueError, match="already a knowledge base"):
        to_kb(kb, index)
    with pytest.raises(ValueError, match="made with another neuron index"):  # same FM, other order
        to_fm(kb, build_index(fm, random_scores(fm, seed=7)))
    plan = PruningPlan.dense(kb.fingerprint())
    plan.blocks[0].neurons = [0, 1]
    apply_plan(kb, plan)
    with pytest.raises(ValueError, match="needs the full-width model"):
        kb_state_to_fm(kb, index)


def _mutate(d: dict, path: str, value) -> dict:
    *keys, last = path.split(".")
    target = d
    for k in keys:
        target = target[int(k)] if isinstance(target, list) else target[k]
    target[int(last) if isinstance(target, list) else last] = value
    return d


@pytest.mark.parametrize("path, value, match", [
    ("blocks.0.heads", [0, 1, 2, 2], "block 0: heads must be a permutation of range\\(4\\)"),
    ("blocks.1.neurons", list(range(127)), "block 1: neurons must be a permutation of range\\(128\\)"),
    ("blocks.1.index", 5, "cover FM blocks 0..1"),
    ("architecture.ffn_width", 64, "block 0: neurons must be a permutation of range\\(64\\)"),
    ("base_hash", "", "base_hash"),
    ("format", "edgeadapt.pruning-plan", "not an edgeadapt neuron index"),
    ("version", 2, "version 2 is not supported"),
    ("blocks", [{"index": 0}], "malformed neuron index"),
])
def test_malformed_index_dicts_are_refused(path, value, match, load):
    fm = load("tiny-bert")
    d = build_index(fm, random_scores(fm)).to_dict()
    with pytest.raises(ValueError, match=match):
        NeuronIndex.from_dict(_mutate(d, path, value))


def test_a_kb_is_tagged_through_the_adapters_declared_field_only():
    from edgeadapt.offline.neuron_index import index_of

    fm = load_adapter("tiny-llama")
    index = build_index(fm, random_scores(fm))
    kb = to_kb(fm, index)
    assert set(vars(kb)) == set(vars(fm))  # no ad-hoc attribute appears on the KB
    assert index_of(kb) is kb.neuron_index is index and index_of(fm) is None
    back = to_fm(kb, index)
    assert index_of(back) is None and set(vars(back)) == set(vars(fm))
