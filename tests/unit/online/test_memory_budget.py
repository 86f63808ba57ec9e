"""Online retraining under a memory plan: RetrainBudget.memory replaces the checkpointing switch for
the edge methods, micro-batching our (not per-sample) loss and batches of 1 are refused before any
compute, and `adapt --memory-budget` chooses a plan for the edge methods, records it, and names the
smallest feasible budget when none fits."""

from __future__ import annotations

import json
import re

import pytest
import torch

from edgeadapt.cli.main import build_parser
from edgeadapt.errors import ConfigError, InfeasibleError
from edgeadapt.memory.estimator import measure
from edgeadapt.memory.plan import ADAPTATION_LOSS, MemoryPlan
from edgeadapt.models.registry import load_adapter
from edgeadapt.offline.artifacts import save_kb
from edgeadapt.offline.lora import LoraSettings, save_lora_artifact
from edgeadapt.online import api
from edgeadapt.online.api import adapt
from edgeadapt.online.edge_plan import PREDICTION_SLACK, plan_for_memory
from edgeadapt.online.pipeline import AdaptConfig, run_adapt
from edgeadapt.online.retrain import RetrainBudget, retrain, step_memory
from tests.conftest import make_batches, state
from tests.unit.online.conftest import OFFLINE_RECORD

BUDGET = {"steps": 2, "batch_size": 16, "device": "cpu"}


def entropy(adapter, batch):
    """A label-free loss (prediction entropy) for retraining without the KB's statistics."""
    logp = adapter.logits(batch).log_softmax(-1)
    return -(logp.exp() * logp).sum(-1).mean()


def _batches(adapter, size=8):
    return [{k: v for k, v in b.items() if k != "labels"} for b in make_batches(adapter, n=2, size=size)]


def test_a_budget_refuses_to_micro_batch_the_adaptation_loss():
    with pytest.raises(ValueError, match="not a sum over samples"):
        RetrainBudget(batch_size=8, memory={"micro_batch_size": 2})
    with pytest.raises(ValueError, match="needs at least 2 samples"):
        RetrainBudget(batch_size=1, memory={"freeze_blocks": 1})
    assert RetrainBudget(batch_size=8, memory={"freeze_blocks": 1}).memory == MemoryPlan(freeze_blocks=1)


def test_adapt_with_batch_size_one_fails_before_any_compute(vit_kb, monkeypatch):
    """Before: the run computed the source statistics and proxies, then stopped mid-stream on
    'mmd needs at least 2 samples on each side'."""
    fm, kb = vit_kb

    def no_compute(*a, **k):
        raise AssertionError("computed before refusing the batch size")

    monkeypatch.setattr(api, "source_stats", no_compute)
    with pytest.raises(ConfigError, match=r"batch size 1: the adaptation loss .* needs at least 2 samples"):
        adapt(fm, kb, "fog:5", methods=["edgeadapt"], budget={"steps": 1, "batch_size": 1}, source="digits",
              progress=False)


def test_retrain_under_a_plan_freezes_and_checkpoints_only_constrained_methods():
    plan = MemoryPlan(freeze_blocks=2, checkpoint_segments=2)
    budget = RetrainBudget(steps=2, batch_size=8, learning_rate=1e-2, device="cpu", memory=plan)
    adapter = load_adapter("tiny-vit")
    batches = _batches(adapter)
    before = state(adapter)
    result = retrain(adapter, lambda e: batches, entropy, budget, constrained=True)
    after = state(adapter)
    frozen = [k for k in before if k.startswith(("vit.embeddings.", "vit.layers.0.", "vit.layers.1."))]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)
    assert not torch.equal(after["vit.layers.3.attention.o_proj.weight"],
                           before["vit.layers.3.attention.o_proj.weight"])
    assert all(p.requires_grad for p in adapter.model.parameters())  # the plan is undone afterwards
    # the plan's step needs less memory than the plain one; an unconstrained method ignores the plan
    plain = step_memory(adapter, entropy, batches[0], 1e-2, torch.device("cpu"))
    assert result.peak_memory_bytes < plain
    free = load_adapter("tiny-vit")
    retrain(free, lambda e: batches, entropy, budget, constrained=False)
    assert not torch.equal(state(free)["vit.layers.0.attention.o_proj.weight"],
                           before["vit.layers.0.attention.o_proj.weight"])


