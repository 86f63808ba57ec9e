"""Knowledge-base artifacts reload exactly, refuse corruption, other kinds and other base models;
the offline pipeline refuses bad widths and steps run out of order."""

from __future__ import annotations

import json

import pytest
import torch

from edgeadapt.artifacts import ArtifactError
from edgeadapt.config import ConfigError, parse_config
from edgeadapt.models.registry import load_adapter
from edgeadapt.offline.artifacts import load_kb, save_kb
from edgeadapt.offline.knowledge_base import KBSettings, init_kb
from edgeadapt.offline.pipeline import run_kb
from edgeadapt.pruning.checkpoint import save_pruned
from tests.conftest import at_width, make_batches, outputs


def trained_kb(name: str, seed: int = 0):
    """A KB whose gates are no longer at their saturated start (so reloading them matters)."""
    fm = load_adapter(name, seed=seed)
    batch = make_batches(fm, n=1, size=4, length=12)[0]
    kb = init_kb(fm, [batch], KBSettings(importance="magnitude", bottleneck=8))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in kb.gates.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return fm, kb, batch


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    fm, kb, batch = trained_kb("tiny-vit")
    directory = save_kb(kb, tmp_path_factory.mktemp("kb") / "kb", config={"note": "test"})
    return fm, kb, batch, directory


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-llama"])
def test_round_trip_gives_identical_outputs_at_every_width(name, tmp_path):
    fm, kb, batch = trained_kb(name)
    expected = {w: at_width(kb, w, batch) for w in (1.0, 0.5)}
    assert not torch.allclose(expected[1.0], outputs(fm, batch), atol=1e-4)  # the gates are not trivial
    d = save_kb(kb, tmp_path / "kb", config={"note": "test"})
    for w, out in expected.items():  # saving leaves the KB gated as before
        assert torch.equal(at_width(kb, w, batch), out), w
    loaded = load_kb(d, expect_base_hash=fm.base_hash())
    for w, out in expected.items():
        assert torch.equal(at_width(loaded, w, batch), out), w
    assert loaded.index.to_dict() == kb.index.to_dict() and loaded.settings == kb.settings
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["kind"] == "knowledge-base" and manifest["config"] == {"note": "test"}
    assert manifest["base"]["hash"] == fm.base_hash() and manifest["base"]["architecture"] == fm.fingerprint()
    assert set(manifest["files"]) == {"model/manifest.json", "gates.safetensors", "index.json", "kb.json"}


@pytest.mark.parametrize("file", ["gates.safetensors", "index.json", "kb.json"])
def test_a_flipped_byte_is_refused(file, saved, tmp_path):
    import shutil

    d = shutil.copytree(saved[3], tmp_path / "kb")
    raw = bytearray((d / file).read_bytes())
    raw[len(raw) // 2] ^= 1
    (d / file).write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=file.replace(".", r"\.")):
        load_kb(d)


def test_another_kind_is_refused(tmp_path):
    d = save_pruned(load_adapter("tiny-vit"), tmp_path / "pruned")
    with pytest.raises(ArtifactError, match="expected 'knowledge-base'"):
        load_kb(d)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_kb(tmp_path / "nothing-here")


def test_a_kb_of_another_base_model_is_refused(saved):
    fm, _, _, d = saved
    other = load_adapter("tiny-vit", seed=1).base_hash()
    assert other != fm.base_hash()
    with pytest.raises(ArtifactError, match="another base model"):
        load_kb(d, expect_base_hash=other)
    assert load_kb(d, expect_base_hash=fm.base_hash()).index.base_hash == fm.base_hash()


# -- the offline pipeline --------------------------------------------------------------------------

def offline_config(out, **kb) -> dict:
    return {"kind": "offline", "model": "tiny-vit", "data": {"name": "digits", "options": {"size": 16}},
            "lora": {"train": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-3, "progress": False}},
            "kb": {"train": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-3, "progress": False}, **kb},
            "tracking": {"backends": ["none"]}, "out": str(out)}


@pytest.mark.parametrize("widths", [[0.5, 1.5], [0.0], [-0.25, 1.0]])
def test_config_with_a_bad_width_is_refused_naming_kb_widths(widths, tmp_path):
    assert parse_config(offline_config(tmp_path, widths=[0.25, 1.0])).kb.widths == [0.25, 1.0]
    with pytest.raises(ConfigError, match=r"kb\.widths: width must be a fraction in \(0, 1\]"):
        parse_config(offline_config(tmp_path, widths=widths))


def test_kb_step_before_lora_step_says_what_to_run(tmp_path):
    cfg = parse_config(offline_config(tmp_path / "out"))
    with pytest.raises(ArtifactError, match="run `edgeadapt offline lora"):
        run_kb(cfg)
    assert not (tmp_path / "out" / "kb").exists()  # nothing half-written
