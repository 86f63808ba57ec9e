"""The label-free safeguard (issue 13 item 7): it rejects an update that collapses a model's
predictions and accepts a benign one; a rejected edgeadapt update leaves the knowledge base and the
edge FM byte-identical and scores the proxy as it was before retraining; rows carry the verdict."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from edgeadapt.errors import ConfigError
from edgeadapt.models.registry import load_adapter
from edgeadapt.offline.knowledge_base import KBSettings, init_kb
from edgeadapt.online.losses import AdaptLossConfig, source_stats
from edgeadapt.online.methods import MethodContext, get_method
from edgeadapt.online.retrain import RetrainBudget
from edgeadapt.online.runner import build_methods, run_stream
from edgeadapt.online.safeguard import SafeguardConfig, judge
from tests.conftest import make_batches
from tests.unit.online.test_methods import toy_domain

CLASSES = 5


class Toy:
    """A stand-in model adapter: a linear classifier over 3×8×8 images."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, CLASSES))

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch["pixel_values"])


def window(n: int = 4, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    # smooth images, so a one-pixel shift is a weak augmentation
    base = torch.randn(n * 16, 3, 4, 4, generator=g)
    images = torch.nn.functional.interpolate(base, size=(8, 8), mode="bilinear")
    return [{"pixel_values": images[i * 16:(i + 1) * 16]} for i in range(n)]


def test_a_collapsed_update_is_rejected_and_a_benign_one_accepted():
    previous = Toy()
    benign = copy.deepcopy(previous)
    with torch.no_grad():
        for p in benign.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    verdict = judge(benign, previous, window())
    assert verdict.accepted and verdict.row()["safeguard"] == "accepted"
    collapsed = copy.deepcopy(previous)
    with torch.no_grad():
        collapsed.model[1].bias[0] += 50.0  # every sample predicted as class 0
    verdict = judge(collapsed, previous, window())
    assert not verdict.accepted and verdict.reason.startswith("collapse")
    assert verdict.adapted["marginal_entropy"] < 0.05 < verdict.previous["marginal_entropy"]
    assert verdict.row()["safeguard"] == "rejected"
    # recording only: the same criteria, the update kept
    record = judge(collapsed, previous, window(), SafeguardConfig(enforce=False))
    assert record.accepted and record.reason.startswith("collapse")


def test_an_update_that_breaks_shift_consistency_is_rejected():
    previous, local = Toy(), Toy()
    with torch.no_grad():
        classes = torch.randn(CLASSES, 3, 1, 1, generator=torch.Generator().manual_seed(2))
        # previous: reads each channel's mean, which a one-pixel shift hardly moves
        previous.model[1].weight.copy_((classes * torch.ones(1, 1, 8, 8)).view(CLASSES, -1))
        # "adapted": reads single pixels of a noisy image, which a shift replaces
        w = torch.zeros(CLASSES, 3, 8, 8)
        w[:, :, 3:5, 3:5] = 10 * torch.randn(CLASSES, 3, 2, 2, generator=torch.Generator().manual_seed(3))
        local.model[1].weight.copy_(w.view(CLASSES, -1))
        previous.model[1].bias.zero_()
        local.model[1].bias.zero_()
    g = torch.Generator().manual_seed(4)
    noisy = [{"pixel_values": torch.randn(16, 3, 8, 8, generator=g)} for _ in range(8)]
    verdict = judge(local, previous, noisy, SafeguardConfig(collapse_ratio=0.0, margin=0.0))
    assert judge(local, previous, noisy, SafeguardConfig(collapse_ratio=0.0)).accepted  # recorded only
    assert verdict.adapted["consistency"] < verdict.previous["consistency"] - 0.2
    assert not verdict.accepted and verdict.reason.startswith("consistency")


def test_an_update_on_a_window_the_previous_model_is_already_sure_of_is_rejected():
    previous = Toy()
    with torch.no_grad():
        previous.model[1].weight.mul_(200.0)  # near one-hot predictions: entropy ≈ 0 on the window
    adapted = copy.deepcopy(previous)
    with torch.no_grad():
        adapted.model[1].weight.add_(0.01 * torch.randn_like(adapted.model[1].weight))
    verdict = judge(adapted, previous, window())
    assert verdict.previous["entropy"] < 0.025 * math.log(CLASSES)
    assert not verdict.accepted and verdict.reason.startswith("no shift")
    assert judge(adapted, previous, window(), SafeguardConfig(confident=0.0)).accepted


@pytest.fixture(scope="module")
def setting():
    fm = load_adapter("tiny-vit", seed=0)
    source = make_batches(fm, n=2, size=16)
    stats = source_stats(fm, source, bank_size=32, replay_size=16)
    return fm, source, stats, toy_domain(fm, adapt=32, test=16)


def edgeadapt_run(setting, loss=None, lr: float = 3e-4, options=None):
    """edgeadapt over the toy domain (optionally with ``loss`` instead of ours); returns the row, the
    KB and the edge FM before and after (state dicts)."""
    fm, source, stats, domain = setting
    torch.manual_seed(0)
    kb = init_kb(fm, source[:1], KBSettings(importance="magnitude"))
    (m,) = build_methods(["edgeadapt"], fm, kb, stats, AdaptLossConfig(replay_batch=8), 0.5, None,
                         options={"edgeadapt": options or {}})
    if loss is not None:
        m.loss = loss
    cells = dict(zip(m.finish.__code__.co_freevars, m.finish.__closure__))
    edge_fm = cells["edge_fm"].cell_contents  # the method's private copy of the FM, synced per domain
    snap = lambda a: {k: v.clone() for k, v in a.model.state_dict().items()}  # noqa: E731
    before = snap(kb.adapter), snap(edge_fm)
    budget = RetrainBudget(steps=4, batch_size=16, learning_rate=lr, gradient_checkpointing=False,
                           device="cpu")
    results = run_stream([m], [domain], budget, seed=0, progress=False)
    return results["per_domain"][0], before, (snap(kb.adapter), snap(edge_fm))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_rejected_edgeadapt_update_leaves_the_kb_and_edge_fm_untouched(setting):
    def one_class(_adapter):  # drives every prediction to class 0: a collapse the safeguard must catch
        return lambda a, batch: -torch.log_softmax(a.logits(batch), -1)[:, 0].mean()

    row, before, after = edgeadapt_run(setting, loss=one_class, lr=0.05)
    assert row["safeguard"] == "rejected" and row["safeguard_reason"].startswith("collapse")
    assert row["safeguard_marginal_entropy_adapted"] < row["safeguard_marginal_entropy_previous"]
    assert same(before[0], after[0]) and same(before[1], after[1])
    assert row["accuracy"] == row["accuracy_before"]  # the proxy before retraining is what is scored


def test_an_accepted_update_is_synced_and_rows_carry_the_verdict(setting):
    never = {"safeguard": {"collapse_ratio": 0.0, "confident": 0.0}}  # every update accepted
    row, before, after = edgeadapt_run(setting, options=never)
    assert row["safeguard"] == "accepted"
    for k in ("entropy", "marginal_entropy", "consistency", "agreement_ref"):
        assert {f"safeguard_{k}_adapted", f"safeguard_{k}_previous"} <= set(row), k
    assert 0.0 <= row["safeguard_agreement"] <= 1.0
    assert not same(before[0], after[0]) and not same(before[1], after[1])


def test_the_safeguard_can_be_turned_off_and_bad_options_are_refused(setting):
    row, before, after = edgeadapt_run(setting, options={"safeguard": {"enabled": False}})
    assert "safeguard" not in row and not same(before[0], after[0])
    fm, source, stats, _ = setting
    kb = init_kb(fm, source[:1], KBSettings(importance="magnitude"))
    with pytest.raises(ConfigError, match=r"edgeadapt takes \['safeguard'\]"):
        build_methods(["edgeadapt"], fm, kb, stats, AdaptLossConfig(), 0.5, None,
                      options={"edgeadapt": {"safegaurd": {}}})
    with pytest.raises(ConfigError, match="collapse_ratio"):
        build_methods(["edgeadapt"], fm, kb, stats, AdaptLossConfig(), 0.5, None,
                      options={"edgeadapt": {"safeguard": {"collapse_ratio": 2}}})


def test_a_model_without_class_predictions_adapts_without_the_safeguard(setting):
    fm = SimpleNamespace(task=SimpleNamespace(name="causal-lm"), model=torch.nn.Linear(1, 1))
    state = get_method("edgeadapt")(MethodContext(fm=fm, kb=object()))
    assert state.settle is None
    state = get_method("edgeadapt")(MethodContext(fm=setting[0], kb=object()))
    assert state.settle is not None
