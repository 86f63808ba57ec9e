"""Bad plans, sparsities and artifacts fail with a message that names the problem."""

from __future__ import annotations

import json

import pytest

from edgeadapt.artifacts import ArtifactError
from edgeadapt.models.registry import load_adapter
from edgeadapt.pruning.apply import apply_plan
from edgeadapt.pruning.checkpoint import load_pruned, save_pruned
from edgeadapt.pruning.plan import PlanError, PruningPlan
from edgeadapt.pruning.prune import prune


@pytest.fixture
def llama():
    return load_adapter("tiny-llama")


def test_plan_for_another_architecture_is_refused(llama):
    other = PruningPlan.dense(load_adapter("tiny-opt").fingerprint())
    with pytest.raises(PlanError, match="another architecture.*model_type"):
        apply_plan(llama, other)


@pytest.mark.parametrize("sparsity", [1.0, 1.5, -0.1, float("nan")])
def test_sparsity_outside_unit_interval_is_refused(llama, sparsity):
    with pytest.raises(ValueError, match=r"unit_sparsity must be"):
        prune(llama, ["neurons"], "magnitude", unit_sparsity=sparsity)


def test_unknown_target_and_importance_are_refused(llama):
    with pytest.raises(ValueError, match="targets must be"):
        prune(llama, ["filters"], "magnitude", unit_sparsity=0.5)
    with pytest.raises(ValueError, match="unknown importance 'vibes'"):
        prune(llama, ["neurons"], "vibes", batches=[], unit_sparsity=0.5)


def test_taylor_without_calibration_is_refused(llama):
    with pytest.raises(ValueError, match="needs calibration batches"):
        prune(llama, ["neurons"], "taylor", unit_sparsity=0.5)


@pytest.mark.parametrize("edit, message", [
    (lambda p: setattr(p.blocks[0], "neurons", []), "keeps no neurons"),
    (lambda p: setattr(p.blocks[0], "neurons", [5, 3]), "unique ascending"),
    (lambda p: setattr(p.blocks[0], "heads", [0, 9]), r"heads must be unique ascending indices in \[0, 2\)"),
    (lambda p: p.blocks.clear(), "at least one layer"),
])
def test_malformed_plans_are_refused(llama, edit, message):
    plan = PruningPlan.dense(llama.fingerprint())
    edit(plan)
    with pytest.raises(PlanError, match=message):
        apply_plan(llama, plan)


def test_plan_cannot_resurrect_pruned_units(llama):
    prune(llama, ["neurons"], "magnitude", unit_sparsity=0.5)
    with pytest.raises(PlanError, match="already pruned"):
        apply_plan(llama, PruningPlan.dense(llama.fingerprint()))


def test_plan_json_round_trip_and_bad_files(llama, tmp_path):
    plan = PruningPlan.dense(llama.fingerprint())
    plan.blocks[1].neurons = [1, 2, 3]
    plan.save(tmp_path / "plan.json")
    assert PruningPlan.load(tmp_path / "plan.json").to_dict() == plan.to_dict()
    with pytest.raises(PlanError, match="does not exist"):
        PruningPlan.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        PruningPlan.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(PlanError, match="not an edgeadapt pruning plan"):
        PruningPlan.load(tmp_path / "other.json")


@pytest.fixture
def artifact(llama, tmp_path):
    prune(llama, ["neurons"], "magnitude", unit_sparsity=0.5)
    return save_pruned(llama, tmp_path / "art")


def test_corrupted_weights_are_detected(artifact):
    data = bytearray((artifact / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (artifact / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.safetensors is corrupted"):
        load_pruned(artifact)


def test_missing_file_and_manifest_are_detected(artifact, tmp_path):
    (artifact / "plan.json").unlink()
    with pytest.raises(ArtifactError, match="plan.json is missing"):
        load_pruned(artifact)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_pruned(tmp_path)


def test_artifact_of_another_kind_or_version_is_refused(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    (artifact / "manifest.json").write_text(json.dumps({**manifest, "kind": "knowledge-base"}))
    with pytest.raises(ArtifactError, match="holds a 'knowledge-base' artifact, expected 'pruned-model'"):
        load_pruned(artifact)
    (artifact / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format version 99"):
        load_pruned(artifact)


def test_plan_mismatching_its_weights_is_refused(artifact, llama):
    # A consistent-looking artifact whose plan (and its hash) was swapped for another valid plan.
    from edgeadapt.artifacts import sha256_file

    plan = PruningPlan.dense(llama.fingerprint())
    plan.save(artifact / "plan.json")
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["files"]["plan.json"] = sha256_file(artifact / "plan.json")
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="weights do not match"):
        load_pruned(artifact)
