"""The CLI is a thin, working layer: inspect, prune (by sparsity or plan), clear errors."""

from __future__ import annotations

import json

import pytest

from edgeadapt.cli.main import main
from edgeadapt.models.registry import load_adapter
from edgeadapt.pruning.plan import PruningPlan


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "inspect" in out and "prune" in out and "demo" in out


def test_inspect_prints_a_table_and_json(capsys):
    assert main(["inspect", "tiny-llama"]) == 0
    out = capsys.readouterr().out
    assert "kv" in out and "total" in out
    assert main(["inspect", "tiny-llama", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [b["kv_heads"] for b in data["blocks"]] == [2, 2]


def test_prune_by_sparsity_writes_an_artifact_that_inspect_reads(tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["prune", "tiny-gpt2", "--sparsity", "0.5", "--target", "heads,neurons",
                 "--importance", "taylor", "--calibration-batches", "2", "--out", str(out)]) == 0
    assert (out / "manifest.json").is_file() and (out / "plan.json").is_file()
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    blocks = json.loads(capsys.readouterr().out)["blocks"]
    assert [(b["heads"], b["ffn_width"]) for b in blocks] == [(2, 128), (2, 128)]


def test_prune_by_plan_file(tmp_path, capsys):
    plan = PruningPlan.dense(load_adapter("tiny-bert").fingerprint())
    plan.blocks[0].neurons = [0, 1, 2, 3]
    plan.save(tmp_path / "plan.json")
    assert main(["prune", "tiny-bert", "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "o")]) == 0
    assert "FFN neurons 132/256" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["inspect", "no-such-model"], "unknown model 'no-such-model'"),
    (["prune", "tiny-llama", "--sparsity", "1.0", "--out", "x"], "--sparsity must be in [0, 1)"),
    (["prune", "tiny-llama", "--out", "x"], "exactly one of --plan"),
    (["prune", "tiny-llama", "--plan", "missing.json", "--out", "x"], "does not exist"),
    (["prune", "tiny-llama", "--sparsity", "0.5", "--target", "filters", "--out", "x",
      "--importance", "magnitude"], "targets must be"),
])
def test_bad_input_exits_2_with_a_clear_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
