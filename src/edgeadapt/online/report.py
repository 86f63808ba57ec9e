"""The adaptation report: results.json (benchmark schema), per-domain CSV, markdown + HTML, plots.

The report is generic over the metric a run measured: every method row names it in ``metric``
(``accuracy``, ``perplexity``, ...; rows without it are accuracy rows) and carries ``mean_<metric>``;
per-domain rows carry the value under the metric's name. Rows are grouped into one section per
metric (one per modality: an image run measures accuracy, a language-model run perplexity).
``report.md`` is markdown; ``report.html`` renders real HTML tables through a Jinja2 template with
autoescaping (every method, domain, note and title is escaped) and embeds the PNG plots written
beside it.
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from edgeadapt.artifacts import atomic_write_text, clean_stale_temps

# Metrics where a smaller number is the better model; every other metric is higher-is-better.
LOWER_IS_BETTER = frozenset({"perplexity", "loss", "nll", "bits_per_byte", "error", "error_rate"})


def metric_of(row: dict[str, Any]) -> str:
    """The metric a results row measured (rows written before rows named it are accuracy rows)."""
    return str(row.get("metric", "accuracy"))


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (perplexity, loss), as opposed to accuracy."""
    return metric in LOWER_IS_BETTER


def metric_label(metric: str) -> str:
    """Column/axis wording of a metric: ``accuracy``, ``perplexity (lower is better)``."""
    name = metric.replace("_", " ")
    return f"{name} (lower is better)" if lower_is_better(metric) else name


def _fmt(metric: str, value: float) -> str:
    return f"{value:.2f}" if lower_is_better(metric) else f"{value:.3f}"


@dataclass
class Section:
    """The rows of one metric (one modality): method summaries, domains, ``values[(method, domain)]``."""

    metric: str
    modality: str | None
    rows: list[dict[str, Any]]
    domains: list[str]
    values: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return [r["method"] for r in self.rows]

    def mean(self, row: dict[str, Any]) -> float:
        """``mean_<metric>`` of a summary row; the mean of its per-domain values where the row lacks it."""
        if f"mean_{self.metric}" in row:
            return float(row[f"mean_{self.metric}"])
        vals = [v for (m, _), v in self.values.items() if m == row["method"]]
        return statistics.mean(vals) if vals else float("nan")

    @property
    def heading(self) -> str:
        label = self.metric.replace("_", " ")
        return f"{self.modality}: {label}" if self.modality else label[:1].upper() + label[1:]

    @property
    def per_domain_heading(self) -> str:
        label = metric_label(self.metric)
        return f"{label[:1].upper() + label[1:]} per domain (after adaptation)"


def sections(results: dict[str, Any]) -> list[Section]:
    """Group ``results`` by metric, in the order the metrics first appear among the method rows."""
    by_metric: dict[str, Section] = {}
    for r in results["rows"]:
        metric = metric_of(r)
        if metric not in by_metric:
            modality = r.get("modality", results.get("modality"))
            by_metric[metric] = Section(metric, None if modality is None else str(modality), [], [])
        by_metric[metric].rows.append(r)
    for s in by_metric.values():
        names = set(s.methods)
        for r in results["per_domain"]:
            if r["method"] in names and s.metric in r:
                s.values[(r["method"], str(r["domain"]))] = float(r[s.metric])
        seen = {d for _, d in s.values}
        s.domains = [str(d) for d in results["domains"] if str(d) in seen]
    return list(by_metric.values())


def _best(metric: str, values: list[float | None]) -> set[int]:
    """Indices of the best value(s) of ``values`` (ties all best; missing/NaN values never are)."""
    present = [(i, v) for i, v in enumerate(values) if v is not None and v == v]
    if not present:
        return set()
    pick = min if lower_is_better(metric) else max
    best = pick(v for _, v in present)
    return {i for i, v in present if v == best}


def _summary_header(metric: str) -> list[str]:
    return ["method", f"mean {metric_label(metric)}", "retrain s / domain", "peak retrain memory", "params"]


def _summary_md(s: Section) -> str:
    lines = ["| " + " | ".join(_summary_header(s.metric)) + " |", "|---|---|---|---|---|"]
    for r in s.rows:
        lines.append(f"| {r['method']} | {_fmt(s.metric, s.mean(r))} | {r['retrain_seconds']:.2f} | "
                     f"{r['peak_memory_bytes'] / 2**20:.1f} MiB | {r['params']:,} |")
    return "\n".join(lines)


