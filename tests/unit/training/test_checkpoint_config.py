"""Training checkpoints carry the hash of the config that wrote them and their step; a checkpoint
of another config or other shapes is refused clearly; killed saves' leftovers are cleaned."""

from __future__ import annotations

import json

import pytest
import torch

from edgeadapt.errors import ConfigError
from edgeadapt.training.checkpoint import bind_checkpoints, find_checkpoint, load_checkpoint, save_checkpoint

STATE = {"loop": {"step": 7}, "optimizer": {}}


def test_manifest_records_step_and_config_hash(tmp_path):
    """Before: the manifest said "step": null and held no config identity."""
    digest = bind_checkpoints(tmp_path, {"train": {"learning_rate": 0.1}})
    path = save_checkpoint(tmp_path, torch.nn.Linear(4, 3), STATE, None)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 7 and manifest["config_hash"] == digest


def test_binding_another_config_names_the_fields(tmp_path):
    bind_checkpoints(tmp_path, {"train": {"learning_rate": 0.1, "progress": True}, "seed": 0})
    bind_checkpoints(tmp_path, {"train": {"learning_rate": 0.1, "progress": False}, "seed": 0})  # cosmetic
    with pytest.raises(ConfigError, match=r"train\.learning_rate: 0\.1 -> 0\.2.*--overwrite"):
        bind_checkpoints(tmp_path, {"train": {"learning_rate": 0.2}, "seed": 0})


def test_a_checkpoint_of_other_shapes_is_a_config_error_not_size_mismatch(tmp_path):
    """Before: RuntimeError: Error(s) in loading state_dict ... size mismatch."""
    save_checkpoint(tmp_path, torch.nn.Linear(4, 3), STATE, None)
    with pytest.raises(ConfigError, match="does not fit the model being trained.*size mismatch.*--overwrite"):
        load_checkpoint(find_checkpoint(tmp_path), torch.nn.Linear(4, 5))


def test_a_checkpoint_written_under_another_config_is_refused(tmp_path):
    bind_checkpoints(tmp_path, {"seed": 0})
    save_checkpoint(tmp_path, torch.nn.Linear(4, 3), STATE, None)
    (tmp_path / "config.json").write_text(json.dumps({"config_hash": "0" * 64, "config": {"seed": 1}}))
    with pytest.raises(ConfigError, match="another config"):
        load_checkpoint(find_checkpoint(tmp_path), torch.nn.Linear(4, 3))


def test_leftovers_of_killed_saves_are_removed_at_the_next_save(tmp_path):
    """Before: `.checkpoint-<pid>` directories of killed saves stayed for ever."""
    stale = tmp_path / ".checkpoint-999999"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial")
    save_checkpoint(tmp_path, torch.nn.Linear(4, 3), STATE, None)
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
