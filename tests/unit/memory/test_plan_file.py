"""Memory plan files record the model they were chosen for and are checked against the model they
are applied to; ``memory estimate`` refuses a micro-batch larger than the batch and, like ``train``,
accepts one that does not divide it (predicting the largest micro-batch's peak).

Before: a plan file held only the knobs, so a ViT plan applied to a ResNet silently.
"""

from __future__ import annotations

import json
import warnings

import pytest

from edgeadapt.cli.main import main
from edgeadapt.errors import ConfigError
from edgeadapt.memory.plan import MemoryPlan
from edgeadapt.memory.plan_file import (
    PlanModel,
    check_micro_batch_size,
    check_plan_fits,
    load_plan,
    load_plan_file,
    micro_batch_sizes,
    plan_model,
    save_plan,
)
from edgeadapt.models.registry import load_adapter
from edgeadapt.pruning import checkpoint

VIT = PlanModel(name="tiny-vit", family="vit", num_blocks=4)


def test_memory_plan_save_records_the_model(tmp_path, capsys):
    saved = tmp_path / "plan.json"
    assert main(["--quiet", "memory", "plan", "tiny-resnet", "--budget", "64MiB", "--max-probes", "1",
                 "--probe-steps", "1", "--probe-batches", "1", "--eval-batches", "1",
                 "--save", str(saved)]) == 0
    data = json.loads(saved.read_text())
    assert data["model"] == {"name": "tiny-resnet", "family": "resnet", "num_blocks": 3, "dtype": "float32",
                             "trained_dtype": "float32"}
    assert data["budget_bytes"] == 64 * 2**20 and data["batch_size"] == 8
    assert main(["validate", str(saved)]) == 0 and "valid memory-plan" in capsys.readouterr().out


def test_a_plan_file_round_trips_with_its_model_and_old_files_still_load(tmp_path):
    plan = MemoryPlan(freeze_blocks=1, checkpoint_segments=2)
    path = save_plan(plan, tmp_path / "p.json", VIT)
    assert load_plan_file(path).model == VIT and load_plan(path) == plan
    old = tmp_path / "old.json"  # written before the model was recorded
    old.write_text('{"kind": "memory-plan", "freeze_blocks": 1}')
    assert load_plan_file(old).model is None and load_plan(old) == MemoryPlan(freeze_blocks=1)


def test_a_plan_for_more_blocks_than_the_model_has_is_refused_with_the_count(tmp_path):
    resnet = load_adapter("tiny-resnet")
    assert plan_model(resnet, "tiny-resnet").num_blocks == 3
    too_many = load_plan_file(save_plan(MemoryPlan(freeze_blocks=4), tmp_path / "f.json"))
    with pytest.raises(ConfigError, match=r"plan: freeze_blocks 4 exceeds the 3 blocks of tiny-resnet; "
                                          r"use at most 3"):
        check_plan_fits(too_many, resnet, "tiny-resnet")
    two = MemoryPlan(freeze_blocks=2, checkpoint_segments=2)
    segments = load_plan_file(save_plan(two, tmp_path / "s.json"))
    with pytest.raises(ConfigError, match=r"checkpoint_segments 2 exceeds the 1 trainable blocks .*most 1"):
        check_plan_fits(segments, resnet, "tiny-resnet")


def test_a_plan_recorded_for_another_model_warns_and_an_old_file_does_not(tmp_path):
    resnet = load_adapter("tiny-resnet")
    vit_plan = load_plan_file(save_plan(MemoryPlan(freeze_blocks=1), tmp_path / "v.json", VIT))
    with pytest.warns(UserWarning, match=r"chosen for tiny-vit \(vit, 4 blocks\), not tiny-resnet \(resnet"):
        assert check_plan_fits(vit_plan, resnet, "tiny-resnet") == MemoryPlan(freeze_blocks=1)
    unrecorded = load_plan_file(save_plan(MemoryPlan(freeze_blocks=1), tmp_path / "u.json"))
    same = load_plan_file(save_plan(MemoryPlan(freeze_blocks=1), tmp_path / "r.json",
                                    plan_model(resnet, "runs/my-resnet")))  # another name, same model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_plan_fits(unrecorded, resnet, "tiny-resnet")
        check_plan_fits(same, resnet, "tiny-resnet")


def test_a_micro_batch_larger_than_the_batch_is_refused_and_an_uneven_one_is_not():
    with pytest.raises(ConfigError, match=r"micro_batch_size 16 is larger than the batch size 8; use at"):
        check_micro_batch_size(MemoryPlan(micro_batch_size=16), 8)
    for plan in (MemoryPlan(micro_batch_size=3), MemoryPlan(micro_batch_size=4), MemoryPlan()):
        check_micro_batch_size(plan, 8)
    assert micro_batch_sizes(MemoryPlan(micro_batch_size=3), 8) == [3, 3, 2]
    assert micro_batch_sizes(MemoryPlan(micro_batch_size=16), 8) == [8]
    assert micro_batch_sizes(MemoryPlan(), 8) == [8]


def test_memory_estimate_refuses_a_micro_batch_larger_than_the_batch_before_loading(tmp_path, capsys,
                                                                                      monkeypatch):
    plan = tmp_path / "m16.json"
    plan.write_text('{"micro_batch_size": 16}')
    monkeypatch.setattr(checkpoint, "load_model", lambda name: pytest.fail("loaded the model first"))
    assert main(["memory", "estimate", "tiny-resnet", "--plan", str(plan), "--batch-size", "8"]) == 2
    err = capsys.readouterr().err
    assert f"--plan {plan}: micro_batch_size 16 is larger than the --batch-size 8; use at most 8" in err


