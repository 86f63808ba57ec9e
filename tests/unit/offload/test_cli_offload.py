"""``edgeadapt offload build``: descendants and their profile from the command line, in the layout
``offload serve``/``run`` take as ``--model``; bad widths and device profiles are refused by name."""

from __future__ import annotations

import json

from edgeadapt.cli.main import main
from edgeadapt.offload.artifact import load_descendants
from edgeadapt.offload.profile import EMULATED_EDGE, ChainProfile, DeviceProfile
from edgeadapt.offload.serve import descendants_dir, load_chain


def test_offload_build_writes_the_artifact_and_profile_that_serve_and_run_take(tmp_path, capsys):
    helper = DeviceProfile("helper", 2.0, 1, 2**30, "a second board")
    helper.save(tmp_path / "helper.json")
    EMULATED_EDGE.save(tmp_path / "edge.json")
    out = tmp_path / "built"
    assert main(["offload", "build", "tiny-resnet", "--out", str(out), "--widths", "1,0.5", "--epochs", "1",
                 "--batch-size", "256", "--warmup", "0", "--repeats", "1", "--checks", "0",
                 "--device-profile", str(tmp_path / "edge.json"), "--device-profile",
                 str(tmp_path / "helper.json"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["widths"] == [1.0, 0.5] and summary["devices"] == ["edge", "helper"]
    profile = ChainProfile.load(out / "profile.json")
    assert [d.name for d in profile.devices] == ["edge", "helper"] and profile.blocks == summary["blocks"]
    assert load_descendants(out / "descendants").widths == (1.0, 0.5)
    assert descendants_dir(out) == out / "descendants" and load_chain(out).widths == (1.0, 0.5)
    assert main(["offload", "build", "tiny-resnet", "--out", str(tmp_path / "b2"), "--widths",
                 "0.5,0.25"]) == 2
    assert "including 1" in capsys.readouterr().err
    assert main(["offload", "build", "tiny-resnet", "--out", str(tmp_path / "b3"), "--device-profile",
                 str(tmp_path / "edge.json"), "--device-profile", str(tmp_path / "edge.json")]) == 2
    assert "must differ" in capsys.readouterr().err
    assert main(["offload", "build", "tiny-resnet", "--out", str(tmp_path / "b4"), "--device-profile",
                 str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
