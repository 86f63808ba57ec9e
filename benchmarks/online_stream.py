"""Online adaptation over the default 10-domain drift stream: every method, one run, same data.

Trains (or reuses) the source ViT and the offline artifacts, then runs source / tent / full /
static / edgeadapt through the stream runner with the same step budget, and checks the targets:
edgeadapt ≥ source + 10 points, ≥ static + 3 points (equal proxy size), within 3 points of full
with ≤ 50% of its peak retraining memory and ≤ 50% of its retraining time.

    python benchmarks/online_stream.py [--steps 30] [--width 0.75] [--stream "fog:3,contrast:4"]

Writes ``benchmarks/results/online_stream.json`` as ``{"rows": [{"method", "mean_accuracy",
"retrain_seconds", "peak_memory_bytes"}], "domains": [...]}`` (plus per-domain rows) and the
report (markdown, HTML, plots) next to it in ``benchmarks/results/online_stream/``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgeadapt.artifacts import atomic_write_text  # noqa: E402
from edgeadapt.online.pipeline import AdaptConfig, run_adapt  # noqa: E402
from edgeadapt.online.report import domain_table, summary_table  # noqa: E402
from edgeadapt.recipes.demo import run_offline_cached  # noqa: E402
from edgeadapt.recipes.source import train_source_vit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def targets(results: dict) -> list[tuple[str, bool, str]]:
    r = {row["method"]: row for row in results["rows"]}
    if not {"edgeadapt", "source", "static", "full"} <= set(r):
        return []
    ours, full = r["edgeadapt"], r["full"]
    return [
        ("edgeadapt >= source + 10 pts", ours["mean_accuracy"] >= r["source"]["mean_accuracy"] + 0.10,
         f"{ours['mean_accuracy'] - r['source']['mean_accuracy']:+.3f}"),
        ("edgeadapt >= static + 3 pts", ours["mean_accuracy"] >= r["static"]["mean_accuracy"] + 0.03,
         f"{ours['mean_accuracy'] - r['static']['mean_accuracy']:+.3f}"),
        ("edgeadapt within 3 pts of full", ours["mean_accuracy"] >= full["mean_accuracy"] - 0.03,
         f"{ours['mean_accuracy'] - full['mean_accuracy']:+.3f}"),
        ("memory <= 50% of full", ours["peak_memory_bytes"] <= 0.5 * full["peak_memory_bytes"],
         f"{ours['peak_memory_bytes'] / full['peak_memory_bytes']:.2f}x"),
        ("time <= 50% of full", ours["retrain_seconds"] <= 0.5 * full["retrain_seconds"],
         f"{ours['retrain_seconds'] / full['retrain_seconds']:.2f}x"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--width", type=float, default=AdaptConfig.model_fields["width"].default)
    parser.add_argument("--stream", default=None)
    parser.add_argument("--runs", type=Path, default=Path("runs"),
                        help="where the source model and KB are cached")
    args = parser.parse_args()
    train_source_vit(args.runs / "source-vit")
    run_offline_cached(args.runs / "source-vit", args.runs / "offline-vit")
    cfg = AdaptConfig(offline=args.runs / "offline-vit", stream=args.stream, width=args.width,
                      budget={"steps": args.steps}, out=RESULTS / "online_stream")
    results = run_adapt(cfg)
    results["targets"] = [{"target": t, "met": ok, "value": v} for t, ok, v in targets(results)]
    atomic_write_text(RESULTS / "online_stream.json", json.dumps(results, indent=1))
    print(summary_table(results), "", domain_table(results), "", sep="\n")
    for t in results["targets"]:
        print(f"{'MET ' if t['met'] else 'MISS'} {t['target']}: {t['value']}")


if __name__ == "__main__":
    main()
