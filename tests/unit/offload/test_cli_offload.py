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


FAST = ["--widths", "1,0.5", "--epochs", "1", "--batch-size", "256", "--warmup", "0", "--repeats", "1",
        "--checks", "0", "--json"]


def test_offload_build_refuses_a_non_empty_out_unless_overwrite(tmp_path, capsys):
    """Before: building into a directory holding another run's files mixed the artifact into it
    silently (new-user trial)."""
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("another run's report")
    assert main(["offload", "build", "tiny-resnet", "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "report.md" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]
    assert main(["offload", "build", "tiny-resnet", "--out", str(out), *FAST, "--overwrite"]) == 0
    assert (out / "profile.json").is_file() and (out / "report.md").is_file()


def test_offload_build_trains_exit_heads_by_default_and_exit_epochs_0_builds_none(tmp_path, capsys):
    """Exits default to --epochs of training; --exit-epochs 0 (here over a build with exits, --overwrite)
    leaves neither heads in the artifact nor a stale exits.json beside the profile."""
    out = tmp_path / "built"
    assert main(["offload", "build", "tiny-resnet", "--out", str(out), *FAST]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["exit_epochs"] == 1 and summary["exits"] == str(out / "exits.json")
    assert len(summary["exit_accuracy"]) == len(summary["blocks"]) - 2 == len(load_chain(out).exits)
    assert main(["offload", "build", "tiny-resnet", "--out", str(out), *FAST, "--exit-epochs", "0",
                 "--overwrite"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["exits"] is None and summary["exit_accuracy"] == []
    assert not (out / "exits.json").exists() and load_chain(out).exits == []
    assert main(["offload", "build", "tiny-resnet", "--out", str(tmp_path / "b"), "--exit-epochs", "-1"]) == 2


def test_offload_build_refuses_a_language_model_by_name(tmp_path, capsys):
    """Before: `offload build tiny-llama` crashed with AttributeError 'image_size' (new-user trial)."""
    assert main(["offload", "build", "tiny-llama", "--out", str(tmp_path / "o"), *FAST]) == 2
    assert "image classifiers" in capsys.readouterr().err


def test_a_bf16_checkpoint_builds_serves_and_matches_its_float32_chain(tmp_path, capsys):
    """Before: `offload build`/`serve` on a bf16 checkpoint crashed on float32 images (new-user trial).
    The runtime runs it in float32; the chain loaded from the bf16 directory equals the upcast model."""
    import torch

    from edgeadapt.models.registry import load_adapter

    adapter = load_adapter("tiny-resnet")
    adapter.model.to(torch.bfloat16)
    adapter.model.save_pretrained(tmp_path / "bf16")
    assert main(["offload", "build", str(tmp_path / "bf16"), "--out", str(tmp_path / "o"), *FAST]) == 0
    chain = load_chain(tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for b in chain.blocks for p in b.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = adapter.model.float().eval()(pixel_values=x).logits
        out = x
        for block in chain.blocks:
            out = block(out)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