def test_plan_for_memory_fits_the_budget_or_names_the_smallest():
    adapter = load_adapter("tiny-vit")
    batch = _batches(adapter, size=16)[0]
    roomy = plan_for_memory(adapter, entropy, batch, 2**40, "cpu")
    assert roomy.plan.freeze_blocks == 0  # nothing to freeze when everything fits
    with pytest.raises(InfeasibleError, match=r"memory_budget=1000 B .* infeasible: the smallest") as exc:
        plan_for_memory(adapter, entropy, batch, 1000, "cpu")
    smallest = int(re.search(r">= ([\d,]+) bytes", str(exc.value)).group(1).replace(",", ""))
    assert smallest < roomy.estimate.predicted_bytes
    middle = (smallest + roomy.estimate.predicted_bytes) // 2
    chosen = plan_for_memory(adapter, entropy, batch, middle, "cpu")
    assert chosen.estimate.predicted_bytes <= middle * PREDICTION_SLACK
    assert chosen.plan.freeze_blocks or chosen.plan.checkpoint_segments
    assert chosen.plan.micro_batch_size is None  # never micro-batches the adaptation loss
    # predicted and confirmed: the steady-state step (optimizer state alive through backward)
    assert chosen.measured_bytes <= middle
    measured = measure(adapter, chosen.plan, batch, "adamw", loss_fn=entropy,
                       traits=ADAPTATION_LOSS).total_bytes
    assert measured == chosen.measured_bytes
    assert abs(measured - chosen.estimate.predicted_bytes) <= 0.05 * measured, (measured, chosen.estimate)


def test_adapt_memory_budget_plans_the_edge_methods_and_records_it(vit_kb, tmp_path):
    fm, kb = vit_kb
    run = dict(methods=["source", "full", "edgeadapt"], budget=BUDGET, width=0.5, source="digits",
               progress=False)
    with pytest.raises(InfeasibleError, match="memory_budget=1.0 KiB") as exc:
        adapt(fm, kb, "fog:5", memory_budget="1KiB", **run)
    smallest = int(re.search(r">= ([\d,]+) bytes", str(exc.value)).group(1).replace(",", ""))
    results = adapt(fm, kb, "fog:5,contrast:4", memory_budget=smallest, **run)
    chosen = results["memory_plan"]
    assert chosen["budget_bytes"] == smallest >= chosen["measured_bytes"]
    assert chosen["predicted_bytes"] <= smallest * PREDICTION_SLACK
    for row in [*results["rows"], *results["per_domain"]]:
        assert (row.get("memory_plan") == chosen) == (row["method"] == "edgeadapt"), row["method"]
    edge = [r for r in results["per_domain"] if r["method"] == "edgeadapt"]
    peaks = [r["peak_memory_bytes"] for r in edge]  # measured with the plan, on each domain's proxy
    assert all(peak <= 1.05 * smallest for peak in peaks), (peaks, smallest)
    # the config field and the command-line flag reach it; results.json records the plan
    save_lora_artifact(fm, tmp_path / "offline" / "lora", LoraSettings(), {}, {})
    save_kb(kb, tmp_path / "offline" / "kb", config=OFFLINE_RECORD)
    cfg = AdaptConfig(offline=tmp_path / "offline", stream="fog:5", methods=["edgeadapt"], budget=BUDGET,
                      width=0.5, out=tmp_path / "adapt", memory_budget=f"{smallest * 4}B")
    run_adapt(cfg, progress=False)
    written = json.loads((tmp_path / "adapt" / "results.json").read_text())
    assert written["memory_plan"]["budget_bytes"] == smallest * 4
    assert written["per_domain"][0]["memory_plan"] == written["memory_plan"]
    report = (tmp_path / "adapt" / "report.md").read_text()  # the plan and steps, not only results.json
    assert "## Memory and time plan" in report and f"budget {smallest * 4 / 2**20:.2f} MiB" in report
    assert f"| steps per domain | edgeadapt {BUDGET['steps']} |" in report


def test_memory_budget_flag_and_field_parse_sizes():
    args = build_parser().parse_args(["adapt", "--memory-budget", "8MiB"])
    assert args.memory_budget == "8MiB"
    assert AdaptConfig(memory_budget="8MiB").memory_budget == 8 * 2**20
    with pytest.raises(ValueError, match="a size must be"):
        AdaptConfig(memory_budget="lots")
