"""build_offload: descendants distilled on a dataset, saved, and profiled in one call."""

from __future__ import annotations

import pytest

from edgeadapt.errors import ConfigError
from edgeadapt.models.registry import load_adapter
from edgeadapt.offload.artifact import load_descendants, load_exit_heads
from edgeadapt.offload.build import OffloadBuildConfig, build_offload
from edgeadapt.offload.profile import EMULATED_EDGE, ChainProfile


def test_build_writes_the_artifact_and_the_profile(tmp_path):
    cfg = OffloadBuildConfig("tiny-resnet", widths=(1.0, 0.5), epochs=1, batch_size=256, warmup=0,
                             repeats=1, checks=1)
    desc, prof = build_offload(cfg, tmp_path / "out", devices=[EMULATED_EDGE])
    assert load_descendants(tmp_path / "out" / "descendants").names == desc.names
    assert ChainProfile.load(tmp_path / "out" / "profile.json") == prof
    assert prof.devices == [EMULATED_EDGE] and len(prof.additive_check) == 1
    assert all(len(v) == 1 for v in desc.losses.values()) and desc.losses
    # exits are opt-in in the library (the CLI defaults --exit-epochs to --epochs)
    assert load_exit_heads(tmp_path / "out" / "descendants") == []
    assert not (tmp_path / "out" / "exits.json").exists()


def test_build_refuses_a_pruned_model_and_bad_config():
    from edgeadapt.pruning.channels import prune_channels

    adapter = load_adapter("tiny-resnet")
    prune_channels(adapter, unit_sparsity=0.5)
    with pytest.raises(ConfigError, match="already pruned"):
        build_offload(OffloadBuildConfig("tiny-resnet"), "unused", adapter=adapter)
    with pytest.raises(ConfigError, match="epochs"):
        OffloadBuildConfig("tiny-resnet", epochs=0)
    with pytest.raises(ConfigError, match="exit_epochs"):
        OffloadBuildConfig("tiny-resnet", exit_epochs=-1)
    with pytest.raises(ConfigError, match="not an image-classification"):
        OffloadBuildConfig("tiny-resnet", data="builtin-docs")
