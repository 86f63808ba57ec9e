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
    assert main(["prune", "tiny-gpt2", "--unit-sparsity", "0.5", "--target", "heads,neurons",
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
    argv = ["prune", "tiny-bert", "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    assert "FFN neurons 132/256" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["inspect", "no-such-model"], "unknown model 'no-such-model'"),
    (["prune", "tiny-llama", "--unit-sparsity", "1.0", "--out", "x"], "--unit-sparsity must be in [0, 1)"),
    (["prune", "tiny-llama", "--sparsity", "0.5", "--out", "x"], "use --unit-sparsity S"),
    (["prune", "tiny-llama", "--out", "x"], "exactly one of --plan"),
    (["prune", "tiny-llama", "--plan", "missing.json", "--out", "x"], "does not exist"),
    (["prune", "tiny-llama", "--unit-sparsity", "0.5", "--target", "filters", "--out", "x",
      "--importance", "magnitude"], "is not a pruning target"),
])
def test_bad_input_exits_2_with_a_clear_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# -- error handling: only edgeadapt's own errors become one-paragraph messages -------------------------

def _raising(exc: BaseException):
    def handler(args):
        raise exc
    return handler


def test_a_user_error_prints_one_paragraph_and_exits_2(monkeypatch, capsys):
    from edgeadapt.cli import main as cli
    from edgeadapt.errors import ConfigError

    monkeypatch.setattr(cli, "cmd_inspect", _raising(ConfigError("model: 'x' is unknown; pick one of a, b")))
    assert main(["inspect", "tiny-llama"]) == 2
    err = capsys.readouterr().err
    assert err == "edgeadapt inspect: error: model: 'x' is unknown; pick one of a, b\n"
    assert "Traceback" not in err


def test_a_bug_propagates_with_its_traceback(monkeypatch):
    from edgeadapt.cli import main as cli

    monkeypatch.setattr(cli, "cmd_inspect", _raising(KeyError("not a user error")))
    with pytest.raises(KeyError, match="not a user error"):
        main(["inspect", "tiny-llama"])


def test_debug_reraises_a_user_error(monkeypatch):
    from edgeadapt.cli import main as cli
    from edgeadapt.errors import ArtifactError

    monkeypatch.setattr(cli, "cmd_inspect", _raising(ArtifactError("broken artifact")))
    with pytest.raises(ArtifactError, match="broken artifact"):
        main(["--debug", "inspect", "tiny-llama"])


def test_importing_the_cli_leaves_hf_hub_offline_alone_and_main_sets_it():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    script = ("import os, edgeadapt, edgeadapt.cli.main as m; print(os.environ.get('HF_HUB_OFFLINE')); "
              "m.main(['data', 'list']); print(os.environ.get('HF_HUB_OFFLINE'))")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "None" and lines[-1] == "1"


def test_adapt_flag_errors_are_one_paragraph_not_a_pydantic_traceback(tmp_path, capsys):
    """Flags are validated as the adapt config before any compute; a bad value is a user error
    (exit 2) naming the field, not a ValidationError traceback."""
    code = main(["adapt", "--offline", str(tmp_path), "--stream", "fogg:3", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "fogg" in err and "Traceback" not in err
    assert main(["adapt", "--offline", str(tmp_path), "--width", "0", "--out", str(tmp_path / "o")]) == 2
    assert "width" in capsys.readouterr().err


def test_output_piped_into_a_reader_that_leaves_early_is_not_a_traceback(monkeypatch):
    """Before: `edgeadapt data show digits --json | head -1` could end in a BrokenPipeError traceback.
    Here stdout is a real pipe whose reader has already gone, so the first flush fails with EPIPE."""
    import os
    import signal
    import sys

    if hasattr(signal, "SIGPIPE"):
        assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # Python's default: EPIPE, not a signal
    read_end, write_end = os.pipe()
    os.close(read_end)
    stdout = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        assert main(["data", "show", "digits", "--json"]) == 0
    finally:
        monkeypatch.undo()
        stdout.close()
