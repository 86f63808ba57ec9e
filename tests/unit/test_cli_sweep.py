"""A sweep of the CLI with bad values: every command and flag answers a mistake with exit code 2 and
one paragraph naming the flag or field — never a traceback, and before any compute (issue 12 §3).

Every case fails before a model is trained; the few that load a model load a tiny built-in one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from edgeadapt.cli.main import main

ROOT = Path(__file__).resolve().parents[2]

TRAIN = {"kind": "train", "model": "tiny-vit", "data": {"name": "digits"},
         "train": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3}, "out": "runs/t"}
LLM = {"kind": "llm-prune", "model": "tiny-gpt2", "param_sparsity": 0.2, "seq_len": 32,
       "save": "runs/l/model", "log_dir": "runs/l/logs"}


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with an existing file ``afile``, a folder ``adir`` and configs."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a directory")
    (tmp_path / "adir").mkdir()
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(TRAIN))
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00\x81 binary")
    return tmp_path


def _llm(tmp: Path, **fields: object) -> str:
    path = tmp / "llm.yaml"
    path.write_text(yaml.safe_dump({**LLM, **fields}))
    return str(path)


PR = ["prune", "tiny-vit", "--out", "o"]          # a prune request that is fine but for one flag
PRS = [*PR, "--unit-sparsity", "0.5"]
AD = ["adapt", "--offline", "adir", "--out", "o"]

CASES: list[tuple[list[str], str]] = [
    # inspect
    (["inspect", "tiny-gpt2", "--context", "-100000"], "--context"),
    (["inspect", "tiny-gpt2", "--context", "0"], "--context"),
    (["inspect", "tiny-gpt2", "--context", "abc"], "--context"),
    (["inspect", "tiny-gpt2", "--context", "100000"], "--context"),
    (["inspect", "no/such/model"], "no/such/model"),
    # prune
    ([*PR, "--unit-sparsity", "inf"], "--unit-sparsity"),
    ([*PR, "--unit-sparsity", "nan"], "--unit-sparsity"),
    ([*PR, "--unit-sparsity", "-0.5"], "--unit-sparsity"),
    ([*PR, "--unit-sparsity", "1.5"], "--unit-sparsity"),
    ([*PR, "--unit-sparsity", "half"], "--unit-sparsity"),
    ([*PR, "--param-sparsity", "-inf"], "--param-sparsity"),
    ([*PR, "--param-sparsity", ""], "--param-sparsity"),
    ([*PRS, "--target", ""], "--target"),
    ([*PRS, "--target", "heads,,neurons"], "--target"),
    ([*PRS, "--target", "head"], "--target"),  # a typo: refused before the model loads
    ([*PRS, "--importance", ""], "--importance"),
    ([*PRS, "--importance", "psychic"], "--importance"),
    ([*PRS, "--scope", "local"], "--scope"),
    ([*PRS, "--protect-first", "-1"], "--protect-first"),
    ([*PRS, "--protect-first", "100"], "--protect-first"),
    ([*PRS, "--protect-first", "1.5"], "--protect-first"),
    ([*PRS, "--protect-last", "-1"], "--protect-last"),
    ([*PRS, "--protect-last", "100"], "--protect-last"),
    ([*PRS, "--protect-first", "2", "--protect-last", "2"], "--protect-first"),
    ([*PRS, "--calibration-batches", "0"], "--calibration-batches"),
    ([*PRS, "--calibration-batches", "-3"], "--calibration-batches"),
    ([*PRS, "--batch-size", "0"], "--batch-size"),
    ([*PRS, "--batch-size", "nan"], "--batch-size"),
    ([*PRS, "--seed", "x"], "--seed"),
    ([*PRS, "--device", ""], "--device"),
    ([*PR, "--plan", "missing.json"], "missing.json"),
    (["prune", "tiny-vit", "--unit-sparsity", "0.5", "--out", "afile"], "--out"),
    (["prune", "tiny-vit", "--unit-sparsity", "0.5", "--out", "afile/sub"], "--out"),
    # export
    (["export", "tiny-vit", "--format", "onnx", "--out", "o"], "--format"),
    (["export", "tiny-vit", "--out", "afile"], "--out"),
    (["export", "tiny-vit", "--out", "afile/sub"], "--out"),
    (["export", "tiny-vit", "--out", "."], "--out: '.' is not empty"),
    (["export", "adir", "--out", "adir"], "is or contains the source"),
    (["export", "no/such/model", "--out", "o"], "no/such/model"),
    (["export", "adir", "--out", "o"], "adir"),
    # train
    (["train", "--config", "missing.yaml"], "missing.yaml"),
    (["train", "--config", "adir"], "is a directory"),
    (["train", "--config", "binary.yaml"], "binary.yaml"),
    (["train", "--config", "train.yaml", "--out", "afile"], "--out"),
    # validate
    (["validate", "adir"], "is a directory; give YAML files"),
    (["validate", "binary.yaml"], "binary.yaml"),
    (["validate", "missing.yaml"], "missing.yaml"),
    # offline
    (["offline", "everything", "--config", "train.yaml"], "step"),
    (["offline", "all", "--config", "missing.yaml"], "missing.yaml"),
    # adapt
    ([*AD, "--methods", ""], "--methods"),
    ([*AD, "--methods", ","], "--methods"),
    ([*AD, "--methods", "magic"], "methods"),
    ([*AD, "--width", "0"], "--width"),
    ([*AD, "--width", "1.5"], "--width"),
    ([*AD, "--width", "inf"], "--width"),
    ([*AD, "--width", "nan"], "--width"),
    ([*AD, "--proxy-params", "0"], "--proxy-params"),
    ([*AD, "--proxy-params", "-5"], "--proxy-params"),
    ([*AD, "--proxy-memory", ""], "--proxy-memory"),
    ([*AD, "--proxy-memory", "lots"], "lots"),
    ([*AD, "--steps", "0"], "--steps"),
    ([*AD, "--stream", ""], "--stream"),
    ([*AD, "--stream", "fogg:3"], "fogg"),
    (["adapt", "--offline", "adir", "--out", "afile"], "--out"),
    (["adapt", "--offline", "nowhere", "--out", "o"], "offline"),
    # llm-prune
    (["llm-prune", "--config", "missing.yaml"], "missing.yaml"),
    (["llm-prune", "--config", "train.yaml", "--mode", "eval"], "--mode"),
    # llm-pretrain
    (["llm-pretrain", "--epochs", "0"], "--epochs"),
    (["llm-pretrain", "--epochs", "-1"], "--epochs"),
    (["llm-pretrain", "--epochs", "two"], "--epochs"),
    (["llm-pretrain", "--out", "afile"], "--out"),
    # data
    (["data", "show", "digits", "--option", "size=4000"], "--option size"),
    (["data", "show", "digits", "--option", "size=0"], "--option size"),
    (["data", "show", "digits", "--option", "size=big"], "--option size"),
    (["data", "show", "digits", "--option", "size"], "--option"),
    (["data", "show", "stream", "--stream", ""], "--stream"),
    (["data", "show", "digits", "--grid", "adir"], "--grid"),
    (["data", "show", "digits", "--grid", "afile/grid.png"], "--grid"),
    (["data", "show", "nodata"], "nodata"),
    # demo
    (["demo", "--out", "afile"], "--out"),
]


@pytest.mark.parametrize("argv, names", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_bad_value_exits_2_with_one_paragraph_naming_the_flag(ws, capsys, argv, names):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert names in err
    assert "Traceback" not in err and "\n\n" not in err and "pydantic" not in err
    assert err.startswith("edgeadapt"), err


LLM_CASES: list[tuple[dict[str, object], str]] = [
    ({"seq_len": 512}, "seq_len: 512 tokens is more than the model's 256 positions"),
    ({"model": "llama-9000b"}, "unknown model 'llama-9000b'"),
    ({"model": "HuggingFaceTB/SmolLM2-135M"}, "huggingface-cli download HuggingFaceTB/SmolLM2-135M"),
    ({"model": "adir"}, "holds no model"),
    ({"recovery": {"learning_rate": float("inf")}}, "recovery.learning_rate: inf is not a finite number"),
    ({"param_sparsity": float("nan")}, "param_sparsity: nan is not a finite number"),
    ({"save": "afile"}, "save: 'afile' is an existing file"),
    ({"log_dir": "afile/logs"}, "log_dir:"),
    ({"pruning": {"protect_first": 1, "protect_last": 1}}, "cover all 2 layers"),
    ({"evaluation": {"stride": 64}}, "evaluation.stride: 64 is more than seq_len 32"),
]


@pytest.mark.parametrize("fields, message", LLM_CASES, ids=[m.split(":")[0] for _, m in LLM_CASES])
@pytest.mark.parametrize("command", ["validate", "llm-prune"])
def test_llm_prune_config_limits_are_checked_at_validation(ws, capsys, fields, message, command):
    """`validate` refuses what running would refuse, and `llm-prune` refuses it before loading."""
    config = _llm(ws, **fields)
    code = main(["validate", config] if command == "validate" else ["llm-prune", "--config", config])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err


def test_a_read_only_output_directory_is_refused_before_compute(ws, capsys, monkeypatch):
    """os.access stands in for a read-only mount (the tests may run as root, who may write anywhere)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p).name == "adir" else real(p, mode))
    for argv in (["prune", "tiny-vit", "--unit-sparsity", "0.5", "--out", "adir"],
                 ["prune", "tiny-vit", "--unit-sparsity", "0.5", "--out", "adir/new"],
                 ["demo", "--out", "adir"], ["llm-pretrain", "--out", "adir/ref"],
                 ["train", "--config", "train.yaml", "--out", "adir"],
                 ["data", "show", "digits", "--grid", "adir/grid.png"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "not writable" in err and ("--out" in err or "--grid" in err), err


def test_prune_refuses_an_existing_file_as_out_before_loading_the_model(ws, capsys, monkeypatch):
    import edgeadapt.pruning.checkpoint as checkpoint

    def no_load(model):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(checkpoint, "load_model", no_load)
    assert main(["prune", "tiny-vit", "--unit-sparsity", "0.5", "--out", "afile"]) == 2
    assert "--out: 'afile' is an existing file" in capsys.readouterr().err


def test_validate_notes_inputs_an_earlier_step_writes_and_prints_each_verdict_once(ws, capsys):
    (ws / "configs").mkdir()
    (ws / "configs" / "train.yaml").write_text(yaml.safe_dump({**TRAIN, "out": "runs/source-vit"}))
    offline = yaml.safe_load((ROOT / "configs" / "offline-vit-digits.yaml").read_text())
    assert offline["model"] == "runs/source-vit"
    (ws / "configs" / "offline.yaml").write_text(yaml.safe_dump(offline))
    assert main(["validate", "configs/offline.yaml", "configs/train.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.count("configs/offline.yaml") == 1 and out.count("configs/train.yaml: valid") == 1
    assert "model runs/source-vit not built yet (run `edgeadapt train --config configs/train.yaml`)" in out
    # Running it is still refused: the note exists only for `validate`.
    assert main(["offline", "all", "--config", "configs/offline.yaml"]) == 2


def test_validate_checks_every_file_and_fails_if_any_is_invalid(ws, capsys):
    assert main(["validate", "binary.yaml", "train.yaml"]) == 2
    captured = capsys.readouterr()
    assert "train.yaml: valid train config" in captured.out and "binary.yaml" in captured.err


def test_the_shipped_configs_validate_on_a_fresh_clone(tmp_path, monkeypatch, capsys):
    """`edgeadapt validate configs/*.yaml` from a checkout without runs/ passes."""
    import shutil

    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    files = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "configs").glob("*.yaml"))
    assert main(["validate", *files]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "not built yet (run `edgeadapt train --config configs/train-vit-digits.yaml`)" in out
    assert "huggingface-cli download HuggingFaceTB/SmolLM2-135M" in out
    assert all(out.count(f"{f}:") == 1 for f in files)
