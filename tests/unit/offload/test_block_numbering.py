"""Blocks are numbered from 0 in every text output of ``offload build/serve/run``, as in ``--json``,
``exits.json`` and the README (before: text said "exit after block 1" for ``exit_block: 0``). ``--split
K`` keeps its meaning: blocks ``[0, K)`` on the edge. One small build (tiny-resnet, untrained, one
epoch of distillation and of exits) run with nothing listening."""

from __future__ import annotations

import json

import pytest

from edgeadapt.cli.main import main
from edgeadapt.cli.offload import serving_line
from edgeadapt.errors import ConfigError
from edgeadapt.offload.run import OffloadRunConfig, run_offload
from edgeadapt.offload.serve import load_chain

TOKEN = b"numbering-token-1"
DOWN = "127.0.0.1:9"
FAST = ["--widths", "1,0.5", "--epochs", "1", "--batch-size", "256", "--warmup", "0", "--repeats", "1",
        "--checks", "0"]


def test_text_outputs_number_blocks_from_0_like_the_json(tmp_path, capsys):
    out = tmp_path / "built"
    assert main(["offload", "build", "tiny-resnet", "--out", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    exits = json.loads((out / "exits.json").read_text())["exits"]
    assert [e["block"] for e in exits] == [0, 1, 2]
    assert f"early exits after blocks 0: {exits[0]['accuracy']:.4f}, 1: " in text and "3: " not in text
    chain = load_chain(out)
    assert "exits after blocks 0..2" in serving_line("m", chain, "127.0.0.1", 5)
    # --split: blocks [0, K) on the edge, named from 0
    with pytest.raises(ConfigError, match=r"blocks \(0\.\.4\).*K runs blocks 0\.\.K-1.*0=resnet\.embedder"):
        run_offload(OffloadRunConfig(str(out), DOWN, TOKEN, split=9), chain=chain)
    with pytest.warns(UserWarning, match="unreachable"):
        split = run_offload(OffloadRunConfig(str(out), DOWN, TOKEN, split=2, limit=4, timeout_s=1.0),
                            chain=chain)
    assert "blocks 0..1 on the edge (through resnet.encoder.stages.0.layers.0), 2..4 on the server" \
        in split.summary()
    # the placement listing and the exit, from 0
    floor = round(exits[0]["accuracy"] - 0.01, 3)
    with pytest.warns(UserWarning, match="unreachable"):
        report = run_offload(OffloadRunConfig(str(out), DOWN, TOKEN, floor=floor, limit=4, timeout_s=1.0),
                             chain=chain)
    summary = report.summary()
    listing = [line.split()[0] for line in summary.splitlines() if " width " in line]
    assert listing and listing[0] == "0"
    assert report.exit_block is not None  # the untrained chain scores ~0.1: only an exit meets the floor
    name = report.placement["blocks"][-1]["block"]
    assert f"exit after block {report.exit_block} ({name})" in summary
    assert name == chain.names[report.exit_block]


def test_the_split_help_says_blocks_0_to_k_minus_1(capsys):
    with pytest.raises(SystemExit):
        main(["offload", "run", "--help"])
    assert "blocks 0..K-1" in " ".join(capsys.readouterr().out.split())
