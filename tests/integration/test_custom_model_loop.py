"""A plain PyTorch model (``examples/custom_adapter.py``) through the whole loop: pretraining, LoRA,
the knowledge base and its neuron index, a proxy for a drifted window, label-free retraining
(``adaptation_loss`` on ``source_stats``) and sync. Sync writes only the proxy's units (the others
keep their values bit for bit) and the FM becomes the KB in FM order."""

from __future__ import annotations

import math

import pytest
import torch

from edgeadapt.offline.neuron_index import kb_state_to_fm
from edgeadapt.online.proxy import extract_proxy
from edgeadapt.online.sync import sync
from edgeadapt.pruning.groups import block_members, num_units
from tests.unit.test_custom_adapter_example import _example as example


def unit_masks(adapter, units: dict[tuple[int, str], list[int]]) -> dict[str, torch.Tensor]:
    """Per parameter, True at the entries (weight rows/columns, bias entries) that the listed units
    of ``adapter``'s blocks own: ``units[(block, kind)]`` = unit ids."""
    state = adapter.model.state_dict()
    masks = {k: torch.zeros(v.shape, dtype=torch.bool) for k, v in state.items()}
    blocks = adapter.blocks()
    for (pos, kind), ids in units.items():
        for m in block_members(blocks[pos], kind):
            feats = m.index[torch.tensor(ids, dtype=torch.long)].reshape(-1)
            weight = f"{m.slice.module}.weight"
            if m.slice.axis == "out":
                masks[weight][feats] = True
                if f"{m.slice.module}.bias" in masks:
                    masks[f"{m.slice.module}.bias"][feats] = True
            else:
                masks[weight][:, feats] = True
    return masks


def fm_units(kb, proxy, kept: bool) -> dict[tuple[int, str], list[int]]:
    """FM unit ids per (block, kind) that the proxy keeps (``kept``) or drops."""
    out = {}
    for bplan in proxy.plan.blocks:
        for kind in ("heads", "neurons"):
            positions = set(bplan.heads if kind == "heads" else bplan.neurons)
            n = num_units(kb.adapter.blocks()[bplan.index], kind)
            chosen = [p for p in range(n) if (p in positions) == kept]
            out[(bplan.index, kind)] = kb.index.fm_units(bplan.index, kind, chosen)
    return out


def changed(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Entries that moved by more than the rounding of extraction's fold and sync's unfold."""
    return ~torch.isclose(after, before, rtol=1e-5, atol=1e-7)


def test_a_custom_model_syncs_back_only_the_units_its_proxy_trained():
    """Untrained KB (exactly the FM) so the FM's own values are the reference; only the MLP is
    retrained, so the synced units are the proxy's FFN neurons (and the unowned fc_out bias)."""
    result = example().run_loop(trainable="mlp", train_kb=False, steps=10)
    fm, kb, proxy, before = result.fm, result.kb, result.proxy, result.fm_before
    after = fm.model.state_dict()
    trained = {k: v for k, v in fm_units(kb, proxy, kept=True).items() if k[1] == "neurons"}
    allowed = unit_masks(fm, trained)
    for pos in range(len(fm.blocks())):
        allowed[f"blocks.{pos}.fc_out.bias"][:] = True  # no unit owns it; the MLP retraining moved it
    dropped = unit_masks(fm, fm_units(kb, proxy, kept=False))
    assert 0 < sum(m.sum() for m in dropped.values()) < sum(m.numel() for m in dropped.values())
    moved = 0
    for k, old in before.items():
        delta = changed(old, after[k])
        assert not (delta & ~allowed[k]).any(), f"{k} changed outside the synced units"
        assert torch.equal(after[k][dropped[k]], old[dropped[k]]), f"{k}: a dropped unit changed"
        moved += int(delta.sum())
    rows = sum(int(allowed[f"blocks.{pos}.fc_in.weight"].sum()) for pos in range(len(fm.blocks())))
    assert moved > 0.5 * rows  # retraining really moved the kept neurons
    assert result.metrics["fm_tensors_changed"] == 4 * len(fm.blocks())  # fc_in/fc_out weight and bias


@pytest.mark.slow
def test_the_example_loop_with_a_trained_kb():
    """The example's own settings (sandwich-trained KB and gates, all proxy parameters retrained):
    the FM is the synced KB in FM order, the KB keeps its dropped units bit for bit, and another
    window's proxy synced untrained changes nothing beyond the fold/unfold rounding."""
    ex = example()
    result = ex.run_loop()
    fm, kb, proxy = result.fm, result.kb, result.proxy
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert result.metrics["proxy_params"] < 0.7 * result.metrics["fm_params"]
    # the gates were trained: saliency is no longer 1, and the window's units are not the KB's prefix
    assert all((t - 1).abs().max() > 1e-3 for t in proxy.saliency.neurons_raw)
    assert any(b.neurons != list(range(len(b.neurons))) for b in proxy.plan.blocks)
    fm_state, expected = fm.model.state_dict(), kb_state_to_fm(kb.adapter, kb.index)
    assert all(torch.equal(fm_state[k], expected[k]) for k in expected)

    kb_positions = {(b.index, kind): [p for p in range(num_units(kb.adapter.blocks()[b.index], kind))
                                      if p not in (b.heads if kind == "heads" else b.neurons)]
                    for b in proxy.plan.blocks for kind in ("heads", "neurons")}
    dropped, kb_state = unit_masks(kb.adapter, kb_positions), kb.adapter.model.state_dict()
    for k, old in result.kb_before.items():
        assert torch.equal(kb_state[k][dropped[k]], old[dropped[k]]), f"{k}: a dropped unit changed"
    assert any(changed(old, kb_state[k]).any() for k, old in result.kb_before.items())

    kb0 = {k: v.clone() for k, v in kb_state.items()}
    fm0 = {k: v.clone() for k, v in fm_state.items()}
    other = extract_proxy(kb, ex.unlabeled(ex.make_batches(2, seed=9, drift=0.3)), 0.5)
    sync(kb, other, fm)
    for ref, now in ((kb0, kb.adapter.model.state_dict()), (fm0, fm.model.state_dict())):
        for k in ref:
            torch.testing.assert_close(now[k], ref[k], rtol=1e-6, atol=1e-9, msg=k)
