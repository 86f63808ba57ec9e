"""The adaptation report: results.json (benchmark schema), per-domain CSV, markdown + HTML, plots."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from edgeadapt.artifacts import atomic_write_text, clean_stale_temps


def summary_table(results: dict[str, Any]) -> str:
    lines = ["| method | mean accuracy | retrain s / domain | peak retrain memory | params |",
             "|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['method']} | {r['mean_accuracy']:.3f} | {r['retrain_seconds']:.2f} | "
                     f"{r['peak_memory_bytes'] / 2**20:.1f} MiB | {r['params']:,} |")
    return "\n".join(lines)


def domain_table(results: dict[str, Any]) -> str:
    methods = [r["method"] for r in results["rows"]]
    acc = {(r["method"], r["domain"]): r["accuracy"] for r in results["per_domain"]}
    lines = ["| domain | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for d in results["domains"]:
        lines.append(f"| {d} | " + " | ".join(f"{acc[(m, d)]:.3f}" for m in methods) + " |")
    return "\n".join(lines)


def _plots(results: dict[str, Any], out: Path) -> list[str]:
    from matplotlib.figure import Figure

    from edgeadapt.tracking import save_figure

    methods = [r["method"] for r in results["rows"]]
    domains = results["domains"]
    fig = Figure(figsize=(max(6.0, 0.9 * len(domains)), 4.0))
    ax = fig.add_subplot()
    for m in methods:
        accs = [next(r["accuracy"] for r in results["per_domain"] if r["method"] == m and r["domain"] == d)
                for d in domains]
        ax.plot(range(len(domains)), accs, marker="o", label=m)
    ax.set_xticks(range(len(domains)), domains, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy after adaptation")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "accuracy_per_domain.png")

    fig = Figure(figsize=(8.0, 3.2))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax1.bar(methods, [r["peak_memory_bytes"] / 2**20 for r in results["rows"]], color="tab:purple")
    ax1.set_ylabel("peak retraining memory (MiB)")
    ax2.bar(methods, [r["retrain_seconds"] for r in results["rows"]], color="tab:orange")
    ax2.set_ylabel("retraining seconds per domain")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    save_figure(fig, out / "memory_time.png")
    return ["accuracy_per_domain.png", "memory_time.png"]


def write_report(results: dict[str, Any], out: str | Path, title: str = "edgeadapt: adaptation under drift",
                 notes: str = "") -> Path:
    """Write results.json, per_domain.csv, report.md, report.html and PNG plots into ``out`` (each
    through a temp file and a rename, mode 0644 under the usual umask); temp files a killed earlier
    write left in ``out`` are removed."""
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
    images = _plots(results, out)
    md = "\n\n".join([f"# {title}", notes, "## Summary", summary_table(results),
                      "## Accuracy per domain (after adaptation)", domain_table(results),
                      *[f"![{name}]({name})" for name in images]])
    atomic_write_text(out / "report.md", md + "\n")
    tables = (summary_table(results), domain_table(results))
    body = "".join(f"<pre>{html.escape(block)}</pre>" for block in tables)
    pictures = "".join(f'<p><img src="{name}" alt="{name}"></p>' for name in images)
    atomic_write_text(out / "report.html", "<!doctype html><meta charset='utf-8'>"
                      f"<title>{html.escape(title)}</title><h1>{html.escape(title)}</h1><p>{html.escape(notes)}</p>{body}{pictures}\n")
    return out
