"""Manifests that cannot be trusted are refused by name (issue 12 §2 and the small things of §3):
no files listed, a JSON list, no base, a broken safetensors header, a missing manifest; weights
are written 0644 like every other file, and temp files of a killed write are cleaned next time."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from edgeadapt.artifacts import check_safetensors_header, sha256_file
from edgeadapt.cli.main import main
from edgeadapt.errors import ArtifactError
from edgeadapt.models.registry import load_adapter
from edgeadapt.online.report import write_report
from edgeadapt.pruning.checkpoint import load_model, load_pruned, save_pruned
from edgeadapt.training.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return save_pruned(load_adapter("tiny-vit"), tmp_path_factory.mktemp("art") / "model")


@pytest.fixture
def copy(artifact, tmp_path) -> Path:
    return Path(shutil.copytree(artifact, tmp_path / "model"))


def _edit(directory: Path, change) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(change(manifest)))


def test_empty_files_map_no_longer_disables_verification(copy):
    """Before: `"files": {}` loaded a model with a weight edited by 6752.7 silently."""
    _edit(copy, lambda m: {**m, "files": {}})
    with pytest.raises(ArtifactError, match="lists no files"):
        load_pruned(copy)


def test_a_manifest_omitting_the_weights_is_refused(copy):
    _edit(copy, lambda m: {**m, "files": {k: v for k, v in m["files"].items() if k != "model.safetensors"}})
    with pytest.raises(ArtifactError, match=r"does not list .*model\.safetensors"):
        load_pruned(copy)


def test_a_manifest_that_is_a_json_list_is_refused(copy):
    """Before: AttributeError: 'list' object has no attribute 'get'."""
    (copy / "manifest.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ArtifactError, match="not a JSON object"):
        load_pruned(copy)


def test_a_manifest_without_base_is_refused(copy):
    """Before: KeyError: 'base'."""
    _edit(copy, lambda m: {k: v for k, v in m.items() if k != "base"})
    with pytest.raises(ArtifactError, match="lacks 'base'"):
        load_pruned(copy)


def test_a_broken_weights_header_is_refused_by_name(copy):
    """Before: a SafetensorError traceback (when the manifest's hash was updated with the file)."""
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[0:8] = (10**12).to_bytes(8, "little")
    weights.write_bytes(bytes(data))
    _edit(copy, lambda m: {**m, "files": {**m["files"], "model.safetensors": sha256_file(weights)}})
    with pytest.raises(ArtifactError, match="broken safetensors header"):
        load_pruned(copy)
    with pytest.raises(ArtifactError, match="broken safetensors header"):
        check_safetensors_header(weights)


def test_a_directory_without_manifest_says_so(copy):
    """Before: '... is not a Hugging Face model directory (no config.json)'."""
    (copy / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_model(copy)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_pruned(copy)


def test_weights_are_written_with_the_mode_of_other_files(artifact):
    """Before: model.safetensors was 0600 while the JSON files were 0644."""
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in artifact.iterdir() if p.is_file()}
    assert modes["model.safetensors"] == modes["plan.json"] == 0o666 & ~umask, modes


def test_temp_files_of_a_killed_write_are_cleaned_by_the_next_write(tmp_path):
    """Before: `.model.safetensors.XXXX.tmp` / `tmpXXXX.tmp` left by a kill stayed for ever."""
    adapter = load_adapter("tiny-vit")
    out = save_pruned(adapter, tmp_path / "m")
    leftovers = [out / ".model.safetensors.abc123.tmp", out / "tmpq1w2e3.tmp"]
    for p in leftovers:
        p.write_bytes(b"partial")
    save_pruned(adapter, out)
    assert not any(p.exists() for p in leftovers)
    load_pruned(out)


def _modes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): stat.S_IMODE(p.stat().st_mode) for p in directory.rglob("*")
            if p.is_file()}


def _public() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def test_training_checkpoint_weights_get_the_mode_of_other_files(tmp_path):
    """Before: checkpoint/model.safetensors and best.safetensors were 0600 (safetensors' own mode)."""
    model = load_adapter("tiny-vit").model
    best = {k: v.clone() for k, v in model.state_dict().items()}
    checkpoint = save_checkpoint(tmp_path, model, {"step": 7}, best)
    assert set(_modes(checkpoint).values()) == {_public()}, _modes(checkpoint)
    assert json.loads((checkpoint / "manifest.json").read_text())["step"] == 7


RESULTS = {"rows": [{"method": "source", "mean_accuracy": 0.5, "retrain_seconds": 0.0, "peak_memory_bytes": 0,
                     "params": 10}],
           "domains": ["fog-3"], "per_domain": [{"method": "source", "domain": "fog-3", "accuracy": 0.5}]}


def test_the_adapt_report_is_0644_and_cleans_a_killed_writes_temp_files(tmp_path):
    """Before: `.report.md.XXXX.tmp` files that a killed adapt left in its --out stayed for ever."""
    stale = [tmp_path / ".results.json.abc123.tmp", tmp_path / ".accuracy_per_domain.png.q1w2.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    write_report(RESULTS, tmp_path)
    assert not any(p.exists() for p in stale)
    modes = _modes(tmp_path)
    assert {"results.json", "report.md", "report.html", "per_domain.csv", "memory_time.png"} <= set(modes)
    assert set(modes.values()) == {_public()}, modes


@pytest.mark.slow
def test_llm_pretrain_small_things(tmp_path, capsys):
    """The reference LM's artifact (`edgeadapt llm-pretrain`): every file 0644 (checkpoint weights
    included), the checkpoint records its step, and a --force rerun removes what a killed run left
    (temp files, another process's half-written checkpoint)."""
    out = tmp_path / "ref"
    assert main(["--quiet", "llm-pretrain", "--out", str(out), "--epochs", "1"]) == 0
    assert set(_modes(out).values()) == {_public()}, _modes(out)
    step = json.loads((out / "checkpoints" / "checkpoint" / "manifest.json").read_text())["step"]
    assert isinstance(step, int) and step > 0
    proc = subprocess.Popen(["true"])
    proc.wait()  # a dead PID
    stale = [out / ".model.safetensors.abc123.tmp", out / "checkpoints" / f".checkpoint-{proc.pid}"]
    stale[0].write_bytes(b"partial")
    stale[1].mkdir()
    (stale[1] / "model.safetensors").write_bytes(b"partial")
    assert main(["--quiet", "llm-pretrain", "--out", str(out), "--epochs", "1", "--force"]) == 0
    assert not any(p.exists() for p in stale)
    assert set(_modes(out).values()) == {_public()}, _modes(out)
    load_pruned(out)
