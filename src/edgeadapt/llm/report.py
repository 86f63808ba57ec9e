"""The ``llm-prune --mode test`` report: markdown tables plus PNG plots in ``log_dir``.

- ``perplexity_vs_sparsity.png``: validation perplexity of the dense model, the pruning sweep
  without recovery, and the saved model before and after recovery;
- ``recovery_curves.png``: recovery loss, learning rate and validation perplexity per step;
- ``report.md`` and ``test_results.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeadapt.memory.accounting import format_bytes


def plot_sparsity(results: dict[str, Any], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeadapt.tracking import save_figure

    m = results.get("train_metrics") or {}
    if not m:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    sweep = m.get("sweep", [])
    if sweep:
        budget = sweep[0].get("budget", "param_sparsity")
        ax.plot([0.0] + [r["param_sparsity"] for r in sweep], [m["dense_ppl"]] + [r["ppl"] for r in sweep],
                "o-", label=f"{m.get('importance', '')} pruning, no recovery (sweep of {budget})")
    s = m["prune"]["param_sparsity"]
    ax.plot([s], [m["pruned_ppl"]], "s", color="tab:red", label="saved model before recovery")
    ax.plot([s], [m["recovered_ppl"]], "*", ms=12, color="tab:green", label="saved model after recovery")
    ax.axhline(m["dense_ppl"], color="grey", ls=":", label="dense")
    ax.set_xlabel("block-parameter sparsity")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], cfg: Any) -> Path:
    """Write ``report.md``, ``test_results.json`` and the plots into ``cfg.log_dir``; returns the
    report path."""
    from edgeadapt.artifacts import atomic_write_text
    from edgeadapt.tracking import plot_curves

    out = Path(cfg.log_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    if plot_sparsity(results, out / "perplexity_vs_sparsity.png"):
        plots.append("perplexity_vs_sparsity.png")
    csv = out / "train" / "metrics.csv"
    if csv.is_file():
        try:
            plot_curves(csv, out / "recovery_curves.png", title="recovery training")
            plots.append("recovery_curves.png")
        except ValueError:
            pass  # nothing plottable (no recovery steps logged)
    m = results.get("train_metrics") or {}
    lines = [f"# llm-prune report: {cfg.model}", ""]
    if m:
        budget = ", ".join(f"{k} {v:g}" for k, v in m.get("budget", {}).items())
        lines += [f"Pruned {m['prune']['param_sparsity']:.1%} of the block parameters ({m['prune']['plan']}; "
                  f"budget {budget}) by "
                  f"{m['importance']} importance, targets {', '.join(m['targets'])}; recovery: "
                  f"{cfg.recovery.method}.", "",
                  "| validation | perplexity |", "|---|---|",
                  f"| dense | {m['dense_ppl']:.2f} |", f"| pruned, before recovery | {m['pruned_ppl']:.2f} |",
                  f"| pruned, after recovery | {m['recovered_ppl']:.2f} |", ""]
    lines += ["| test set | dense ppl | pruned ppl | ratio |", "|---|---|---|---|"]
    for name, row in results["perplexity"].items():
        ratio = row["pruned"] / row["dense"]
        lines.append(f"| {name} | {row['dense']:.2f} | {row['pruned']:.2f} | {ratio:.3f} |")
    p = results["params"]
    share = p["pruned"] / p["dense"]
    lines += ["", f"Parameters: dense {p['dense']:,}, pruned {p['pruned']:,} ({share:.1%}).", "",
              "| | dense tokens/s | pruned tokens/s | speed-up | dense peak memory | pruned peak memory | "
              "memory ratio |", "|---|---|---|---|---|---|---|"]
    for mode in ("inference", "train"):
        r = results[mode]
        lines.append(f"| {mode} | {r['tokens_per_s']['dense']:,.0f} | {r['tokens_per_s']['pruned']:,.0f} | "
                     f"{r['speedup']:.2f}x | {format_bytes(r['peak_memory_bytes']['dense'])} | "
                     f"{format_bytes(r['peak_memory_bytes']['pruned'])} | {r['memory_ratio']:.2f} |")
    lines += ["", "Speed: median of interleaved repeats (ratios are what carries across machines)."]
    lines += [""] + [f"![{name}]({name})" for name in plots]
    atomic_write_text(out / "test_results.json", json.dumps(results, indent=1))
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report