def _domain_md(s: Section) -> str:
    lines = ["| domain | " + " | ".join(s.methods) + " |", "|---|" + "---|" * len(s.methods)]
    for d in s.domains:
        cells = [_fmt(s.metric, s.values[(m, d)]) if (m, d) in s.values else "–" for m in s.methods]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(results: dict[str, Any]) -> str:
    """Markdown: one line per method (mean metric, retraining seconds, peak memory, parameters);
    one table per metric where the rows measured several."""
    return "\n\n".join(_summary_md(s) for s in sections(results))


def domain_table(results: dict[str, Any]) -> str:
    """Markdown: the metric after adaptation, one line per domain, one column per method."""
    return "\n\n".join(_domain_md(s) for s in sections(results))


def _mib(nbytes: float | None) -> str:
    return "–" if nbytes is None else f"{nbytes / 2**20:.2f} MiB"


def plan_md(results: dict[str, Any]) -> str | None:
    """The markdown section on the memory/time plan of a run's edge methods (``results["memory_plan"]``,
    :func:`~edgeadapt.online.edge_plan.describe_plan`): the chosen knobs, predicted and measured peak
    against the budget, the time budget and each method's retraining steps per domain; ``None`` for a
    run without a plan (no ``memory_budget`` or ``time_budget``)."""
    plan = results.get("memory_plan")
    if not plan:
        return None
    edge = sorted({r["method"] for r in results.get("rows", []) if r.get("memory_plan")})
    mb = plan.get("micro_batch_size")
    frozen = plan.get("freeze_blocks", 0) if plan.get("freeze_fraction") is None else \
        f"{plan['freeze_fraction']:.0%} of the blocks"
    rows = [("frozen leading blocks", frozen), ("checkpoint segments", plan.get("checkpoint_segments", 0)),
            ("micro-batch", "whole batch" if mb is None else mb)]
    if plan.get("loss") is not None:
        rows.append(("loss", plan["loss"]))
    budget = plan.get("budget_bytes")
    rows.append(("peak memory", f"predicted {_mib(plan.get('predicted_bytes'))}, measured "
                 f"{_mib(plan.get('measured_bytes'))}, " + ("no memory budget" if budget is None
                                                            else f"budget {_mib(budget)}")))
    seconds = plan.get("time_budget_seconds")
    if seconds is not None:
        given = (results.get("config") or {}).get("time_budget")
        reference = plan.get("reference_seconds")
        of = "" if reference is None else f" of the unconstrained {reference:.3f} s"
        rows.append(("time budget", f"{seconds:.3f} s of retraining per domain"
                     + (f" ({given}{of})" if given is not None else of)))
        rows.append(("measured step", f"{plan.get('measured_step_seconds') or 0:.4f} s"))
    steps: dict[str, list[int]] = {}
    for r in results.get("per_domain", []):
        if "steps" in r:
            steps.setdefault(r["method"], []).append(int(r["steps"]))
    if steps:
        rows.append(("steps per domain", ", ".join(
            f"{m} {min(v)}" + (f"–{max(v)}" if max(v) != min(v) else "") for m, v in steps.items())))
    table = "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
    who = ", ".join(edge) or "the edge methods"
    return f"## Memory and time plan\n\nChosen for {who} (other methods run unconstrained):\n\n{table}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _plots(s: Section, out: Path, suffix: str = "") -> tuple[str, str]:
    """Write ``<metric>_per_domain.png`` and ``memory_time<suffix>.png`` into ``out``; returns the names."""
    from matplotlib.figure import Figure

    from edgeadapt.tracking import save_figure

    domains = s.domains
    fig = Figure(figsize=(max(6.0, 0.9 * len(domains)), 4.0))
    ax = fig.add_subplot()
    for m in s.methods:
        ys = [s.values.get((m, d), float("nan")) for d in domains]
        ax.plot(range(len(domains)), ys, marker="o", label=m)
    ax.set_xticks(range(len(domains)), domains, rotation=35, ha="right", fontsize=8)
    if s.metric == "accuracy":
        ax.set_ylabel("test accuracy after adaptation")
        ax.set_ylim(0, 1)
    else:
        ax.set_ylabel(f"{metric_label(s.metric)} after adaptation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    per_domain = f"{_safe(s.metric)}_per_domain.png"
    save_figure(fig, out / per_domain)

    fig = Figure(figsize=(8.0, 3.2))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax1.bar(s.methods, [r["peak_memory_bytes"] / 2**20 for r in s.rows], color="tab:purple")
    ax1.set_ylabel("peak retraining memory (MiB)")
    ax2.bar(s.methods, [r["retrain_seconds"] for r in s.rows], color="tab:orange")
    ax2.set_ylabel("retraining seconds per domain")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    memory_time = f"memory_time{suffix}.png"
    save_figure(fig, out / memory_time)
    return per_domain, memory_time


_HTML = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string("""\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
img { max-width: 100%; }
</style>
</head>
<body>
{% macro body(rows) %}{% for row in rows %}<tr><th scope="row">{{ row.name }}</th>{% for c in row.cells %}\
<td class="num">{% if c.best %}<strong>{{ c.text }}</strong>{% else %}{{ c.text }}{% endif %}</td>\
{% endfor %}</tr>
{% endfor %}{% endmacro %}
<h1>{{ title }}</h1>
{% if notes %}<p>{{ notes }}</p>{% endif %}
{% for s in sections %}
<section>
<h2>{{ s.heading }}</h2>
<h3>Summary</h3>
<table class="summary">
<thead><tr>{% for h in s.summary_header %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{{ body(s.summary) }}</tbody>
</table>
<h3>{{ s.per_domain_heading }}</h3>
<table class="per-domain">
<thead><tr>{% for h in s.domain_header %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{{ body(s.per_domain) }}</tbody>
</table>
<p>Bold: the best mean {{ s.metric_label }} in the summary and the best method per domain\
{% if s.lower %} (the lowest: lower is better){% else %} (the highest){% endif %}.</p>
{% for img in s.images %}<figure><img src="{{ img.src }}" alt="{{ img.alt }}"><figcaption>{{ img.alt }}\
</figcaption></figure>
{% endfor %}</section>
{% endfor %}
</body>
</html>
""")


def _html_section(s: Section, images: tuple[str, str]) -> dict[str, Any]:
    """The template's view of one section: headers and cells (text + best flag) of both tables."""
    means = [s.mean(r) for r in s.rows]
    best_mean = _best(s.metric, means)
    summary = [{"name": r["method"],
                "cells": [{"text": _fmt(s.metric, means[i]), "best": i in best_mean},
                          {"text": f"{r['retrain_seconds']:.2f}", "best": False},
                          {"text": f"{r['peak_memory_bytes'] / 2**20:.1f} MiB", "best": False},
                          {"text": f"{r['params']:,}", "best": False}]}
               for i, r in enumerate(s.rows)]
    per_domain = []
    for d in s.domains:
        vals = [s.values.get((m, d)) for m in s.methods]
        best = _best(s.metric, vals)
        cells = [{"text": "–" if v is None else _fmt(s.metric, v), "best": j in best}
                 for j, v in enumerate(vals)]
        per_domain.append({"name": d, "cells": cells})
    return {"heading": s.heading, "metric_label": s.metric.replace("_", " "),
            "lower": lower_is_better(s.metric), "summary_header": _summary_header(s.metric),
            "summary": summary, "per_domain_heading": s.per_domain_heading,
            "domain_header": ["domain", *s.methods], "per_domain": per_domain,
            "images": [{"src": images[0], "alt": f"{s.metric.replace('_', ' ')} per domain after adaptation, "
                                                 "one line per method"},
                       {"src": images[1], "alt": "peak retraining memory (MiB) and retraining seconds per "
                                                 "domain, per method"}]}


def write_report(results: dict[str, Any], out: str | Path, title: str = "edgeadapt: adaptation under drift",
                 notes: str = "") -> Path:
    """Write results.json, per_domain.csv, report.md, report.html and PNG plots into ``out`` (each
    through a temp file and a rename, mode 0644 under the usual umask); temp files a killed earlier
    write left in ``out`` are removed. ``report.html`` holds real tables (best value bold: highest,
    or lowest for a lower-is-better metric such as perplexity) and the plots, one section per metric."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    buf = io.StringIO()
    fields = sorted({k for r in results["per_domain"] for k in r})
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(results["per_domain"])
    atomic_write_text(out / "per_domain.csv", buf.getvalue())
    groups = sections(results)
    md_parts = [f"# {title}", notes]
    plan = plan_md(results)
    if plan is not None:
        md_parts.append(plan)
    views = []
    for s in groups:
        images = _plots(s, out, "" if len(groups) == 1 else f"_{_safe(s.metric)}")
        if len(groups) > 1:
            md_parts.append(f"## {s.heading}")
        md_parts += ["## Summary", _summary_md(s), f"## {s.per_domain_heading}",
                     _domain_md(s), *[f"![{name}]({name})" for name in images]]
        views.append(_html_section(s, images))
    atomic_write_text(out / "report.md", "\n\n".join(md_parts) + "\n")
    atomic_write_text(out / "report.html", _HTML.render(title=title, notes=notes, sections=views))
    return out
