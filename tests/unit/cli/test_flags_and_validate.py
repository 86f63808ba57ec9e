"""Errors name the flag the user typed; ``validate`` checks what the command checks and recognises
plan files; unknown config fields get the closest known name.

Before: ``--replan-factor``/``--memory-budget`` errors named the config fields (``replan_factor``,
``memory_budget``); ``memory plan --budget -1`` said "a size must be ..." without the flag;
``validate`` passed an adapt config with ``budget.batch_size: 1`` that ``adapt`` refused, and read a
plan JSON without ``kind`` as a train recipe ("model: required field is missing ...").
"""

from __future__ import annotations

import json

import pytest

from edgeadapt.cli.flags import name_flags, typed_flags
from edgeadapt.cli.main import main
from edgeadapt.models.registry import load_adapter
from edgeadapt.pruning.plan import PruningPlan


@pytest.mark.parametrize("message, argv, expected", [
    ("memory_budget=1.0 KiB is infeasible; set memory_budget >= 5 bytes", ["--memory-budget", "1KiB"],
     "--memory-budget=1.0 KiB is infeasible; set --memory-budget >= 5 bytes"),
    ("replan_factor: must be > 1, got 0.5", ["--replan-factor=0.5"], "--replan-factor: must be > 1, got 0.5"),
    ("proxy_memory_bytes=1 is infeasible", ["--proxy-memory", "1"], "--proxy-memory=1 is infeasible"),
    ("budget.steps: must be >= 1", ["--steps", "0"], "--steps: must be >= 1"),
    # a field the flag did not set, a dotted path, prose and an already-named flag stay
    ("budget.batch_size: needs 2; raise --batch-size", ["--batch-size", "1"],
     "budget.batch_size: needs 2; raise --batch-size"),
    ("a narrower proxy (width)", ["--width", "0.5"], "a narrower proxy (width)"),
    ("memory_budget: too small", ["--proxy-memory", "1"], "memory_budget: too small"),
])
def test_name_flags_rewrites_only_fields_the_command_line_set(message, argv, expected):
    assert name_flags(message, argv) == expected


def test_typed_flags_drop_values_and_repeats():
    assert typed_flags(["adapt", "--out=x", "--steps", "2", "--out", "y", "-", "--"]) == ["--out", "--steps"]


def test_a_bad_size_names_its_flag_before_loading_anything(capsys):
    assert main(["memory", "plan", "tiny-resnet", "--budget", "-1"]) == 2
    assert "argument --budget: a size must be" in capsys.readouterr().err
    assert main(["memory", "plan", "tiny-resnet", "--budget", "0"]) == 2
    assert "argument --budget: must be a positive size" in capsys.readouterr().err
    assert main(["adapt", "--memory-budget", "lots"]) == 2
    assert "argument --memory-budget: a size must be" in capsys.readouterr().err


def test_a_config_error_from_a_flag_names_the_flag(tmp_path, capsys):
    # the width is checked by the config model (field `width`), the value came from --width
    (tmp_path / "a.yaml").write_text(f"kind: adapt\noffline: {tmp_path / 'none'}\nstream: 'fog:5'\n")
    assert main(["adapt", "--config", str(tmp_path / "a.yaml"), "--proxy-params", "5",
                 "--proxy-memory", "1MiB"]) == 2
    err = capsys.readouterr().err
    assert "--proxy-params and --proxy-memory are alternatives" in err, err


def _lora_manifest(offline):
    """What `validate` reads of an offline output: that lora/ and kb/ hold artifacts, and the FM's
    class in lora/manifest.json."""
    for step in ("lora", "kb"):
        (offline / step).mkdir(parents=True)
        (offline / step / "manifest.json").write_text("{}")
    manifest = {"base": {"class": "ViTForImageClassification"}}
    (offline / "lora" / "manifest.json").write_text(json.dumps(manifest))


