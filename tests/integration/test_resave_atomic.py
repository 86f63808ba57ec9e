"""An interrupted re-save keeps the previous valid artifact (issue 12 §3): a new artifact is written
beside the old one, verified and swapped in by renames, and whatever a killed writer leaves beside
the directory is undone on the next load or claim. Tested with real `kill -9`s at random moments
and, deterministically, at each point of the swap."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from edgeadapt.artifacts import leftovers, read_manifest, replacing_dir, sibling
from edgeadapt.errors import ArtifactError
from edgeadapt.models.registry import load_adapter
from edgeadapt.offline.artifacts import load_kb
from edgeadapt.pruning.checkpoint import load_pruned, save_pruned
from edgeadapt.rundir import claim_output

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

# Saves two different knowledge bases into one directory, alternately, forever. It first saves each
# into a scratch directory and prints the hash of its gates, then saves one into the target (so a
# valid KB is there before any kill) and prints "ready".
RESAVE_KB = """
import json, sys
import torch
torch.set_num_threads(1)
from edgeadapt.models.registry import load_adapter
from edgeadapt.offline.artifacts import save_kb
from edgeadapt.offline.knowledge_base import KBSettings, init_kb
target, scratch = sys.argv[1], sys.argv[2]
fm = load_adapter("tiny-vit", seed=0)
kbs = []
for seed in (1, 2):
    torch.manual_seed(seed)
    kbs.append(init_kb(fm, [], KBSettings(importance="magnitude", bottleneck=64)))
digests = [json.load(open(save_kb(kb, f"{scratch}/{i}", {"which": i}) / "manifest.json"))["files"]
           ["gates.safetensors"] for i, kb in enumerate(kbs)]
print(json.dumps(digests), flush=True)
save_kb(kbs[0], target, {"which": 0})
print("ready", flush=True)
i = 1
while True:
    save_kb(kbs[i % 2], target, {"which": i % 2})
    i += 1
