"""Benchmark plumbing: mean ± std over seeds, targets, repo-relative result files, README tables
generated from the committed JSON (a hand-edited or stale table fails this suite)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    """Import a benchmark module by path (``benchmarks/`` is not a package)."""
    if name not in sys.modules:
        sys.path.insert(0, str(BENCH))  # the scripts import benchlib / readme_tables as siblings
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


benchlib = _load("benchlib")
tables = _load("readme_tables")


def test_parse_seeds():
    assert benchlib.parse_seeds("0,1,2") == [0, 1, 2]
    assert benchlib.parse_seeds("5") == [5]
    for bad in ("", "1,1", ","):
        with pytest.raises(ValueError):
            benchlib.parse_seeds(bad)


def test_aggregate_rows_mean_std_and_per_seed_values():
    runs = [[{"w": 0.5, "acc": 0.80, "params": 10}, {"w": 1.0, "acc": 0.90, "params": 20}],
            [{"w": 1.0, "acc": 0.94, "params": 20}, {"w": 0.5, "acc": 0.84, "params": 10}]]
    rows = benchlib.aggregate_rows(runs, key=("w",), metrics=("acc",), digits=4)
    assert [r["w"] for r in rows] == [0.5, 1.0]  # the first run's order, matched by key
    assert rows[0] == {"w": 0.5, "params": 10, "acc": 0.82, "acc_std": 0.0283, "acc_seeds": [0.8, 0.84]}
    assert rows[1]["acc_seeds"] == [0.9, 0.94]
    single = benchlib.aggregate_rows(runs[:1], key=("w",), metrics=("acc",))
    assert single[0]["acc_std"] is None and single[0]["acc_seeds"] == [0.8]
    with pytest.raises(ValueError, match="same rows"):
        benchlib.aggregate_rows([runs[0], runs[1][:1]], key=("w",), metrics=("acc",))


def test_target_judges_the_mean_and_flags_verdicts_within_one_std():
    clear = benchlib.judge("a >= b", [0.05, 0.06, 0.04], 0.0)
    assert clear["met"] and not clear["within_std"] and clear["value"] == "+0.050 ± 0.010"
    noisy = benchlib.judge("a >= b", [0.02, -0.01, 0.02], 0.0)
    assert noisy["met"] and noisy["within_std"]
    missed = benchlib.judge("a >= b", [-0.02, 0.01, -0.02], 0.0)
    assert not missed["met"] and missed["within_std"]
    ratio = benchlib.judge("time <= 50%", [1.2, 1.3], 0.5, higher_is_better=False, fmt="{:.2f}x")
    assert not ratio["met"] and ratio["value"] == "1.25x ± 0.07x"
    assert benchlib.judge("one seed", [0.1], 0.0)["within_std"] is False
    assert benchlib.judge("lower", [0.4], 0.5, higher_is_better=False)["met"]


def test_repo_relative_rewrites_only_paths_inside_the_repo(tmp_path):
    root = tmp_path / "repo"
    payload = {"out": str(root / "benchmarks" / "results" / "x"), "root": str(root),
               "nested": [{"p": root / "runs" / "a"}], "other": "/etc/hosts", "n": 3, "s": "fog:3"}
    assert benchlib.repo_relative(payload, root) == {
        "out": "benchmarks/results/x", "root": ".", "nested": [{"p": "runs/a"}], "other": "/etc/hosts",
        "n": 3, "s": "fog:3"}
    assert benchlib.repo_relative(str(root) + "-sibling/x", root) == str(root) + "-sibling/x"


def test_write_json_stores_repo_relative_paths(tmp_path):
    payload = {"config": {"out": str(tmp_path / "runs" / "a")}}
    benchlib.write_json(tmp_path / "r" / "x.json", payload, root=tmp_path)
    text = (tmp_path / "r" / "x.json").read_text()
    assert str(tmp_path) not in text and json.loads(text) == {"config": {"out": "runs/a"}}


def _strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


@pytest.mark.parametrize("path", sorted((BENCH / "results").rglob("*.json")), ids=lambda p: p.name)
def test_committed_results_hold_no_absolute_paths(path):
    absolute = [s for s in _strings(json.loads(path.read_text())) if s.startswith("/") or s[1:3] == ":\\"]
    assert not absolute, f"{path} holds absolute paths {absolute[:3]}; write it with benchlib.write_json"


def test_committed_readme_tables_match_committed_json():
    """`readme_tables.py --check` on the committed README and JSON: regenerate, never hand-edit."""
    assert tables.main(["--check"]) == 0


def test_every_committed_result_has_a_readme_table():
    blocks = {m["name"] for m in tables.BLOCK.finditer((BENCH.parent / "README.md").read_text())}
    assert blocks == {p.stem for p in (BENCH / "results").glob("*.json")} == set(tables.RENDERERS)


def test_check_fails_on_a_hand_edited_table_and_regeneration_fixes_it(tmp_path, capsys):
    readme = tmp_path / "README.md"
    text = (BENCH.parent / "README.md").read_text()
    body = next(tables.BLOCK.finditer(text))["body"]
    edited = body.replace("|", "| 0.999 |", 1)
    readme.write_text(text.replace(body, edited, 1))
    assert tables.main(["--check", "--readme", str(readme)]) == 1
    assert "stale benchmark tables" in capsys.readouterr().err
    assert tables.main(["--readme", str(readme)]) == 0
    assert readme.read_text() == text


def test_renderer_shows_std_over_seeds_and_targets(tmp_path):
    result = {"fm": 0.95, "seeds": [0, 1, 2], "rows": [
        {"width": 0.5, "params_ratio": 0.5238, "kb": 0.9611, "kb_std": 0.0042, "static": 0.94,
         "static_std": 0.01, "static_kd": 0.939, "static_kd_std": 0.002}],
        "targets": [{"target": "kb >= static at 50% width", "met": True, "value": "+0.021 ± 0.030",
                     "within_std": True}]}
    (tmp_path / "kb_widths.json").write_text(json.dumps(result))
    out = tables.render("kb_widths", tmp_path)
    assert "| 50% | 52.4% | 0.961 ± 0.004 | 0.940 ± 0.010 | 0.939 ± 0.002 |" in out
    assert "Seeds 0, 1, 2: mean ± std over seeds." in out
    assert "- kb >= static at 50% width: +0.021 ± 0.030, met (within one std)" in out
    with pytest.raises(KeyError, match="no renderer"):
        tables.render("unknown", tmp_path)


def test_check_refuses_a_readme_without_blocks(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# nothing here\n")
    assert tables.main(["--check", "--readme", str(readme)]) == 1