def test_memory_estimate_accepts_an_uneven_micro_batch_as_train_does(tmp_path, capsys):
    """Before: `memory estimate` refused micro_batch_size 3 for --batch-size 8 ("does not divide") while
    `train` runs it (micro-batches 3, 3, 2 weighted by their share); now it predicts the peak of the
    largest micro-batch, and the prediction matches the measured step of the real 3, 3, 2 split."""
    plan = tmp_path / "m3.json"
    plan.write_text('{"micro_batch_size": 3}')
    assert main(["memory", "estimate", "tiny-resnet", "--plan", str(plan), "--batch-size", "8", "--measure",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["micro_batches"] == [3, 3, 2]
    assert out["predicted_bytes"] == pytest.approx(out["measured_bytes"], rel=0.02)
    assert main(["memory", "estimate", "tiny-resnet", "--plan", str(plan), "--batch-size", "8"]) == 0
    assert "micro-batches of 3, 3, 2 rows" in capsys.readouterr().out


def test_validate_refuses_a_plan_asking_for_more_blocks_than_its_recorded_model(tmp_path, capsys):
    """Before: a plan file with freeze_blocks 9 was 'valid' although it records num_blocks 3
    (new-user trial); now `validate` refuses it before any model loads."""
    import json

    from edgeadapt.cli.main import main

    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"kind": "memory-plan", "freeze_blocks": 9,
                                "model": {"name": "tiny-regnet", "family": "regnet", "num_blocks": 3}}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "freeze_blocks" in err and "9" in err and "3 blocks" in err
    path.write_text(json.dumps({"kind": "memory-plan", "freeze_blocks": 1, "checkpoint_segments": 2,
                                "model": {"name": "tiny-regnet", "family": "regnet", "num_blocks": 3}}))
    assert main(["validate", str(path)]) == 0


def test_a_saved_plan_records_its_batch_and_estimate_defaults_to_it(tmp_path, capsys):
    """Before: `memory plan --batch-size 24 --save` then `memory estimate --plan` refused the plan
    against a --batch-size 8 the user never typed (new-user trial); the file now records the batch."""
    import json

    from edgeadapt.cli.main import main
    from edgeadapt.memory.plan import MemoryPlan
    from edgeadapt.memory.plan_file import load_plan_file, save_plan

    path = save_plan(MemoryPlan(micro_batch_size=12), tmp_path / "plan.json", batch_size=24)
    loaded = load_plan_file(path)
    assert loaded.batch_size == 24 and loaded.plan() == MemoryPlan(micro_batch_size=12)
    assert main(["memory", "estimate", "tiny-resnet", "--plan", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["batch_size"] == 24
    assert main(["memory", "estimate", "tiny-resnet", "--plan", str(path), "--batch-size", "8"]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_memory_plan_offers_smaller_effective_batches_from_the_cli(tmp_path, capsys):
    """`memory plan --batch-sizes 8` puts plans at an effective batch of 8 in the table (the library's
    search(batch_sizes=...) had no flag); a size that does not divide --batch-size is refused."""
    import json

    from edgeadapt.cli.main import main

    common = ["memory", "plan", "tiny-resnet", "--budget", "64MiB", "--batch-size", "16", "--max-probes", "2",
              "--probe-batches", "2", "--eval-batches", "1", "--json"]
    assert main([*common, "--batch-sizes", "8"]) == 0
    plans = json.loads(capsys.readouterr().out)["plans"]
    assert {p["batch_size"] for p in plans} == {None, 8}
    assert main([*common, "--batch-sizes", "5"]) == 2
    assert "5" in capsys.readouterr().err


def test_a_local_model_is_recorded_by_its_absolute_path_and_a_hub_name_as_typed(tmp_path, monkeypatch):
    """Before: `memory plan runs/m --save` recorded "runs/m", which means another model (or none) from
    another directory; a local directory is now recorded absolute, a built-in or hub name unchanged."""
    resnet = load_adapter("tiny-resnet")
    (tmp_path / "runs" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert plan_model(resnet, "runs/m").name == str((tmp_path / "runs" / "m").resolve())
    assert plan_model(resnet, "tiny-resnet").name == "tiny-resnet"
    assert plan_model(resnet, "org/some-model").name == "org/some-model"


def test_a_plan_records_budget_and_dtype_and_warns_on_another_dtype(tmp_path):
    """Before: a plan file recorded neither the budget nor the dtype it was chosen for, so a float32
    plan applied to a bfloat16 model (half the bytes) passed silently. Old files (no dtype, no budget)
    load as before."""
    resnet = load_adapter("tiny-resnet")
    here = plan_model(resnet, "tiny-resnet")
    assert here.dtype == "float32"
    path = save_plan(MemoryPlan(freeze_blocks=1), tmp_path / "p.json", here, 8, 3 * 2**20)
    loaded = load_plan_file(path)
    assert loaded.budget_bytes == 3 * 2**20 and loaded.model.dtype == "float32"
    assert loaded.plan() == MemoryPlan(freeze_blocks=1)
    bf16 = load_plan_file(save_plan(MemoryPlan(freeze_blocks=1), tmp_path / "b.json",
                                    here.model_copy(update={"dtype": "bfloat16"})))
    with pytest.warns(UserWarning, match=r"chosen for tiny-resnet \(resnet, 3 blocks, bfloat16\), not "
                                         r"tiny-resnet \(resnet, 3 blocks, float32\)"):
        check_plan_fits(bf16, resnet, "tiny-resnet")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"kind": "memory-plan", "freeze_blocks": 1,
                               "model": {"name": "tiny-resnet", "family": "resnet", "num_blocks": 3}}))
    loaded = load_plan_file(old)
    assert loaded.budget_bytes is None and loaded.model.dtype is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_plan_fits(loaded, resnet, "tiny-resnet") == MemoryPlan(freeze_blocks=1)
