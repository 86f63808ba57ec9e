"""The adaptation report: report.html holds real tables and the plots, generic over the metric, escaped."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from edgeadapt.online.report import domain_table, summary_table, write_report


class Page(HTMLParser):
    """Tables (rows of (tag, text, bold) cells), <img> attributes and the visible text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[tuple[str, str, bool]]]] = []
        self.images: list[dict[str, str | None]] = []
        self.text: list[str] = []
        self.script = 0
        self._cell: list[str] | None = None
        self._bold = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell, self._bold, self._tag = [], False, tag
        elif tag == "strong" and self._cell is not None:
            self._bold = True
        elif tag == "img":
            self.images.append(dict(attrs))
        elif tag == "script":
            self.script += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append((self._tag, "".join(self._cell).strip(), self._bold))
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    page.close()
    return page


def results(methods: dict[str, list[float]], domains: list[str], metric: str | None = None) -> dict[str, Any]:
    """A results dict in the runner's schema; ``metric`` None writes today's accuracy-only rows."""
    name = metric or "accuracy"
    rows, per_domain = [], []
    for i, (m, values) in enumerate(methods.items()):
        row = {"method": m, f"mean_{name}": sum(values) / len(values), "retrain_seconds": 0.5 * i,
               "peak_memory_bytes": i * 2**20, "params": 1000 + i}
        if metric is not None:
            row["metric"] = metric
        rows.append(row)
        per_domain += [{"method": m, "domain": d, "index": j, name: v}
                       for j, (d, v) in enumerate(zip(domains, values))]
    return {"rows": rows, "domains": domains, "per_domain": per_domain}


ACCURACY = results({"source": [0.5, 0.4, 0.3], "tent": [0.6, 0.3, 0.2], "edgeadapt": [0.7, 0.5, 0.3]},
                   ["fog:3", "contrast:4", "jpeg:5"])


def test_report_html_has_real_tables_and_the_plots(tmp_path):
    """Before: the tables were markdown inside <pre>, so a browser showed raw `| --- |` pipes and the
    page had no <table> at all."""
    write_report(ACCURACY, tmp_path, notes="Source clean accuracy 0.9.")
    text = (tmp_path / "report.html").read_text()
    assert "| ---" not in text and "|---|" not in text and "<pre>" not in text
    page = parse(tmp_path / "report.html")
    assert len(page.tables) == 2
    summary, per_domain = page.tables
    assert [c[1] for c in summary[0]] == ["method", "mean accuracy", "retrain s / domain",
                                          "peak retrain memory", "params"]
    assert len(summary) == 1 + 3 and all(len(r) == 5 for r in summary)
    assert [r[0][1] for r in summary[1:]] == ["source", "tent", "edgeadapt"]
    assert [c[1] for c in per_domain[0]] == ["domain", "source", "tent", "edgeadapt"]
    assert len(per_domain) == 1 + 3 and all(len(r) == 4 for r in per_domain)
    assert [r[0][1] for r in per_domain[1:]] == ["fog:3", "contrast:4", "jpeg:5"]
    # highest accuracy is best: edgeadapt's mean; per domain edgeadapt, edgeadapt, and a tie on jpeg:5
    assert [r[1][2] for r in summary[1:]] == [False, False, True]
    assert [[c[2] for c in r[1:]] for r in per_domain[1:]] == [[False, False, True], [False, False, True],
                                                               [True, False, True]]
    srcs = [img["src"] for img in page.images]
    assert srcs == ["accuracy_per_domain.png", "memory_time.png"]
    assert all((tmp_path / s).is_file() for s in srcs) and all(img["alt"] for img in page.images)
    assert "Source clean accuracy 0.9." in "".join(page.text)
    md = (tmp_path / "report.md").read_text()
    assert summary_table(ACCURACY) in md and domain_table(ACCURACY) in md
    assert "## Accuracy per domain (after adaptation)" in md


def test_a_lower_is_better_metric_is_named_and_its_lowest_value_is_best(tmp_path):
    """Before: the report read `mean_accuracy`/`accuracy` only (KeyError on perplexity rows) and would
    have called the highest value best."""
    ppl = results({"source": [40.0, 80.0], "full": [30.0, 50.0], "edgeadapt": [31.0, 45.0]},
                  ["docs", "email"], metric="perplexity")
    write_report(ppl, tmp_path)
    summary, per_domain = parse(tmp_path / "report.html").tables
    assert summary[0][1][1] == "mean perplexity (lower is better)"
    means = {r[0][1]: r[1] for r in summary[1:]}
    assert [means[m][2] for m in ("source", "full", "edgeadapt")] == [False, False, True]  # 60, 40, 38
    assert means["edgeadapt"][1] == "38.00"
    assert [[c[2] for c in r[1:]] for r in per_domain[1:]] == [[False, True, False], [False, False, True]]
    assert (tmp_path / "perplexity_per_domain.png").is_file()
    assert "mean perplexity (lower is better)" in summary_table(ppl)
    assert "45.00" in domain_table(ppl)


