"""Progress output: live bars only on a terminal, one line per epoch otherwise, nothing when quiet
(issue 12 §3: a 600-step `train` wrote 124 KB of `\\r` updates into a log)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgeadapt import progress

RECIPE = {"model": "tiny-vit", "data": {"name": "digits"}, "tracking": {"backends": ["csv"]},
          "train": {"epochs": 2, "batch_size": 64, "learning_rate": 1e-3, "max_steps": 3}, "out": "runs/t"}


def _train(tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> str:
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(RECIPE))
    run_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    run_env.pop(progress.QUIET_ENV, None)
    with open(tmp_path / "stderr.log", "w") as err:  # stderr redirected to a file: not a terminal
        proc = subprocess.run([sys.executable, "-m", "edgeadapt", "train", "--config", "t.yaml", *flags],
                              cwd=tmp_path, env=run_env, stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.returncode == 0, (tmp_path / "stderr.log").read_text()
    return (tmp_path / "stderr.log").read_text()


def test_train_into_a_log_writes_one_line_per_epoch_and_no_carriage_returns(tmp_path):
    err = _train(tmp_path)
    assert "\r" not in err
    assert "train: epoch 1/2, step 3/3, train_loss" in err


def test_quiet_anywhere_on_the_command_line_silences_progress(tmp_path):
    assert _train(tmp_path, "--quiet") == ""


@pytest.mark.parametrize("tty, env, bar, lines", [
    (True, {}, True, False),
    (False, {}, False, True),
    (True, {"TQDM_DISABLE": "1"}, False, True),
    (True, {progress.QUIET_ENV: "1"}, False, False),
    (False, {progress.QUIET_ENV: "1"}, False, False),
])
def test_bars_only_on_a_terminal_and_never_when_disabled(monkeypatch, tty, env, bar, lines):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv(progress.QUIET_ENV, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    assert progress.bar_enabled() is bar and progress.lines_enabled() is lines
    assert progress.bar_enabled(False) is False and progress.lines_enabled(False) is False


def test_scoring_and_perplexity_bars_follow_the_same_rule(capsys):
    """Importance scoring and perplexity asked for progress draw no live bar when stderr is not a
    terminal (they used to pass ``disable=not progress`` and ignore the rule)."""
    import torch

    from edgeadapt.llm.evaluate import perplexity
    from edgeadapt.models.registry import load_adapter
    from edgeadapt.pruning.importance import score

    llama = load_adapter("tiny-llama")
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    score(llama, "taylor", [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}], progress=True)
    perplexity(llama, ids.reshape(-1), max_length=8, progress=True)
    assert "\r" not in capsys.readouterr().err


def test_transformers_loading_bar_follows_edgeadapt_rule_in_a_log(tmp_path, capsys):
    """Before: every inspect/prune/train of a local HF directory wrote transformers' `\\rLoading
    weights: ...` bar into a redirected log, even with --quiet."""
    import transformers

    from edgeadapt.cli.main import main
    from edgeadapt.models.registry import load_adapter

    load_adapter("tiny-vit").model.save_pretrained(tmp_path / "vit")
    transformers.utils.logging.enable_progress_bar()
    try:
        capsys.readouterr()
        assert main(["inspect", str(tmp_path / "vit")]) == 0  # stderr is not a terminal here
        assert "Loading weights" not in capsys.readouterr().err
    finally:
        transformers.utils.logging.enable_progress_bar()
