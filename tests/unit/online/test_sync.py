"""Sync: an untouched proxy changes nothing, an edited unit lands at its KB and FM units only, sync
inverts extraction (the KB at the proxy's width computes the edited proxy), blend mixes, zero-saliency
units are kept, and bad input or a foreign proxy is refused before anything is written."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeadapt.models.registry import load_adapter
from edgeadapt.offline.knowledge_base import KBSettings, init_kb
from edgeadapt.offline.neuron_index import kb_state_to_fm
from edgeadapt.online.proxy import extract_proxy
from edgeadapt.online.sync import kb_to_fm, proxy_to_kb, sync
from edgeadapt.pruning.apply import apply_plan
from edgeadapt.pruning.groups import block_members
from edgeadapt.pruning.ops import is_transposed
from edgeadapt.pruning.plan import BlockPlan, PruningPlan
from tests.conftest import TINY, at_width, make_batches, outputs

CHEAP = KBSettings(importance="magnitude")


def seeded_kb(fm, batch, settings: KBSettings = CHEAP):
    with torch.random.fork_rng(devices=[]):  # the gates' first layers draw from the global RNG
        torch.manual_seed(0)
        return init_kb(fm, [batch], settings)


def constant_gates(kb, seed: int = 0) -> None:
    """Saturated gates (last-layer weights 0) with biases in [0.5, 1.5): input-independent saliency
    != 1, so folding matters and the kept set is no prefix."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in kb.gates.gates:
            for out in (gate.heads, gate.neurons):
                out.bias.copy_(0.5 + torch.rand(out.bias.shape, generator=g))


def setup(name: str, gates: str = "constant"):
    fm = load_adapter(name)
    batch = make_batches(fm, n=1, size=4, length=12)[0]
    kb = seeded_kb(fm, batch)
    if gates == "constant":
        constant_gates(kb)
    else:  # "trained": input-dependent saliency
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in kb.gates.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return fm, kb, batch


def state(adapter) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in adapter.model.named_parameters()}


