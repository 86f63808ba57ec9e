"""Output directories never lie (issue 12 §2): a run of another config is not "resumed", another
command's output is not written over, two runs never share a directory — all refused before any
compute with exit 2, and `--overwrite` replaces instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edgeadapt.cli.main import main
from edgeadapt.errors import ConfigError, OutputExistsError, OutputLockedError
from edgeadapt.rundir import claim_output, config_diff, config_hash

TRAIN = {"kind": "train", "model": "tiny-vit", "seed": 0, "data": {"name": "digits"},
         "train": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-2, "max_steps": 3, "progress": False},
         "tracking": {"backends": ["csv"]}}


def _recipe(tmp_path: Path, name: str, out: Path, **train) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**TRAIN, "out": str(out), "train": {**TRAIN["train"], **train}}))
    return path


def _prune(model: str, out: Path, *extra: str) -> list[str]:
    return ["prune", model, "--unit-sparsity", "0.5", "--importance", "magnitude", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A real `edgeadapt train` run directory (3 steps) and its recipe."""
    root = tmp_path_factory.mktemp("runs")
    out = root / "run"
    recipe = _recipe(root, "a.yaml", out)
    assert main(["train", "--config", str(recipe)]) == 0
    return out, root


def test_config_hash_ignores_cosmetic_fields_and_diff_names_fields():
    a = {"train": {"learning_rate": 0.1, "progress": True}, "out": "x", "seed": 0}
    same = {**a, "out": "y", "train": {"learning_rate": 0.1, "progress": False}}
    assert config_hash(a) == config_hash(same)
    assert config_hash(a) != config_hash({**a, "seed": 1})
    assert config_diff(a, {**a, "seed": 1, "train": {"learning_rate": 0.2}}) == [
        "seed: 0 -> 1", "train.learning_rate: 0.1 -> 0.2", "train.progress: True -> (absent)"]


def test_train_into_a_run_of_another_config_is_refused_naming_the_fields(trained, capsys):
    """Before: `train --config b.yaml --out d` after a.yaml trained 0 steps, exited 0 and wrote a
    manifest claiming b's config over a's weights."""
    out, root = trained
    manifest = (out / "manifest.json").read_bytes()
    b = _recipe(root, "b.yaml", out, learning_rate=5e-3)
    t0 = time.perf_counter()
    assert main(["train", "--config", str(b)]) == 2
    err = capsys.readouterr().err
    assert "train.learning_rate: 0.01 -> 0.005" in err and "--overwrite" in err, err
    assert time.perf_counter() - t0 < 5  # refused before loading data or the model
    assert (out / "manifest.json").read_bytes() == manifest  # nothing touched


def test_the_same_config_resumes_and_progress_is_cosmetic(trained):
    out, root = trained
    again = _recipe(root, "a2.yaml", out, progress=True)  # only a cosmetic field differs
    assert main(["train", "--config", str(again)]) == 0
    manifest = json.loads((out / "checkpoints" / "checkpoint" / "manifest.json").read_text())
    assert manifest["step"] == 3 and len(manifest["config_hash"]) == 64  # before: "step": null


def test_prune_into_a_trained_run_dir_is_refused_before_compute(trained, capsys):
    """Before: prune replaced the model but left the run's metrics and checkpoints (a mixed dir)."""
    out, _ = trained
    before = sorted(p.name for p in out.iterdir())
    assert main(_prune("tiny-vit", out)) == 2
    err = capsys.readouterr().err
    assert "already holds the output of `edgeadapt train`" in err and "--overwrite" in err, err
    assert sorted(p.name for p in out.iterdir()) == before


def test_prune_into_a_kb_dir_is_refused_and_overwrite_replaces(tmp_path, capsys):
    """Before: prune --out into a knowledge-base directory destroyed the KB."""
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "manifest.json").write_text(json.dumps({"kind": "knowledge-base"}))
    (kb / "gates.safetensors").write_bytes(b"x")
    assert main(_prune("tiny-vit", kb)) == 2
    assert "already holds a 'knowledge-base' artifact" in capsys.readouterr().err
    assert (kb / "gates.safetensors").exists()
    assert main(_prune("tiny-vit", kb, "--overwrite")) == 0
    assert not (kb / "gates.safetensors").exists()
    assert json.loads((kb / "manifest.json").read_text())["kind"] == "pruned-model"
    assert main(_prune("tiny-vit", kb)) == 0  # the same command's earlier output may be replaced


def test_a_stray_file_in_the_output_is_refused(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"1 other entries \(notes.txt\)"):
        with claim_output(d, "prune", {}):
            pass


def test_resumable_claim_refuses_another_config(tmp_path):
    with claim_output(tmp_path / "d", "train", {"seed": 0}):
        pass
    with pytest.raises(ConfigError, match="seed: 0 -> 1"):
        with claim_output(tmp_path / "d", "train", {"seed": 1}):
            pass
    with claim_output(tmp_path / "d", "train", {"seed": 1}, overwrite=True):
        pass


HOLD = """
import sys, time
from edgeadapt.rundir import claim_output
with claim_output(sys.argv[1], "prune", {}, resumable=False):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_run_on_one_directory_is_refused_with_the_holders_pid(tmp_path, capsys):
    """Before: two runs on one directory both exited 0 (the last writer won)."""
    out = tmp_path / "shared"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=f"PID {holder.pid}"):
            with claim_output(out, "prune", {}, resumable=False):
                pass
        assert main(_prune("tiny-vit", out)) == 2
        assert f"in use by another edgeadapt run (PID {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert main(_prune("tiny-vit", out)) == 0  # the kernel dropped the dead holder's lock
