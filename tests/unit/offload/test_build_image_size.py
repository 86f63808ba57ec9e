"""``offload build --image-size N``: a CNN whose saved config names no ``image_size`` was built and
profiled at 224×224 even on 8×8 digits (new-user trial); now the size is a flag, validated (positive;
a ViT takes only its own grid), printed, and what serve/run rebuild the input at."""

from __future__ import annotations

import json

import pytest

from edgeadapt.cli.main import main
from edgeadapt.errors import ConfigError
from edgeadapt.models.registry import load_adapter
from edgeadapt.offload.build import OffloadBuildConfig
from edgeadapt.offload.profile import ChainProfile
from edgeadapt.offload.serve import load_chain

FAST = ["--widths", "1,0.5", "--epochs", "1", "--batch-size", "256", "--warmup", "0", "--repeats", "1",
        "--checks", "0", "--exit-epochs", "0"]


def test_a_cnn_without_image_size_in_its_config_builds_at_the_size_given(tmp_path, capsys):
    adapter = load_adapter("tiny-resnet")
    adapter.model.save_pretrained(tmp_path / "mine")
    config = json.loads((tmp_path / "mine" / "config.json").read_text())
    del config["image_size"]  # as transformers' ResNetConfig saves it
    (tmp_path / "mine" / "config.json").write_text(json.dumps(config))
    out = tmp_path / "o"
    assert main(["offload", "build", str(tmp_path / "mine"), "--out", str(out), *FAST, "--image-size", "8",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["image_size"] == 8
    assert ChainProfile.load(out / "profile.json").input_bytes == 3 * 8 * 8 * 4  # one float32 image
    assert load_chain(out).input_shapes[0] == (3, 8, 8)  # what serve and run rebuild
    assert main(["offload", "build", str(tmp_path / "mine"), "--out", str(out), *FAST, "--image-size", "8",
                 "--overwrite"]) == 0
    assert "at 8x8 pixels" in capsys.readouterr().out


def test_a_bad_image_size_is_refused(tmp_path, capsys):
    assert main(["offload", "build", "tiny-resnet", "--out", str(tmp_path / "a"), "--image-size", "0"]) == 2
    assert "--image-size" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="image_size must be a positive"):
        OffloadBuildConfig("tiny-resnet", image_size=-3)
    # tiny-vit: 16x16 images in 4x4 patches; its position embeddings fix the grid
    assert main(["offload", "build", "tiny-vit", "--out", str(tmp_path / "v"), *FAST, "--image-size",
                 "8"]) == 2
    err = capsys.readouterr().err
    assert "only --image-size 16" in err and "4x4 patches" in err
    assert not (tmp_path / "v").exists() or not any((tmp_path / "v").iterdir())