def assert_same(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def train(proxy, only: str = "", scale: float = 0.02) -> None:
    """Stand-in for edge retraining: noise on every proxy parameter whose name starts with ``only``."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in proxy.adapter.model.named_parameters():
            if n.startswith(only):
                p.add_(scale * torch.randn(p.shape, generator=g))


# -- no-op -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("width", [0.5, 1.0])
@pytest.mark.parametrize("name", TINY)
def test_syncing_an_untrained_proxy_changes_nothing(name, width):
    fm, kb, batch = setup(name)
    kb0, fm0 = state(kb.adapter), state(fm)
    proxy = extract_proxy(kb, [batch], width)
    assert any((t - 1).abs().max() > 0.1 for t in proxy.saliency.heads_raw)  # folding is not trivial
    counts = sync(kb, proxy, fm)
    assert_same(state(kb.adapter), kb0)
    assert_same(state(fm), fm0)
    assert counts["tensors_updated"] == len(kb0)  # every KB parameter received proxy values
    assert counts["values_updated"] == sum(p.numel() for p in proxy.adapter.model.parameters())


# -- an edit lands where the plan says -------------------------------------------------------------

def _changed(before: torch.Tensor, after: torch.Tensor, transposed: bool) -> torch.Tensor:
    mask = (after - before).abs() > 1e-4  # folding/unfolding rounds by an ulp elsewhere
    return mask.T if transposed else mask  # as [out, in]


def _edit_masks(adapter, q_unit: int, neuron: int) -> dict[str, torch.Tensor]:
    """Expected [out, in] change masks: q rows of head unit ``q_unit`` in the first block and the first
    MLP input row of ``neuron`` in the last block."""
    first, last = adapter.blocks()[0], adapter.blocks()[-1]
    q = block_members(first, "heads")[0]
    up = block_members(last, "neurons")[0]
    masks = {}
    for member, unit in ((q, q_unit), (up, neuron)):
        module = adapter.model.get_submodule(member.slice.module)
        w = module.weight.T if is_transposed(module) else module.weight
        mask = torch.zeros(w.shape, dtype=torch.bool)
        mask[member.index[unit]] = True
        masks[f"{member.slice.module}.weight"] = mask
    return masks


@pytest.mark.parametrize("name", TINY)
def test_an_edited_proxy_unit_lands_at_its_kb_and_fm_units_and_nowhere_else(name):
    fm, kb, batch = setup(name)
    proxy = extract_proxy(kb, [batch], 0.5)
    edits = _edit_masks(proxy.adapter, 0, 1)  # local head 0 of block 0, local neuron 1 of the last block
    with torch.no_grad():
        for pname, mask in edits.items():
            module = proxy.adapter.model.get_submodule(pname.rpartition(".")[0])
            (module.weight.T if is_transposed(module) else module.weight)[mask] += 0.5
    kb_head, kb_neuron = proxy.plan.blocks[0].heads[0], proxy.plan.blocks[-1].neurons[1]

    for target, sync_step, (head, neuron) in (
            (kb.adapter, lambda: proxy_to_kb(kb, proxy), (kb_head, kb_neuron)),
            (fm, lambda: kb_to_fm(kb, fm), (kb.index.fm_units(0, "heads", [kb_head])[0],
                                            kb.index.fm_units(len(kb.index.blocks) - 1, "neurons",
                                                              [kb_neuron])[0]))):
        before = state(target)
        sync_step()
        after = state(target)
        expected = _edit_masks(target, head, neuron)
        changed = {}
        for k in before:
            module = target.model.get_submodule(k.rpartition(".")[0])
            mask = _changed(before[k], after[k], is_transposed(module) and k.endswith("weight"))
            if mask.any():
                changed[k] = mask
        assert changed.keys() == expected.keys(), (target is fm, sorted(changed))
        for k, mask in expected.items():
            assert torch.equal(changed[k], mask), k
            diff = after[k] - before[k]
            torch.testing.assert_close(diff[diff.abs() > 1e-4], torch.full((int(mask.sum()),), 0.5),
                                       atol=1e-4, rtol=0)


# -- sync inverts extraction -----------------------------------------------------------------------

@pytest.mark.parametrize(("width", "gates"), [(0.5, "constant"), (1.0, "constant"), (0.5, "trained")])
@pytest.mark.parametrize("name", TINY)
def test_the_kb_at_the_proxys_width_computes_the_synced_proxy(name, width, gates):
    """Constant gates: every proxy parameter is edited. Trained (input-dependent) gates: only the
    last block, whose edits cannot change any gate's input, so the kept units stay the same."""
    fm, kb, batch = setup(name, gates)
    proxy = extract_proxy(kb, [batch], width)
    original = outputs(proxy.adapter, batch)
    train(proxy, "" if gates == "constant" else proxy.adapter.blocks()[-1].module + ".")
    edited = outputs(proxy.adapter, batch)
    assert (edited - original).abs().max() > 1e-3  # the edit matters
    proxy_to_kb(kb, proxy)
    torch.testing.assert_close(at_width(kb, width, batch), edited, atol=1e-4, rtol=0)
    if gates == "constant" and width == 1.0:  # and the FM now computes the (ungated) KB
        kb_to_fm(kb, fm)
        kb.gates.detach()
        try:
            torch.testing.assert_close(outputs(fm, batch), outputs(kb.adapter, batch), atol=1e-5, rtol=0)
        finally:
            kb.gates.attach(kb.adapter)


# -- blend and zero saliency -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])  # transposed Conv1D; GQA
def test_blend_half_moves_values_halfway(name):
    fm, kb, batch = setup(name)
    proxy = extract_proxy(kb, [batch], 0.5)
    train(proxy)
    kb0, fm0 = state(kb.adapter), state(fm)
    proxy_to_kb(kb, proxy, blend=0.5)
    half = state(kb.adapter)
    proxy_to_kb(kb, proxy, blend=1.0)  # the proxy's values, whatever the KB held
    full = state(kb.adapter)
    assert max((full[k] - kb0[k]).abs().max() for k in kb0) > 1e-2
    assert_same(half, {k: (kb0[k] + full[k]) / 2 for k in kb0})
    assert kb_to_fm(kb, fm, blend=0.5) > 0
    synced = kb_state_to_fm(kb.adapter, kb.index)
    assert_same(state(fm), {k: (fm0[k] + synced[k]) / 2 for k in fm0})


def test_units_with_zero_saliency_keep_their_kb_values():
    fm, kb, batch = setup("tiny-vit")
    with torch.no_grad():
        kb.gates.gates[0].heads.bias[1] = -1.0  # relu -> saliency 0: kept at width 1, scaled by 0
    proxy = extract_proxy(kb, [batch], 1.0)
    assert proxy.saliency.heads_raw[0][1] == 0
    train(proxy)
    kb0 = state(kb.adapter)
    proxy_to_kb(kb, proxy)
    kb1 = state(kb.adapter)
    for m in block_members(kb.adapter.blocks()[0], "heads"):
        module = kb.adapter.model.get_submodule(m.slice.module)
        w0, w1 = (s[f"{m.slice.module}.weight"] for s in (kb0, kb1))
        w0, w1 = (w.T if is_transposed(module) else w for w in (w0, w1))
        dim = 0 if m.slice.axis == "out" else 1
        zero, other = (w.index_select(dim, m.index[1]) for w in (w0, w1)), \
            (w.index_select(dim, m.index[0]) for w in (w0, w1))
        assert torch.equal(*zero), m.slice
        assert not torch.allclose(*other, atol=1e-3), m.slice


def test_a_proxy_pruned_further_on_the_edge_syncs_its_remaining_blocks():
    """The edge dropped block 0 after extraction: proxy block 0 is KB block 1; KB block 0 stays."""
    fm, kb, batch = setup("tiny-llama")
    proxy = extract_proxy(kb, [batch], 0.5)
    kept = proxy.plan.blocks[1:]
    apply_plan(proxy.adapter, PruningPlan(dict(proxy.plan.architecture),
                                          [BlockPlan(b.index, b.heads, b.neurons) for b in kept]))
    kb0 = state(kb.adapter)
    proxy_to_kb(kb, proxy)  # untrained: nothing changes
    assert_same(state(kb.adapter), kb0)
    train(proxy)
    proxy_to_kb(kb, proxy)
    kb1, first = state(kb.adapter), kb.adapter.blocks()[0].module + "."
    changed = {k for k in kb0 if not torch.allclose(kb0[k], kb1[k], atol=1e-4)}
    assert changed and not any(k.startswith(first) for k in changed)
    assert any(k.startswith(kb.adapter.blocks()[1].module + ".") for k in changed)


# -- bad input ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vit():
    """A KB and a retrained proxy; the tests below only make refused calls (and tamper with copies)."""
    fm, kb, batch = setup("tiny-vit")
    proxy = extract_proxy(kb, [batch], 0.5)
    train(proxy)
    return fm, kb, batch, proxy


@pytest.mark.parametrize("blend", [0, 1.5, -0.1, float("nan"), True, "1"])
def test_bad_blends_are_refused_by_name(blend, vit):
    fm, kb, _, proxy = vit
    kb0, fm0 = state(kb.adapter), state(fm)
    for call in (lambda: proxy_to_kb(kb, proxy, blend), lambda: kb_to_fm(kb, fm, blend),
                 lambda: sync(kb, proxy, fm, blend_kb=blend), lambda: sync(kb, proxy, fm, blend_fm=blend)):
        with pytest.raises(ValueError, match="blend"):
            call()
    assert_same(state(kb.adapter), kb0, atol=0)
    assert_same(state(fm), fm0, atol=0)


def test_a_proxy_or_fm_from_elsewhere_is_refused_before_anything_is_written(vit):
    fm, kb, batch, proxy = vit
    kb0, fm0 = state(kb.adapter), state(fm)
    other_fm = load_adapter("tiny-vit", seed=1)  # same architecture, other weights
    other_kb = seeded_kb(other_fm, batch)
    bert = load_adapter("tiny-bert")
    bert_kb = seeded_kb(bert, make_batches(bert, n=1, size=2, length=8)[0])
    reordered = seeded_kb(fm, batch, KBSettings(importance="taylor"))  # same FM, another unit order
    assert reordered.index.to_dict() != kb.index.to_dict()
    cases = [
        (lambda: proxy_to_kb(kb, extract_proxy(other_kb, [batch], 0.5)), "another base model"),
        (lambda: proxy_to_kb(kb, extract_proxy(bert_kb, [make_batches(bert, n=1)[0]], 0.5)), "architecture"),
        (lambda: proxy_to_kb(reordered, proxy), "another neuron index"),
        (lambda: kb_to_fm(kb, other_fm), "another base model"),
        (lambda: sync(kb, proxy, other_fm), "another base model"),  # checked before the KB is written
        (lambda: kb_to_fm(kb, kb.adapter), "knowledge base"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    assert_same(state(kb.adapter), kb0, atol=0)
    assert_same(state(fm), fm0, atol=0)


@pytest.mark.parametrize(("tamper", "match"), [
    (lambda p: setattr(p.adapter.plan.blocks[0], "heads", [0, 99]), "does not fit this KB"),
    (lambda p: setattr(p.plan.blocks[0], "neurons", p.plan.blocks[0].neurons[:1]), "extraction plan"),
    (lambda p: p.saliency.heads_raw.pop(), "saliency"),
    (lambda p: [setattr(plan.blocks[0], "neurons", None) for plan in (p.plan, p.adapter.plan)],
     "units its plan keeps"),
])
def test_a_proxy_whose_plan_does_not_fit_is_refused(tamper, match, vit):
    _, kb, _, proxy = vit
    kb0, proxy = state(kb.adapter), copy.deepcopy(proxy)
    tamper(proxy)
    with pytest.raises(ValueError, match=match):
        proxy_to_kb(kb, proxy)
    assert_same(state(kb.adapter), kb0, atol=0)
