"""`edgeadapt prune` speaks the shared vocabulary: --unit-sparsity or --param-sparsity (the retired
--sparsity is refused naming both), importance names from the one table (retired ones refused with
the new name), and the same default scope as llm-prune."""

from __future__ import annotations

import json

import pytest

from edgeadapt.cli.main import main


@pytest.mark.parametrize("argv, message", [
    (["--sparsity", "0.5"], "--sparsity was split in two budgets: use --unit-sparsity S (fraction of the "
                            "units (layers, heads, FFN neurons) of each targeted kind removed; what "
                            "prune's --sparsity meant) or --param-sparsity S (fraction of the block "
                            "parameters removed"),
    (["--unit-sparsity", "0.5", "--importance", "taylor-abs"],
     "--importance: importance 'taylor-abs' was renamed: use 'taylor' (first-order |w·g|)"),
    (["--unit-sparsity", "0.5", "--param-sparsity", "0.5"], "give exactly one budget: --unit-sparsity "
                                                            "(fraction of the units"),
    (["--param-sparsity", "1.0"], "--param-sparsity must be in [0, 1)"),
    (["--unit-sparsity", "0.5", "--importance", "psychic"], "unknown importance 'psychic'"),
])
def test_retired_and_bad_prune_flags_exit_2_naming_the_fix(argv, message, capsys, tmp_path):
    assert main(["prune", "tiny-llama", *argv, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_param_sparsity_removes_that_share_of_block_parameters(tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["prune", "tiny-llama", "--param-sparsity", "0.3", "--target", "neurons",
                 "--importance", "fisher", "--calibration-batches", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert main(["inspect", "tiny-llama", "--json"]) == 0
    dense = json.loads(capsys.readouterr().out)
    block = [sum(b["params"] for b in d["blocks"]) for d in (dense, pruned)]
    assert abs(1 - block[1] / block[0] - 0.3) < 0.01


def test_random_importance_needs_no_calibration(tmp_path, capsys):
    assert main(["prune", "tiny-llama", "--unit-sparsity", "0.5", "--importance", "random", "--seed", "1",
                 "--out", str(tmp_path / "r")]) == 0
    assert "FFN neurons 128/256" in capsys.readouterr().out
