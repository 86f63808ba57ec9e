"""A run refused before any result leaves nothing in its output directory, so the rerun with the fix
needs no ``--overwrite``.

Before: ``edgeadapt adapt --memory-budget 1KiB`` was refused (infeasible) after the output was
claimed and the loggers opened, and left ``run.json`` and ``logs/`` behind; the rerun with a
feasible budget (another config) was then refused as "a run of another config".
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgeadapt.cli.main import main
from edgeadapt.data.registry import build_dataset
from edgeadapt.errors import ConfigError
from edgeadapt.models.registry import load_adapter
from edgeadapt.offline.artifacts import save_kb
from edgeadapt.offline.knowledge_base import KBSettings, init_kb
from edgeadapt.offline.lora import LoraSettings, save_lora_artifact
from edgeadapt.rundir import claim_output


def _claim_and_fail(out: Path, error: BaseException) -> None:
    with pytest.raises(type(error)), claim_output(out, "adapt", {"x": 1}) as d:
        (d / "logs" / "tensorboard").mkdir(parents=True)
        (d / "logs" / "metrics.csv").write_text("")
        raise error


def test_a_refusal_after_the_claim_removes_run_json_and_logs(tmp_path):
    _claim_and_fail(tmp_path / "new", ConfigError("memory_budget: infeasible"))
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()  # a directory the user made stays, emptied again
    _claim_and_fail(tmp_path / "empty", ConfigError("refused"))
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


def test_train_refused_by_its_memory_plan_leaves_no_output(tmp_path, capsys):
    """Before: run.json, checkpoints/config.json and logs/ stayed after the refusal."""
    recipe = tmp_path / "t.yaml"
    recipe.write_text(f"kind: train\nmodel: tiny-vit\ndata: {{name: digits}}\nout: {tmp_path / 'out'}\n"
                      "train: {epochs: 1, batch_size: 8, learning_rate: 0.001, memory: {freeze_blocks: 9}}\n")
    assert main(["--quiet", "train", "--config", str(recipe)]) == 2
    assert "cannot freeze 9" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_is_a_result(tmp_path):
    with pytest.raises(ConfigError), claim_output(tmp_path / "ck", "train", {"x": 1}) as d:
        (d / "checkpoints" / "checkpoint").mkdir(parents=True)
        (d / "checkpoints" / "config.json").write_text("{}")
        raise ConfigError("refused after a checkpoint")
    assert (tmp_path / "ck" / "checkpoints" / "checkpoint").is_dir()


def test_a_crash_keeps_its_logs_and_results_are_never_removed(tmp_path):
    _claim_and_fail(tmp_path / "bug", RuntimeError("a bug"))  # the logs may explain a bug: kept
    assert sorted(p.name for p in (tmp_path / "bug").iterdir()) == ["logs", "run.json"]
    with pytest.raises(ConfigError), claim_output(tmp_path / "res", "adapt", {"x": 1}) as d:
        (d / "report.md").write_text("a result")
        raise ConfigError("refused late")
    assert (tmp_path / "res" / "report.md").is_file()


@pytest.fixture(scope="module")
def offline_dir(tmp_path_factory) -> Path:
    """An `edgeadapt offline` output of the seeded tiny ViT (a KB from one digits batch; seconds)."""
    torch.manual_seed(0)
    fm = load_adapter("tiny-vit")
    batch = next(iter(build_dataset("digits", size=16).train.batches(16)))
    out = tmp_path_factory.mktemp("offline")
    save_lora_artifact(fm, out / "lora", LoraSettings(), {}, {})
    save_kb(init_kb(fm, [batch], KBSettings(importance="magnitude")), out / "kb",
            config={"offline": {"data": {"name": "digits"}, "seed": 0}})
    return out


def test_adapt_refused_for_its_memory_budget_leaves_no_output(offline_dir, tmp_path, capsys):
    out = tmp_path / "adapt"
    argv = ["--quiet", "adapt", "--offline", str(offline_dir), "--stream", "fog:5", "--methods", "edgeadapt",
            "--steps", "1", "--out", str(out)]
    assert main([*argv, "--memory-budget", "1KiB"]) == 2
    err = capsys.readouterr().err
    assert "infeasible" in err and not out.exists()
    # the error names the flag the user typed, not the config field (finding 5)
    assert "--memory-budget" in err and "memory_budget" not in err, err
