"""Every message of a command with subcommands carries the subcommand's full name, the prefix argparse
gives its own errors.

Before: ``edgeadapt memory plan --budget x`` said ``edgeadapt memory plan: error:`` (argparse) but a
refusal from the command itself said ``edgeadapt memory: error:`` (new-user trial).
"""

from __future__ import annotations

import argparse
import json

from edgeadapt.cli.flags import command_name
from edgeadapt.cli.main import main


def test_command_name_includes_the_subcommand():
    assert command_name(argparse.Namespace(command="memory", memory_command="plan")) == "memory plan"
    assert command_name(argparse.Namespace(command="adapt")) == "adapt"


def test_memory_subcommands_use_one_prefix_for_argparse_errors_refusals_and_warnings(tmp_path, capsys):
    assert main(["memory", "plan", "tiny-resnet", "--budget", "x"]) == 2
    assert capsys.readouterr().err.startswith("edgeadapt memory plan: error: argument --budget")
    assert main(["memory", "plan", "tiny-resnet", "--budget", "1MiB", "--save", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("edgeadapt memory plan: error: --save")
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps({"micro_batch_size": 16}))
    assert main(["memory", "estimate", "tiny-resnet", "--plan", str(plan), "--batch-size", "8"]) == 2
    assert capsys.readouterr().err.startswith("edgeadapt memory estimate: error: --plan")
    plan.write_text(json.dumps({"kind": "memory-plan", "freeze_blocks": 1,
                                "model": {"name": "tiny-vit", "family": "vit", "num_blocks": 4}}))
    assert main(["memory", "estimate", "tiny-resnet", "--plan", str(plan), "--json"]) == 0
    assert capsys.readouterr().err.startswith("edgeadapt memory estimate: warning: --plan")