def test_text_in_the_page_is_escaped(tmp_path):
    """Method, domain, notes and title are data: a `<script>` in any of them is shown, not run."""
    evil = results({"<script>alert(1)</script>": [0.5], "source": [0.4]},
                   ['fog"><img src=x onerror=alert(2)>'])
    write_report(evil, tmp_path, title="<b>t</b>", notes="a < b & <script>alert(3)</script>")
    page = parse(tmp_path / "report.html")
    assert page.script == 0
    assert [img["src"] for img in page.images] == ["accuracy_per_domain.png", "memory_time.png"]
    assert page.tables[0][1][0][1] == "<script>alert(1)</script>"  # shown as text
    assert page.tables[1][1][0][1] == 'fog"><img src=x onerror=alert(2)>'
    text = "".join(page.text)
    assert "a < b & <script>alert(3)</script>" in text and "<b>t</b>" in text
    assert "&lt;script&gt;alert(1)" in (tmp_path / "report.html").read_text()


def test_rows_of_two_metrics_get_a_section_each(tmp_path):
    """An image and a text run in one results dict: one section (two tables, two plots) per metric."""
    image = results({"source": [0.5, 0.6]}, ["fog:3", "jpeg:5"], metric="accuracy")
    text = results({"lm-source": [40.0, 20.0]}, ["docs", "email"], metric="perplexity")
    both = {"rows": image["rows"] + text["rows"], "domains": image["domains"] + text["domains"],
            "per_domain": image["per_domain"] + text["per_domain"]}
    write_report(both, tmp_path)
    page = parse(tmp_path / "report.html")
    assert len(page.tables) == 4
    assert [r[0][1] for r in page.tables[3][1:]] == ["docs", "email"]
    assert [img["src"] for img in page.images] == ["accuracy_per_domain.png", "memory_time_accuracy.png",
                                                   "perplexity_per_domain.png", "memory_time_perplexity.png"]
    assert all((tmp_path / img["src"]).is_file() for img in page.images)


def test_report_md_shows_the_memory_and_time_plan_and_the_steps(tmp_path):
    """Before: a run with --memory-budget/--time-budget recorded its plan and each method's steps in
    results.json only; report.md now has a section with the knobs, the peak against the budget, the
    time budget and the steps per domain. A run without a plan has no such section."""
    write_report(ACCURACY, tmp_path / "plain")
    assert "Memory and time plan" not in (tmp_path / "plain" / "report.md").read_text()
    plan = {"micro_batch_size": None, "freeze_blocks": 1, "freeze_fraction": None, "checkpoint_segments": 2,
            "budget_bytes": 8 * 2**20, "predicted_bytes": 7 * 2**20, "measured_bytes": 6 * 2**20,
            "predicted_step_seconds": 0.01, "measured_step_seconds": 0.02, "steps": 13,
            "loss": "as configured", "time_budget_seconds": 0.5, "reference_seconds": 1.0}
    run = {**ACCURACY, "memory_plan": plan, "config": {"time_budget": "0.5x"},
           "rows": [{**r, **({"memory_plan": plan} if r["method"] == "edgeadapt" else {})}
                    for r in ACCURACY["rows"]],
           "per_domain": [{**r, "steps": 13 if r["method"] == "edgeadapt" else 30}
                          for r in ACCURACY["per_domain"] if r["method"] != "source"]}
    write_report(run, tmp_path / "planned")
    md = (tmp_path / "planned" / "report.md").read_text()
    assert "## Memory and time plan" in md and "Chosen for edgeadapt (other methods" in md
    for line in ("| frozen leading blocks | 1 |", "| checkpoint segments | 2 |",
                 "| micro-batch | whole batch |",
                 "| peak memory | predicted 7.00 MiB, measured 6.00 MiB, budget 8.00 MiB |",
                 "| time budget | 0.500 s of retraining per domain (0.5x of the unconstrained 1.000 s) |",
                 "| steps per domain | tent 30, edgeadapt 13 |"):
        assert line in md, md


def test_report_notes_name_the_steps_a_time_budget_gave_each_method():
    """Before (new-user trial): report.md's summary said "4 retraining steps ... per domain" while the
    time-budgeted edgeadapt ran 2 (only the plan table showed it)."""
    from edgeadapt.online.pipeline import AdaptConfig, report_notes

    cfg = AdaptConfig()
    rows = [{"method": "full", "steps": cfg.budget.steps}, {"method": "edgeadapt", "steps": 2},
            {"method": "edgeadapt", "steps": 2}, {"method": "source"}]
    notes = report_notes({"proxy_width": 0.5, "per_domain": rows}, cfg)
    assert f"{cfg.budget.steps} retraining steps" in notes and "(under the time budget: edgeadapt 2;" in notes
    plain = report_notes({"proxy_width": 0.5, "per_domain": rows[:1] + rows[3:]}, cfg)
    assert "time budget" not in plain and plain.startswith("Proxy width 50%")