"""


def _dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_kb_resave_killed_at_random_moments_always_leaves_a_valid_kb(tmp_path):
    """Before: save_kb removed the manifest, then rewrote the files in place: a kill mid-write left
    neither KB (`no manifest.json`), and the directory's other files were at the writer's mercy."""
    target = tmp_path / "kb"
    target.mkdir()
    (target / "run.json").write_text('{"command": "offline kb"}')  # what a claimed run keeps there
    rng = random.Random(0)
    outcomes = []
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", RESAVE_KB, str(target), str(tmp_path / f"s{attempt}")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        try:
            digests = json.loads(proc.stdout.readline())
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
            try:
                proc.wait(timeout=rng.uniform(0.05, 1.5))  # it never exits by itself
            except subprocess.TimeoutExpired:
                pass
        finally:
            proc.kill()  # SIGKILL
            proc.wait()
        assert proc.returncode == -9
        kb = load_kb(target)  # verifies kind, version and every file's hash
        manifest = read_manifest(target, "knowledge-base", 1)
        which = manifest["config"]["which"]
        assert manifest["files"]["gates.safetensors"] == digests[which]
        assert kb.index.base_hash == manifest["base"]["hash"]
        assert (target / "run.json").read_text() == '{"command": "offline kb"}'
        assert leftovers(target) == []  # the killed writer's staging directory is gone
        outcomes.append(which)
    assert set(outcomes) <= {0, 1}


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return (save_pruned(load_adapter("tiny-vit", seed=0), root / "a"),
            save_pruned(load_adapter("tiny-vit", seed=1), root / "b"))


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copytree(src, dst))


def _weights(directory: Path) -> str:
    return read_manifest(directory, "pruned-model", 1)["files"]["model.safetensors"]


def test_killed_between_the_two_renames_the_old_artifact_is_put_back(two_models, tmp_path):
    a, b = two_models
    out = tmp_path / "model"
    dead = _dead_pid()
    _copy(a, sibling(out, "old", dead))  # old set aside, new not yet renamed in
    _copy(b, sibling(out, "new", dead))
    assert _weights(out) == _weights(a)  # a load puts the old one back
    assert load_pruned(out) is not None and leftovers(out) == []


def test_killed_while_staging_or_removing_the_old_copy_the_directory_stays(two_models, tmp_path):
    a, b = two_models
    out = _copy(a, tmp_path / "model")
    dead = _dead_pid()
    staged = sibling(out, "new", dead)
    staged.mkdir()
    (staged / "model.safetensors").write_bytes(b"half")  # killed while staging
    half_removed = _copy(b, sibling(out, "old", dead))  # or killed while removing the replaced one
    (half_removed / "plan.json").unlink()
    assert _weights(out) == _weights(a) and leftovers(out) == []


def test_a_running_writers_siblings_are_left_alone(two_models, tmp_path):
    a, _ = two_models
    out = _copy(a, tmp_path / "model")
    mine = sibling(out, "new")  # this process is alive: its staging directory is not a leftover
    mine.mkdir()
    read_manifest(out, "pruned-model", 1)
    assert mine.is_dir()


def test_replacing_dir_keeps_the_other_entries_and_refuses_an_unverifiable_artifact(two_models, tmp_path):
    a, b = two_models
    out = _copy(a, tmp_path / "model")
    (out / "run.json").write_text("{}")
    (out / "logs").mkdir()
    (out / "logs" / "metrics.csv").write_text("step\n1\n")
    with pytest.raises(ArtifactError, match="corrupted or was modified"):
        with replacing_dir(out) as staged:
            save_pruned(load_adapter("tiny-vit", seed=1), staged)
            (staged / "plan.json").write_text("{}")  # does not match its manifest: never swapped in
    assert _weights(out) == _weights(a) and leftovers(out) == []
    with replacing_dir(out) as staged:
        save_pruned(load_pruned(b), staged)
    assert _weights(out) == _weights(b) and leftovers(out) == []
    assert (out / "run.json").read_text() == "{}"
    assert (out / "logs" / "metrics.csv").read_text() == "step\n1\n"


OVERWRITE_THEN_DIE = """
import os, signal, sys
from edgeadapt.rundir import claim_output
with claim_output(sys.argv[1], "prune", {"new": True}, overwrite=True, resumable=False) as out:
    (out / "model.safetensors").write_bytes(b"half-written")
    print("writing", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_overwrite_run_leaves_the_previous_artifact(two_models, tmp_path):
    """Before: --overwrite emptied the directory at the start, so a kill left neither artifact."""
    a, _ = two_models
    out = _copy(a, tmp_path / "model")
    proc = subprocess.run([sys.executable, "-c", OVERWRITE_THEN_DIE, str(out)], capture_output=True,
                          text=True, env=ENV)
    assert proc.returncode == -9 and proc.stdout.strip() == "writing", proc.stderr[-2000:]
    assert _weights(out) == _weights(a)  # the load put it back
    assert not (out / "run.json").exists() and leftovers(out) == []
    with claim_output(out, "prune", {}, overwrite=True):  # and the next claim starts from it
        pass


def test_a_pruned_model_resave_that_fails_mid_write_keeps_the_previous_one(tmp_path, monkeypatch):
    """Before: save_pruned rewrote weights, config, plan and manifest in place, so a failure (or a
    kill) after the weights left new weights under the old manifest: the directory no longer loaded.
    Now the previous artifact, and the run's other files, stay as they were."""
    import edgeadapt.pruning.checkpoint as checkpoint

    out = save_pruned(load_adapter("tiny-vit", seed=0), tmp_path / "run")
    (out / "run.json").write_text('{"command": "train"}')
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def broken_plan_save(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.PruningPlan, "save", broken_plan_save)
    with pytest.raises(OSError, match="disk full"):
        save_pruned(load_adapter("tiny-vit", seed=1), out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert leftovers(out) == []
    load_pruned(out)  # verifies against the old manifest


def test_a_lora_or_index_resave_that_fails_mid_write_keeps_the_previous_one(tmp_path, monkeypatch):
    """Before: save_lora_artifact and save_index wrote into the directory in place, so a failure
    after the first file left an artifact whose files no longer matched its manifest."""
    import edgeadapt.offline.lora as lora
    import edgeadapt.offline.neuron_index as neuron_index
    from edgeadapt.offline.lora import LoraSettings, load_lora_artifact, save_lora_artifact
    from edgeadapt.offline.neuron_index import build_index, load_index, save_index
    from edgeadapt.pruning.importance import score

    adapter = load_adapter("tiny-vit", seed=0)
    adapter.parent_hash = adapter.base_hash()
    out = save_lora_artifact(adapter, tmp_path / "lora", LoraSettings(), {"best": 1}, {})
    index_dir = save_index(build_index(adapter, score(adapter, "random", seed=0)), tmp_path / "index")
    before = {d: {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} for d in (out, index_dir)}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(lora, "write_manifest", broken)
    monkeypatch.setattr(neuron_index, "write_manifest", broken)
    other = load_adapter("tiny-vit", seed=1)
    other.parent_hash = other.base_hash()
    with pytest.raises(OSError, match="disk full"):
        save_lora_artifact(other, out, LoraSettings(), {"best": 2}, {})
    with pytest.raises(OSError, match="disk full"):
        save_index(build_index(other, score(other, "random", seed=1)), index_dir)
    assert {d: {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} for d in (out, index_dir)} == before
    load_lora_artifact(out)
    load_index(index_dir)
