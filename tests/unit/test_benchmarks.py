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


# Renderers whose first full run is not committed yet (issue 13: the text online benchmark); the
# coordinator removes a name here when its JSON and README block land.
NOT_YET_RUN: set[str] = set()


def test_every_committed_result_has_a_readme_table():
    blocks = {m["name"] for m in tables.BLOCK.finditer((BENCH.parent / "README.md").read_text())}
    stems = {p.stem for p in (BENCH / "results").glob("*.json")}
    assert blocks == stems == set(tables.RENDERERS) - (NOT_YET_RUN - stems)


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


def _stream(acc: dict[str, float], per_domain: dict[str, list[float]] | None = None) -> dict:
    """One image stream, one seed: rows of mean accuracy and per-domain rows."""
    rows = [{"method": m, "mean_accuracy": a, "gap_closed": None, "retrain_seconds": 1.0,
             "peak_memory_bytes": 2**20, "params": 10} for m, a in acc.items()]
    per_domain = per_domain or {m: [a, a] for m, a in acc.items()}
    domains = [{"method": m, "index": i, "accuracy": v}
               for m, vs in per_domain.items() for i, v in enumerate(vs)]
    return {"rows": rows, "domains": ["fog:5", "contrast:5"], "per_domain": domains}


def test_online_stream_renders_one_table_per_stream_with_gap_and_worst_domain():
    stream = _stream({"source": 0.5, "edgeadapt": 0.6, "oracle": 0.7},
                     {"source": [0.5, 0.5], "edgeadapt": [0.72, 0.48], "oracle": [0.7, 0.7]})
    stream["rows"][1]["gap_closed"] = 0.5
    out = "\n".join(tables.online_stream({"seeds": [0], "streams": {"severe": stream, "unseen": stream}}))
    assert "**severe** (2 domains: fog:5, contrast:5)" in out and "**unseen**" in out
    assert "| edgeadapt | **0.600** | 50% | -2.0 pts |" in out  # best of the non-oracle rows in bold
    assert "| oracle | 0.700 | – |" in out


def test_online_stream_text_renders_per_domain_perplexity_and_memory_ratio():
    def row(m: str, ppl: float, mem: int) -> dict:
        return {"method": m, "mean_perplexity": ppl, "retrain_seconds": 0.5 if mem else 0.0,
                "peak_memory_bytes": mem, "params": 100}

    result = {"seeds": [0], "domains": ["docstrings", "email"],
              "rows": [row("source", 300.0, 0), row("full", 100.0, 40 * 2**20),
                       row("edgeadapt", 101.0, 10 * 2**20), row("oracle", 80.0, 40 * 2**20)],
              "per_domain": [{"method": m, "index": i, "perplexity": p + i}
                             for m, p in (("source", 300.0), ("full", 100.0), ("edgeadapt", 101.0),
                                          ("oracle", 80.0)) for i in range(2)]}
    out = "\n".join(tables.online_stream_text(result))
    assert "| method | docstrings | email | mean perplexity |" in out
    assert "| edgeadapt | 101.0 | 102.0 | 101.0 | 0.50 s | 10.0 MiB (0.25x) | 100 |" in out
    assert "| full | 100.0 | 101.0 | **100.0** |" in out  # lowest apart from the oracle


def test_memory_planner_renders_errors_peer_failures_and_plans_that_do_not_fit():
    pred = {"model": "tiny-vit", "plan": "freeze half", "measured_bytes": 2**20, "ours_error": 0.012,
            "memtracker_error": None, "memtracker_failure": "RuntimeError: cannot register a hook",
            "accelerate_error": -0.5}
    budget = {"model": "tiny-vit", "fraction": 0.5, "budget_bytes": 2 * 2**20}
    result = {"seed": 0, "retrain_cpu_seconds": 10, "threads": 1, "optimizer": "adam lr 0.001",
              "our_plan_source": "search", "models": [{"name": "tiny-vit", "metric": "accuracy"}],
              "prediction": [pred],
              "budgets": [{**budget, "method": "no knobs", "fits": False, "plan": None},
                          {**budget, "method": "ours", "fits": True, "plan": "mb 8",
                           "measured_bytes": 2**20}],
              "retraining": [{"model": "tiny-vit", "plan": "mb 8", "score": 0.9},
                             {"model": "tiny-vit", "plan": "no knobs", "score": 0.95}]}
    out = "\n".join(tables.memory_planner(result))
    assert "| tiny-vit | freeze half | 1.00 MiB | +1.20% | cannot run (RuntimeError) | -50.00% |" in out
    row = "| tiny-vit (accuracy) | 0.50x = 2.00 MiB | does not fit | mb 8: 0.900 (0.50 of budget) | 0.950 |"
    assert row in out
