"""Labelled stream domains (issue 13 item 5: new tasks as well as new domains): the runner hands a
labelled domain's labels to the methods, our loss becomes the task loss (cross-entropy) plus source
replay there, rows say which domains were labelled, and the shipped class-incremental stream lets
edgeadapt and full learn classes the source model never saw while a label-free method cannot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edgeadapt.data.registry import build_dataset
from edgeadapt.data.stream import Domain, DomainData, DriftStream
from edgeadapt.errors import ConfigError
from edgeadapt.models.registry import load_adapter
from edgeadapt.offline.knowledge_base import KBSettings, init_kb
from edgeadapt.online.api import adapt
from edgeadapt.online.losses import AdaptLossConfig, SourceStats, entropy, source_stats
from edgeadapt.online.methods import MethodContext, MethodState
from edgeadapt.online.methods.base import our_loss
from edgeadapt.online.retrain import RetrainBudget
from edgeadapt.online.runner import run_stream
from edgeadapt.training.config import TrainConfig
from edgeadapt.training.loop import fit

STREAM = Path(__file__).resolve().parents[3] / "configs" / "streams" / "class-incremental.yaml"


@pytest.fixture(scope="module")
def digits():
    return build_dataset("digits", size=16)


def test_a_labelled_domain_hands_its_labels_to_the_loss_and_rows_say_so(digits):
    torch.manual_seed(0)
    fm = load_adapter("tiny-vit")
    seen: list[tuple[int, bool]] = []   # (domain index, batch had labels) per loss call
    settled: list[int] = []
    current = {"i": -1}

    def prepare(d: DomainData):
        current["i"] += 1
        return fm

    def loss(a, batch):
        seen.append((current["i"], "labels" in batch))
        return entropy(a.logits(batch))

    def settle(model, window):
        settled.append(current["i"])
        assert all("labels" not in b for b in window)  # a label-free check gets no labels
        return model

    state = MethodState("recorder", prepare, lambda _a: loss, trainable="norm", settle=settle)
    domains = [DomainData(Domain("digits", labelled=flag), digits.val if flag else digits.val.unlabeled(),
                          digits.test) for flag in (False, True)]
    results = run_stream([state], domains, RetrainBudget(steps=2, batch_size=16), progress=False)
    # step_memory probes one batch too, so count per domain rather than exactly
    assert {i for i, _ in seen} == {0, 1}
    assert all(not has for i, has in seen if i == 0) and all(has for i, has in seen if i == 1)
    assert [r["labelled"] for r in results["per_domain"]] == [False, True]
    assert settled == [0]  # the label-free check is skipped where labels came


def test_labels_in_an_unlabelled_domains_data_are_stripped(digits):
    fm = load_adapter("tiny-vit")
    seen: list[bool] = []

    def loss(a, batch):
        seen.append("labels" in batch)
        return entropy(a.logits(batch))

    state = MethodState("recorder", lambda d: fm, lambda _a: loss, trainable="norm")
    labels_but_not_flagged = DomainData(Domain("digits"), digits.val, digits.test)
    run_stream([state], [labels_but_not_flagged],
               RetrainBudget(steps=2, batch_size=16), progress=False)
    assert seen and not any(seen)


def test_our_classifier_loss_on_a_labelled_batch_is_cross_entropy_plus_replay(digits):
    torch.manual_seed(0)
    fm = load_adapter("tiny-vit")
    fm.model.eval()
    stats = source_stats(fm, digits.train.batches(32), replay_size=40, seed=0)
    cfg = AdaptLossConfig(replay_batch=8)  # supervised left at its default: the stream decides
    loss_fn = our_loss(MethodContext(fm=fm, stats=stats, loss_cfg=cfg))(fm)
    batch = next(iter(digits.val.batches(16)))
    with torch.no_grad():
        value = loss_fn(fm, batch)
        pick = torch.randperm(40, generator=torch.Generator().manual_seed(cfg.seed))[:8]
        replay = {k: v[pick] for k, v in stats.replay.items()}
        expected = F.cross_entropy(fm.logits(batch), batch["labels"]) + \
            cfg.replay * F.cross_entropy(fm.logits(replay), replay["labels"])
        assert value == pytest.approx(float(expected), rel=1e-5)
        # without labels it is the unsupervised loss (MMD + diversity + replay), not the CE
        unsupervised = our_loss(MethodContext(fm=fm, stats=stats, loss_cfg=cfg))(fm)
        other = unsupervised(fm, {"pixel_values": batch["pixel_values"]})
        assert float(other) != pytest.approx(float(expected), rel=1e-3)


def test_absorbing_a_labelled_domain_moves_the_prior_and_the_replay_to_the_new_classes():
    old = SourceStats(torch.zeros(4, 3), torch.zeros(3), torch.ones(3),
                      torch.tensor([0.5, 0.5, 0.0, 0.0]),
                      {"pixel_values": torch.zeros(10, 2), "labels": torch.tensor([0, 1] * 5)})
    new = [{"pixel_values": torch.ones(6, 2), "labels": torch.tensor([2, 3, 2, 3, 2, 3])}]
    old.absorb(new, weight=0.5, seed=0)
    assert old.class_prior.tolist() == pytest.approx([0.25, 0.25, 0.25, 0.25])
    labels = old.replay["labels"].tolist()
    assert len(labels) == 10 and sum(c in (2, 3) for c in labels) == 5  # half the buffer, same size
    # inputs stay paired with their labels
    pixels = old.replay["pixel_values"]
    assert all((pixels[i] == (1.0 if c in (2, 3) else 0.0)).all() for i, c in enumerate(labels))
    # a label beyond the prior's width widens it
    old.absorb([{"pixel_values": torch.ones(2, 2), "labels": torch.tensor([5, 5])}], weight=1 / 3)
    assert old.class_prior.shape == (6,) and old.class_prior[5] == pytest.approx(1 / 3)
    with pytest.raises(ConfigError, match="weight"):
        old.absorb(new, weight=0.0)


def test_the_runner_reports_each_labelled_domain_once_after_every_method_ran(digits):
    fm = load_adapter("tiny-vit")
    calls: list[tuple[int, bool, int]] = []
    order: list[str] = []

    def prepare(d):
        order.append("prepare")
        return fm

    state = MethodState("recorder", prepare, lambda _a: (lambda a, b: entropy(a.logits(b))), trainable="norm")
    domains = [DomainData(Domain("digits", labelled=flag), digits.val if flag else digits.val.unlabeled(),
                          digits.test) for flag in (True, False, True)]

    def on_labelled(batches, k):
        batches = list(batches)
        order.append("labelled")
        calls.append((len(order), all("labels" in b for b in batches), k))

    run_stream([state, state], domains, RetrainBudget(steps=1, batch_size=16), progress=False,
               on_labelled=on_labelled)
    assert [(ok, k) for _, ok, k in calls] == [(True, 1), (True, 2)]
    assert order == ["prepare", "prepare", "labelled", "prepare", "prepare", "prepare", "prepare", "labelled"]


def test_the_class_incremental_stream_parses_and_its_label_set_grows():
    stream = DriftStream.parse(STREAM)
    assert [d.labelled for d in stream] == [False, False, True, False]
    data = stream.build(inputs=None)
    assert data[0].adapt.labels is None and set(data[0].test.labels.tolist()) == {0, 1, 2, 3, 4}
    assert set(data[2].adapt.labels.tolist()) == {5, 6, 7, 8, 9}  # labelled: the adaptation split keeps them
    assert set(data[3].test.labels.tolist()) == set(range(10))
    with pytest.raises(ConfigError, match=r"only_classes: '12' must list digit classes 0-9"):
        build_dataset("digits", only_classes="12")


@pytest.mark.slow
def test_labelled_new_classes_are_learned_by_edgeadapt_and_full_not_by_tent():
    """A tiny ViT trained on digits 0-4 only (classes 5-9 exist in its head but were never
    trained) meets the shipped class-incremental stream; on its labelled 5-9 domain edgeadapt and
    full, which train on the labels, end well above the source model; tent, label-free, does not."""
    torch.manual_seed(0)
    fm = load_adapter("tiny-vit")
    old = build_dataset("digits", size=16, only_classes="0-4")
    fit(fm, lambda e: old.train.batches(32, shuffle=True, seed=e),
        TrainConfig(epochs=8, learning_rate=3e-3, seed=0, progress=False))
    kb = init_kb(fm, [next(iter(old.train.batches(64)))], KBSettings(importance="magnitude"))
    results = adapt(fm, kb, STREAM, methods=["source", "tent", "full", "edgeadapt"],
                    budget={"steps": 30, "batch_size": 32, "learning_rate": 3e-3}, width=0.75,
                    source=list(old.train.batches(64)), progress=False)
    rows = {(r["method"], r["index"]): r for r in results["per_domain"]}
    assert [rows["source", i]["labelled"] for i in range(4)] == [False, False, True, False]
    new = {m: rows[m, 2]["accuracy"] for m in ("source", "tent", "full", "edgeadapt")}
    assert new["source"] < 0.05  # never trained on 5-9
    assert new["full"] > new["source"] + 0.15 and new["edgeadapt"] > new["source"] + 0.15, new
    assert new["tent"] < new["source"] + 0.05, new