def test_validate_refuses_the_batch_size_adapt_refuses(tmp_path, capsys):
    _lora_manifest(tmp_path / "off")
    cfg = tmp_path / "a.yaml"
    cfg.write_text(f"kind: adapt\noffline: {tmp_path / 'off'}\nbudget: {{batch_size: 1, steps: 1}}\n")
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "budget.batch_size: batch size 1: the adaptation loss" in err and "needs at least 2" in err
    cfg.write_text(f"kind: adapt\noffline: {tmp_path / 'off'}\nbudget: {{batch_size: 2, steps: 1}}\n")
    assert main(["validate", str(cfg)]) == 0
    # an offline output that is missing is refused as adapt refuses it ...
    cfg.write_text(f"kind: adapt\noffline: {tmp_path / 'none'}\nbudget: {{batch_size: 1, steps: 1}}\n")
    assert main(["validate", str(cfg)]) == 2
    assert f"offline: {tmp_path / 'none' / 'lora'} has no artifact; run `edgeadapt offline all" \
        in capsys.readouterr().err
    # ... unless a config beside it builds it: then a note, and the batch size waits for the model
    (tmp_path / "off.yaml").write_text(f"kind: offline\nout: {tmp_path / 'none'}\n")
    assert main(["validate", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "not built yet (run `edgeadapt offline all --config" in out
    assert "budget.batch_size 1 is checked against the foundation model's loss" in out


def test_validate_recognises_plan_files_without_kind(tmp_path, capsys):
    memory = tmp_path / "memory.json"
    memory.write_text('{"freeze_blocks": 2, "checkpoint_segments": 1}')
    pruning = tmp_path / "pruning.json"
    plan = PruningPlan.dense(load_adapter("tiny-llama").fingerprint())
    pruning.write_text(json.dumps({k: v for k, v in plan.to_dict().items() if k != "format"}))
    assert main(["validate", str(memory), str(pruning)]) == 0
    out = capsys.readouterr().out
    assert f"{memory}: valid memory-plan config; no kind: read as a memory-plan by its fields" in out
    assert f"{pruning}: valid pruning-plan file; read by `edgeadapt prune MODEL --plan {pruning}`" in out


def test_validate_of_an_unknown_file_lists_the_kinds_and_a_typo_gets_the_closest_field(tmp_path, capsys):
    other = tmp_path / "heads.json"
    other.write_text('{"heads": [1, 2], "layer": 3}')
    typo = tmp_path / "typo.json"
    typo.write_text('{"micro_batch_size": 2, "frezee_blocks": 1}')
    recipe = tmp_path / "t.yaml"
    recipe.write_text("kind: train\nmodel: tiny-vit\ndata: {name: digits}\nout: x\n"
                      "train: {epochs: 1, batch_size: 8, learning_rate: 0.1, weight_decy: 0.1}\n")
    assert main(["validate", str(other), str(typo), str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "no kind: field, so it was read as a train config; give kind: one of adapt, llm-prune, " \
           "memory-plan, offline, train, or a plan file's format: edgeadapt.pruning-plan" in err
    assert "frezee_blocks: unknown field; did you mean 'freeze_blocks'?" in err
    assert "train.weight_decy: unknown field; did you mean 'weight_decay'?" in err
    assert "layer: unknown field; remove it or check its spelling" in err


def test_an_absurd_time_budget_is_refused_by_its_flag_before_the_output_directory(tmp_path, capsys):
    """Before: `adapt --time-budget 1e9x --out DIR` (DIR not empty) was accepted as a budget and
    reported as an output conflict; a multiplier above 1 now fails first, naming the flag, the value
    and the fix, and the output directory is left alone."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["--quiet", "adapt", "--time-budget", "1e9x", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--time-budget: '1e9x'" in err and "would do nothing" in err and "(0, 1]" in err
    assert "already holds" not in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_validate_catches_a_typo_inside_method_options_without_loading_the_model(tmp_path, capsys,
                                                                                 monkeypatch):
    """Before: `validate` passed `method_options: {eata: {d_margn: 0.4}}` (and options given to a method
    that reads none); `adapt` found the eata typo only when building the method, after loading the
    model, as a pydantic traceback. Now the config refuses it, with the closest field name."""
    from edgeadapt.online import pipeline

    monkeypatch.setattr(pipeline, "load_lora_artifact", lambda *a, **k: pytest.fail("loaded the model"))
    config = tmp_path / "adapt.yaml"
    config.write_text("kind: adapt\nmethod_options:\n  eata: {d_margn: 0.4}\n"
                      "  edgeadapt: {safeguard: {enabeld: false}}\n  tent: {lr: 0.1}\n")
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert "method_options.eata.d_margn: unknown field; did you mean 'd_margin'?" in err
    assert "method_options.edgeadapt.safeguard.enabeld: unknown field; did you mean 'enabled'?" in err
    assert "method_options.tent: tent takes no options" in err
    config.write_text("kind: adapt\nmethod_options:\n  eata: {d_margin: 0.4}\n"
                      "  edgeadapt: {safeguard: {enabled: false}}\n")
    main(["validate", str(config)])  # in a fresh clone it still refuses: no offline artifact yet
    assert "method_options" not in capsys.readouterr().err
