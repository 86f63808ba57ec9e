"""The offline stage's identity chain and exact resume (issue 12 §2): `offline kb` refuses an
`out/lora` made from another model; a killed `offline kb` resumes bit-identically; the LoRA step
checkpoints (and its manifest records the step)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edgeadapt.config import parse_config
from edgeadapt.errors import ArtifactError, ConfigError
from edgeadapt.models.registry import load_adapter
from edgeadapt.offline.pipeline import run_offline
from edgeadapt.pruning.checkpoint import save_pruned

TRAIN = {"epochs": 1, "batch_size": 32, "learning_rate": 1e-3, "max_steps": 6, "checkpoint_every": 2,
         "progress": False}


def config(model: Path, out: Path, lora: bool = False) -> dict:
    return {"kind": "offline", "model": str(model), "data": {"name": "digits", "options": {"size": 16}},
            "lora": {"enabled": lora, "train": TRAIN},
            "kb": {"settings": {"importance": "magnitude", "bottleneck": 8}, "train": TRAIN, "widths": [0.5]},
            "tracking": {"backends": ["none"]}, "out": str(out)}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fm")
    return (save_pruned(load_adapter("tiny-vit", seed=0), root / "a"),
            save_pruned(load_adapter("tiny-vit", seed=1), root / "b"))


def test_kb_refuses_a_lora_made_from_another_model(models, tmp_path):
    """Before: `offline kb` with a changed `model:` built on the stale out/lora of the old model."""
    a, b = models
    run_offline(parse_config(config(a, tmp_path / "out")), ["lora"])
    stale = r"out/lora was made with a different config \(model: '.*/a' -> '.*/b'"
    with pytest.raises(ConfigError, match=stale):
        run_offline(parse_config(config(b, tmp_path / "out")), ["kb"])
    assert not (tmp_path / "out" / "kb" / "manifest.json").exists()


def test_kb_refuses_a_lora_of_other_weights_at_the_same_path(models, tmp_path):
    a, _ = models
    fm = tmp_path / "fm"
    shutil.copytree(a, fm)
    run_offline(parse_config(config(fm, tmp_path / "out")), ["lora"])
    save_pruned(load_adapter("tiny-vit", seed=2), fm)  # retrained in place: same config, other weights
    with pytest.raises(ArtifactError, match="tuned from other weights"):
        run_offline(parse_config(config(fm, tmp_path / "out")), ["kb"])


def test_lora_step_writes_checkpoints_and_resumes(models, tmp_path):
    """Before: the LoRA step accepted checkpoint_every but wrote nothing."""
    a, _ = models
    cfg = parse_config(config(a, tmp_path / "out", lora=True))
    report = run_offline(cfg, ["lora"])["lora"]
    checkpoint = tmp_path / "out" / "lora" / "checkpoints" / "checkpoint"
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert report["steps"] == 6 and manifest["step"] == 6


KILL = """
import os, signal, sys
import torch
torch.set_num_threads(1)
import edgeadapt.training.loop as loop
from edgeadapt.config import parse_config
from edgeadapt.offline.pipeline import run_offline
import json
save, calls = loop.save_checkpoint, []
def save_then_die(*args, **kwargs):
    out = save(*args, **kwargs)
    calls.append(1)
    if len(calls) == 2:  # after the step-4 checkpoint, mid-epoch
        os.kill(os.getpid(), signal.SIGKILL)
    return out
loop.save_checkpoint = save_then_die
run_offline(parse_config(json.loads(sys.argv[1])), ["kb"])
"""


def test_killed_kb_build_resumes_bit_identically(models, tmp_path):
    """Before: the sandwich widths came from a generator recreated at every start, so a resumed build
    diverged from the uninterrupted one."""
    torch.set_num_threads(1)
    a, _ = models
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_offline(parse_config(config(a, whole)), ["lora"])
    shutil.copytree(whole / "lora", killed / "lora")
    run_offline(parse_config(config(a, whole)), ["kb"])
    cfg = config(a, killed)
    proc = subprocess.run([sys.executable, "-c", KILL, json.dumps(cfg)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (killed / "kb" / "manifest.json").exists()
    run_offline(parse_config(cfg), ["kb"])
    for name in ("gates.safetensors", "model/model.safetensors"):
        x, y = load_file(str(whole / "kb" / name)), load_file(str(killed / "kb" / name))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
