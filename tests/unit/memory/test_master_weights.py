"""The memory planner predicts a bf16/fp16 checkpoint's training as it runs: on float32 master weights.

Before: ``train`` and ``adapt`` train a bf16 model inside ``numerics.fp32_master`` (float32 weights,
gradients, Adam moments, activations), but the planner profiled, measured and probed it at bf16, so
it predicted 1.9x too little (tiny ViT: 423 KiB planned, 789 KiB trained) and a budget "met" by the
plan was exceeded by the real training.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from edgeadapt.cli.main import main
from edgeadapt.memory.accounting import measure_peak
from edgeadapt.memory.estimator import estimate, measure, profile
from edgeadapt.memory.plan import MemoryPlan
from edgeadapt.memory.plan_file import load_plan_file, plan_model, save_plan
from edgeadapt.memory.search import search
from edgeadapt.models.registry import load_adapter
from edgeadapt.numerics import fp32_master
from edgeadapt.training.config import TrainConfig
from edgeadapt.training.loop import fit
from tests.conftest import make_batches

PLANS = [MemoryPlan(), MemoryPlan(micro_batch_size=4, checkpoint_segments=2), MemoryPlan(freeze_blocks=1)]


@pytest.fixture()
def bf16_vit():
    adapter = load_adapter("tiny-vit")
    adapter.model.to(torch.bfloat16)
    return adapter, make_batches(adapter, n=1, size=8)[0]


def dtypes(adapter) -> set[torch.dtype]:
    return {p.dtype for p in adapter.model.parameters()}


@pytest.mark.parametrize("plan", PLANS, ids=["none", "mb 4, ckpt 2", "freeze 1"])
def test_a_bf16_models_prediction_matches_its_real_training_step_on_fp32_master_weights(bf16_vit, plan):
    """The old prediction (at bf16) was 54% of the step measured inside fp32_master."""
    adapter, batch = bf16_vit
    est = estimate(adapter, plan, batch)
    assert dtypes(adapter) == {torch.bfloat16}  # planning leaves the checkpoint's dtype alone
    with fp32_master(adapter.model):  # the training step as train/adapt run it
        real = measure(adapter, plan, batch)
    assert abs(est.predicted_bytes / real.total_bytes - 1) <= 0.05, (est.predicted_bytes, real.total_bytes)
    assert measure(adapter, plan, batch).total_bytes == real.total_bytes  # measure follows it too
    weights = sum(p.numel() for p in adapter.model.parameters()) * 4  # float32 bytes
    assert est.breakdown["weights"] >= weights


def test_a_bf16_models_prediction_matches_the_peak_of_fit(bf16_vit):
    """The peak of the real training loop (three steps of ``fit`` at its defaults, under the plan)
    above what the model held before it: its bf16 weights, which fit replaces by float32 ones."""
    adapter, batch = bf16_vit
    for plan in PLANS[:2]:
        est = estimate(adapter, plan, batch, "adamw")
        cfg = TrainConfig(epochs=1, max_steps=3, progress=False, device="cpu", memory=plan)
        _, report = measure_peak(lambda cfg=cfg: fit(adapter, lambda _e: [batch] * 3, cfg),
                                 modules=[adapter.model])
        assert abs(est.predicted_bytes / report.peak_bytes - 1) <= 0.05, (plan, est.predicted_bytes,
                                                                         report.peak_bytes)
        assert dtypes(adapter) == {torch.bfloat16}


def test_a_bf16_profile_equals_a_float32_copys(bf16_vit):
    adapter, batch = bf16_vit
    prof = profile(adapter, batch, timed=False)
    adapter.model.float()
    assert prof.weights_bytes == profile(adapter, batch, timed=False).weights_bytes


def test_search_on_a_bf16_model_keeps_the_budget_its_training_measures(bf16_vit):
    """Before: "no knobs" was predicted at bf16 (about half its real peak) and chosen under a budget
    that real training exceeds."""
    adapter, batch = bf16_vit
    with fp32_master(adapter.model):
        unconstrained = measure(adapter, MemoryPlan(), batch).total_bytes
    budget = int(0.8 * unconstrained)
    result = search(adapter, budget, [batch], max_probes=2, horizon_steps=2, probe_steps=1)
    assert dtypes(adapter) == {torch.bfloat16}
    assert result.chosen.plan != MemoryPlan()
    with fp32_master(adapter.model):
        assert measure(adapter, result.chosen.plan, batch).total_bytes <= budget


def test_a_plan_file_records_the_weights_dtype_and_the_training_dtype(bf16_vit, tmp_path):
    adapter, _ = bf16_vit
    here = plan_model(adapter, "tiny-vit")
    assert (here.dtype, here.trained_dtype) == ("bfloat16", "float32")
    loaded = load_plan_file(save_plan(MemoryPlan(), tmp_path / "p.json", here, 8, 2**20))
    assert (loaded.model.dtype, loaded.model.trained_dtype) == ("bfloat16", "float32")
    adapter.model.float()
    assert plan_model(adapter, "tiny-vit").trained_dtype == "float32"


def test_an_old_bf16_plan_file_without_trained_dtype_is_warned_about(bf16_vit, tmp_path):
    from edgeadapt.memory.plan_file import check_plan_fits

    adapter, _ = bf16_vit
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"kind": "memory-plan", "model": {"name": "tiny-vit", "family": "vit",
                                                                "num_blocks": 4, "dtype": "bfloat16"}}))
    with pytest.warns(UserWarning, match="planned at bfloat16 .*float32 master weights"):
        check_plan_fits(load_plan_file(old), adapter, "tiny-vit")


@pytest.fixture()
def bf16_dir(tmp_path):
    """The new-user trial's model: a tiny bf16 ViT checkpoint on disk."""
    config = ViTConfig(image_size=24, patch_size=8, hidden_size=32, num_hidden_layers=3,
                       num_attention_heads=4, intermediate_size=64, num_labels=10)
    torch.manual_seed(0)
    ViTForImageClassification(config).to(torch.bfloat16).save_pretrained(tmp_path / "vit_bf16")
    return tmp_path / "vit_bf16"


def test_memory_plan_and_estimate_cli_plan_a_bf16_checkpoint_at_float32(bf16_dir, tmp_path, capsys):
    """The trial: `memory plan --budget 600KiB` chose "no knobs" (423 KiB at bf16) which trains at 789 KiB."""
    plan = tmp_path / "plan.json"
    assert main(["memory", "plan", str(bf16_dir), "--budget", "600KiB", "--save", str(plan),
                 "--max-probes", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["dtype"], out["trained_dtype"]) == ("bfloat16", "float32")
    assert out["chosen"]["plan"] != MemoryPlan().model_dump()
    assert out["chosen"]["measured_bytes"] <= 600 * 1024
    unconstrained = next(p for p in out["plans"] if p["describe"] == "no knobs")
    assert unconstrained["predicted_bytes"] > 700 * 1024 and unconstrained["status"] == "over budget"
    saved = json.loads(plan.read_text())
    assert saved["model"]["dtype"] == "bfloat16" and saved["model"]["trained_dtype"] == "float32"
    assert main(["memory", "estimate", str(bf16_dir), "--plan", str(plan)]) == 0
    text = capsys.readouterr().out
    assert "bfloat16 weights train on float32 master weights" in text
