"""``edgeadapt export --format hf``: a uniformly pruned model becomes a plain Hugging Face checkpoint
that transformers' Auto class loads without key warnings and with the same outputs; anything a
config cannot describe is refused with the reason and the edgeadapt way to load it (issue 12 §1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from edgeadapt import export
from edgeadapt.cli.main import main
from edgeadapt.errors import ArtifactError, ConfigError, OutputExistsError
from edgeadapt.export import AUTO_CLASSES, export_hf
from edgeadapt.models.registry import load_adapter
from edgeadapt.pruning.apply import apply_plan
from edgeadapt.pruning.checkpoint import load_model, save_pruned
from edgeadapt.pruning.plan import BlockPlan, PruningPlan

# family -> (tiny model, Auto class, whether transformers' class of that family can hold pruned heads)
FAMILIES = {
    "vit": ("tiny-vit", "AutoModelForImageClassification", True),
    "bert": ("tiny-bert", "AutoModelForSequenceClassification", False),
    "gpt2": ("tiny-gpt2", "AutoModelForCausalLM", False),
    "opt": ("tiny-opt", "AutoModelForCausalLM", False),
    "llama": ("tiny-llama", "AutoModelForCausalLM", True),
}


def _uniform_plan(adapter, heads: bool, drop_first: bool = True) -> PruningPlan:
    """Drop block 0 (so the kept ones are renumbered), keep the last half of the FFN neurons and,
    when ``heads``, every other head unit — the same widths in every kept block."""
    a = adapter.fingerprint()
    units = list(range(1, a["num_kv_heads"], 2)) if heads else None
    neurons = list(range(a["ffn_width"] // 2, a["ffn_width"]))
    first = 1 if drop_first else 0
    return PruningPlan(a, [BlockPlan(i, units, neurons) for i in range(first, a["num_layers"])])


def _artifact(tmp_path: Path, name: str, plan_of) -> Path:
    adapter = load_adapter(name)
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial biases and norms, so a misplaced weight shows in the outputs
        for p in adapter.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    apply_plan(adapter, plan_of(adapter))
    return save_pruned(adapter, tmp_path / "artifact")


def _inputs(adapter) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    c = adapter.model.config
    if adapter.modality == "image":
        return {"pixel_values": torch.randn(3, c.num_channels, c.image_size, c.image_size, generator=g)}
    ids = torch.randint(7, c.vocab_size, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("family", FAMILIES)
def test_uniformly_pruned_model_loads_in_plain_transformers_with_identical_outputs(tmp_path, family):
    name, auto, heads_ok = FAMILIES[family]
    art = _artifact(tmp_path, name, lambda a: _uniform_plan(a, heads=heads_ok))
    result = export_hf(art, tmp_path / "hf")
    assert result.auto_class == auto and result.max_abs_diff == 0.0

    model, info = getattr(transformers, auto).from_pretrained(tmp_path / "hf", output_loading_info=True)
    keys = ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
    assert not any(info[k] for k in keys), info
    ours = load_model(art)
    model.eval()
    batch = _inputs(ours)
    with torch.no_grad():
        diff = (ours.model(**batch)[0] - model(**batch)[0]).abs().max().item()
    assert diff <= 1e-5

    # the config states the pruned structure: one fewer layer, half the neurons, (half the heads)
    spec, base = ours.spec, ours.fingerprint()
    config = model.config
    assert getattr(config, spec.layers_key) == base["num_layers"] - 1
    assert getattr(config, spec.ffn_key) == base["ffn_width"] // 2
    heads = base["num_heads"] // 2 if heads_ok else base["num_heads"]
    assert getattr(config, spec.heads_key) == heads
    if spec.kv_heads_key:
        assert getattr(config, spec.kv_heads_key) == base["num_kv_heads"] // 2
    if heads_ok:
        assert config.head_dim == ours.head_dim()
    meta = json.loads((tmp_path / "hf" / "edgeadapt-export.json").read_text())
    assert meta["base"]["hash"] == ours.base_hash() and meta["auto_class"] == auto
    # written through a temp dir and a rename: nothing left beside it
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["artifact", "hf"]


def test_the_export_is_an_ordinary_model_for_edgeadapt_too(tmp_path):
    art = _artifact(tmp_path, "tiny-llama", lambda a: _uniform_plan(a, heads=True))
    (tmp_path / "hf").mkdir()  # an existing empty directory is fine
    export_hf(art, tmp_path / "hf")
    again = load_model(tmp_path / "hf")  # a plain HF directory now
    assert [b.attention.num_heads for b in again.blocks()] == [2]
    assert [b.mlp.width for b in again.blocks()] == [64]
    assert main(["inspect", str(tmp_path / "hf")]) == 0


@pytest.mark.parametrize("family", [f for f, (_, _, ok) in FAMILIES.items() if not ok])
def test_pruned_heads_in_a_family_without_head_dim_are_refused_with_the_reason(tmp_path, family):
    name = FAMILIES[family][0]
    art = _artifact(tmp_path, name, lambda a: _uniform_plan(a, heads=True, drop_first=False))
    with pytest.raises(ArtifactError) as err:
        export_hf(art, tmp_path / "hf")
    text = str(err.value)
    assert "reads no head_dim" in text and "64 / 2 = 32" in text and "width 16" in text
    assert "--target neurons,layers" in text and "load_model(" in text
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").iterdir())
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".export-tmp")] == []


def _nonuniform(adapter) -> PruningPlan:
    a = adapter.fingerprint()
    blocks = [BlockPlan(0, None, list(range(a["ffn_width"] // 2))), BlockPlan(1)]
    blocks += [BlockPlan(i) for i in range(2, a["num_layers"])]
    return PruningPlan(a, blocks)


def test_widths_that_differ_per_layer_are_refused_naming_the_layers(tmp_path, capsys):
    art = _artifact(tmp_path, "tiny-vit", _nonuniform)
    with pytest.raises(ArtifactError) as err:
        export_hf(art, tmp_path / "hf")
    text = str(err.value)
    assert "FFN neurons: 64 in layer 0, 128 in layers 1-3" in text
    assert "one value of each for every layer" in text and f"load_model({str(art)!r})" in text
    assert main(["export", str(art), "--format", "hf", "--out", str(tmp_path / "hf2")]) == 2
    out = capsys.readouterr().err.strip()
    assert out.startswith("edgeadapt export: error:") and "layer 0" in out and "Traceback" not in out
    assert not (tmp_path / "hf2").exists()


def test_a_nonempty_out_is_refused_before_the_model_is_loaded(tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # the source does not even exist: the --out refusal comes first, so no compute happened
    with pytest.raises(OutputExistsError, match="--out.*not empty.*--overwrite"):
        export_hf(tmp_path / "missing-artifact", out, field="--out")
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="is or contains the source"):
        export_hf(tmp_path, tmp_path, overwrite=True)


def test_overwrite_replaces_the_directory_and_a_failed_export_leaves_it_in_place(tmp_path, monkeypatch):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "old.txt").write_text("old")
    bad = _artifact(tmp_path / "bad", "tiny-vit", _nonuniform)
    with pytest.raises(ArtifactError):
        export_hf(bad, out, overwrite=True)
    assert (out / "old.txt").read_text() == "old"  # refused: what was there is untouched
    good = _artifact(tmp_path / "good", "tiny-vit", lambda a: _uniform_plan(a, heads=True))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # dies after the files were written, before the rename

    monkeypatch.setattr(export, "verify_export", killed)
    with pytest.raises(KeyboardInterrupt):
        export_hf(good, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".export-tmp")] == []
    monkeypatch.undo()
    export_hf(good, out, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".export-tmp")] == []


def test_cli_export_quiet_prints_the_result_and_no_progress(tmp_path, capsys):
    art = _artifact(tmp_path, "tiny-gpt2", lambda a: _uniform_plan(a, heads=False))
    assert main(["export", str(art), "--format", "hf", "--out", str(tmp_path / "hf"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "AutoModelForCausalLM.from_pretrained" in captured.out
    assert "it/s" not in captured.err and "Loading weights" not in captured.err
    assert main(["export", str(art), "--out", str(tmp_path / "hf")]) == 2  # non-empty now
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(art), "--out", str(tmp_path / "hf"), "--overwrite", "--no-verify"]) == 0


def test_every_task_has_an_auto_class():
    from edgeadapt.models.registry import TASKS

    assert set(AUTO_CLASSES) == set(TASKS)


def test_a_channel_pruned_cnn_is_refused_with_the_reason_not_as_a_non_hf_model(tmp_path, capsys):
    """Before: 'is not a Hugging Face model', though it is a transformers ResNet; the real reason is
    that ResNet's config cannot state per-layer channel counts."""
    out = str(tmp_path / "pruned")
    assert main(["--quiet", "prune", "tiny-resnet", "--unit-sparsity", "0.3", "--out", out]) == 0
    capsys.readouterr()
    assert main(["export", out, "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "channel-pruned resnet CNN" in err and "one width per stage" in err
    assert not (tmp_path / "hf" / "config.json").exists()
