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

from edgeadapt.artifacts import leftovers
from edgeadapt.cli.main import main
from edgeadapt.config import parse_config
from edgeadapt.errors import ConfigError, OutputExistsError, OutputLockedError
from edgeadapt.models.registry import load_adapter
from edgeadapt.pruning.checkpoint import save_pruned
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
with claim_output(sys.argv[1], sys.argv[2], {}, resumable=False):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_run_on_one_directory_is_refused_with_the_holders_pid(tmp_path, capsys):
    """Before: two runs on one directory both exited 0 (the last writer won)."""
    out = tmp_path / "shared"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out), "prune"], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
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


# -- adapt claims its --out like every other writing command ----------------------------------------

def _stub_offline(root: Path) -> Path:
    """An offline directory whose artifacts exist but do not load: anything that fails on it ran after
    the claim of --out (which must come first, and must not have touched --out)."""
    for step in ("lora", "kb"):
        (root / "offline" / step).mkdir(parents=True)
        (root / "offline" / step / "manifest.json").write_text("{}")
    return root / "offline"


def _adapt(offline: Path, out: Path, *extra: str) -> list[str]:
    return ["adapt", "--offline", str(offline), "--out", str(out), "--methods", "source", *extra]


def test_adapt_into_another_commands_output_is_refused(trained, capsys):
    """Before: adapt wrote its report (results.json, logs) into any directory, a trained run's too."""
    out, root = trained
    before = sorted(p.name for p in out.iterdir())
    assert main(_adapt(_stub_offline(root / "adapt-a"), out)) == 2
    err = capsys.readouterr().err
    assert "already holds the output of `edgeadapt train`" in err and "--overwrite" in err, err
    assert sorted(p.name for p in out.iterdir()) == before


def test_adapt_report_of_another_config_is_refused_naming_the_field(tmp_path, capsys):
    offline, out = _stub_offline(tmp_path), tmp_path / "report"
    cfg = parse_config({"offline": str(offline), "out": str(out), "methods": ["source"]}, kind="adapt")
    with claim_output(out, "adapt", cfg):
        (out / "results.json").write_text("{}")
    assert main(_adapt(offline, out, "--width", "0.5")) == 2
    err = capsys.readouterr().err
    assert "width: 0.75 -> 0.5" in err and "--overwrite" in err, err
    assert main(_adapt(offline, out)) == 2  # the same config passes the claim, then the stub fails to load
    err = capsys.readouterr().err
    assert "different config" not in err and "offline/lora" in err, err


def test_a_second_adapt_on_one_directory_is_refused_with_the_holders_pid(tmp_path, capsys):
    """Before: two adapt runs on one --out both ran, interleaving their logs and reports."""
    out = tmp_path / "report"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out), "adapt"], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(_adapt(_stub_offline(tmp_path), out)) == 2
        assert f"in use by another edgeadapt run (PID {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


# -- --overwrite deletes nothing until the run has passed every check (and succeeded) ---------------

def _snapshot(directory: Path) -> dict[str, tuple[bytes | None, int]]:
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None, p.stat().st_mode)
            for p in sorted(directory.rglob("*"))}


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory) -> dict[str, Path]:
    """Model artifacts that pass config validation (they exist and say what they are) but fail to
    load (a weight byte flipped: hash mismatch), i.e. an error found only after the claim."""
    root = tmp_path_factory.mktemp("corrupt")
    out = {}
    for name in ("tiny-vit", "tiny-llama"):
        path = save_pruned(load_adapter(name), root / name)
        data = bytearray((path / "model.safetensors").read_bytes())
        data[-3] ^= 0xFF
        (path / "model.safetensors").write_bytes(bytes(data))
        out[name] = path
    return out


def _invalid_overwrite(command: str, root: Path, out: Path, corrupt: dict[str, Path]) -> list[str]:
    """``command`` with --overwrite into ``out`` and one thing wrong that is found after the claim."""
    if command == "train":
        config = {**TRAIN, "model": str(corrupt["tiny-vit"]), "out": str(out)}
    elif command == "offline":  # the kb step without the lora step's artifact
        train = {"epochs": 1, "batch_size": 32, "learning_rate": 1e-3, "max_steps": 2, "progress": False}
        config = {"kind": "offline", "model": str(corrupt["tiny-vit"]), "data": {"name": "digits"},
                  "lora": {"enabled": False, "train": train},
                  "kb": {"settings": {"importance": "magnitude"}, "train": train, "widths": [0.5]},
                  "tracking": {"backends": ["none"]}, "out": str(out.parent)}
    elif command == "llm-prune":
        config = {"kind": "llm-prune", "model": str(corrupt["tiny-llama"]), "seq_len": 32, "batch_size": 4,
                  "param_sparsity": 0.2, "targets": ["heads"], "pruning": {"importance": "magnitude"},
                  "recovery": {"method": "none"}, "save": str(out), "log_dir": str(root / "logs"),
                  "tracker": "none"}
    elif command == "prune":
        return [*_prune("tiny-vit", out, "--protect-first", "100"), "--overwrite"]
    else:
        return [*_adapt(_stub_offline(root), out), "--overwrite"]
    path = root / f"{command}.yaml"
    path.write_text(yaml.safe_dump(config))
    step = ["kb"] if command == "offline" else []
    return [command, *step, "--config", str(path), "--overwrite"]


@pytest.mark.parametrize("command", ["train", "prune", "adapt", "offline", "llm-prune"])
def test_overwrite_with_an_invalid_run_leaves_the_old_directory_byte_identical(command, corrupt, tmp_path,
                                                                              capsys):
    """Before: --overwrite emptied the directory at the claim, before the checks that come with
    loading (model, limits, upstream artifacts); the run then failed and the old output was gone."""
    root = tmp_path / "root"
    out = root / ("kb" if command == "offline" else "out")  # offline kb writes <out>/kb
    (out / "logs").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"command": "somebody else", "config_hash": "0", "config": {}}))
    (out / "model.safetensors").write_bytes(os.urandom(256))
    (out / "logs" / "metrics.csv").write_text("step,loss\n1,2.5\n")
    before = _snapshot(out)
    argv = _invalid_overwrite(command, root, out, corrupt)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "already holds" not in err and "unrecognized" not in err, err
    assert _snapshot(out) == before
    assert leftovers(out) == []
