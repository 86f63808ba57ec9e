"""CLI: `train`, `validate`, `data list`, `data show` — thin commands with clear errors."""

from __future__ import annotations

import json

import torch
import yaml

from edgeadapt.cli.main import main
from edgeadapt.data.text import builtin_paragraphs
from edgeadapt.data.tokens import corpus_ids
from edgeadapt.models.registry import load_adapter
from edgeadapt.pruning.checkpoint import load_pruned


def _recipe(tmp_path, **changes):
    data = {"model": "tiny-llama", "data": {"name": "builtin-docs", "max_length": 32},
            "train": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-2, "max_steps": 30, "progress": False},
            "tracking": {"backends": ["csv"]}, "out": str(tmp_path / "run")}
    data.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_train_a_causal_lm_writes_a_reloadable_artifact(tmp_path, capsys):
    path = _recipe(tmp_path)
    assert main(["validate", str(path)]) == 0
    assert "valid train config" in capsys.readouterr().out
    assert main(["train", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "test loss" in out and "perplexity" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stop_reason"] == "max_steps"
    untrained = load_adapter("tiny-llama")
    ids = corpus_ids(untrained.tokenizer, builtin_paragraphs("test"))
    blocks = ids[: len(ids) // 32 * 32].view(-1, 32)
    before = untrained.evaluate([{"input_ids": blocks, "attention_mask": torch.ones_like(blocks)}])
    assert metrics["test"]["perplexity"] < 0.6 * before["perplexity"]
    reloaded = load_pruned(tmp_path / "run")
    assert reloaded.tokenizer is not None and reloaded.task.name == "causal-lm"


def test_validate_reports_every_bad_field(tmp_path, capsys):
    path = _recipe(tmp_path, train={"epochs": 0, "batch_size": "big", "learning_rate": 1e-3},
                   data={"name": "builtin-docs", "root": "/nope"})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.epochs" in err and "train.batch_size" in err and "data.root" in err


def test_data_list_and_show(tmp_path, capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "digits-c" in out and "gaussian_noise" in out and "wikitext2" in out
    assert main(["data", "show", "digits", "--option", "size=32"]) == 0
    out = capsys.readouterr().out
    assert "(3, 32, 32)" in out and "360" in out
    grid = tmp_path / "grid.png"
    assert main(["data", "show", "stream", "--stream", "fog:3,contrast:4", "--grid", str(grid)]) == 0
    out = capsys.readouterr().out
    assert "fog:3" in out and "contrast:4" in out
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_errors_are_one_clear_line(capsys):
    assert main(["data", "show", "digitz"]) == 2
    assert "dataset 'digitz' is unknown" in capsys.readouterr().err
    assert main(["data", "show", "stream", "--stream", "fog:9"]) == 2
    assert "severity" in capsys.readouterr().err
    assert main(["data", "show", "digits", "--option", "size"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_data_show_grid_shows_what_digits_c_holds(tmp_path, monkeypatch):
    """The grid corrupts 32x32 digits (CIFAR-10-C's parameters are for 32x32) and shows them at the
    dataset's size, as digits-c stores them — not the 32x32 parameters applied to 16x16 images."""
    import edgeadapt.data.preview as preview

    seen = {}

    def fake_grid(images, path, corruptions=None, size=None, **_):
        seen.update(hw=tuple(images.shape[-2:]), size=size)
        return path

    monkeypatch.setattr(preview, "corruption_grid", fake_grid)
    assert main(["data", "show", "stream", "--stream", "fog:3", "--grid", str(tmp_path / "g.png")]) == 0
    assert seen == {"hw": (32, 32), "size": 16}
