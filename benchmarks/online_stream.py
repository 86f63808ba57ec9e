"""Online adaptation over the default 10-domain drift stream: every method, same data, over seeds.

Trains (or reuses) the source ViT, then per seed builds the offline artifacts (LoRA, knowledge
base, neuron index; ``configs/offline-vit-digits.yaml`` with that seed) and runs source / tent /
full / static / edgeadapt through the stream runner with the same step budget and that seed
(data order, corruption noise, static baseline). The source ViT is the same model in every seed,
like a downloaded foundation model. Targets, on the means over seeds of paired per-seed values:
edgeadapt ≥ source + 10 points, ≥ static + 3 points (equal proxy size), within 3 points of full
with ≤ 50% of its peak retraining memory and ≤ 50% of its retraining time.

    python benchmarks/online_stream.py [--seeds 0,1,2] [--steps 30] [--width 0.75] [--stream "fog:3"]
                                       [--rebuild] [--smoke]

Writes ``benchmarks/results/online_stream.json`` as ``{"seeds", "rows": [{"method",
"mean_accuracy", "retrain_seconds", "peak_memory_bytes", "params"}], "domains", "per_domain",
"targets", "per_seed", ...}`` (each measured ``x`` is the mean over seeds, with ``x_std`` and
``x_seeds``; see ``benchlib.py``) and the first seed's report (markdown, HTML, plots) in
``benchmarks/results/online_stream/``. Seed 0 reuses the demo's ``runs/offline-vit``; other seeds
cache ``runs/offline-vit-seed<N>``; ``--rebuild`` rebuilds them (do it after changing the offline
code). ``--smoke`` (2 domains, 2 steps, 1-epoch offline stage) writes to ``runs/bench-smoke/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import REPO, RESULTS, SMOKE, aggregate_rows, judge, parse_seeds, seeds_of, write_json  # noqa: E402
from readme_tables import online_stream as readme_table  # noqa: E402

from edgeadapt.config import parse_config  # noqa: E402
from edgeadapt.offline.pipeline import STEPS, run_offline  # noqa: E402
from edgeadapt.online.pipeline import AdaptConfig, run_adapt  # noqa: E402
from edgeadapt.online.report import domain_table  # noqa: E402
from edgeadapt.recipes.source import train_source_vit  # noqa: E402

OFFLINE_CONFIG = REPO / "configs" / "offline-vit-digits.yaml"
SMOKE_STREAM = "fog:3,contrast:4"


def offline_artifacts(source: Path, out: Path, seed: int, epochs: int | None = None,
                      rebuild: bool = False) -> Path:
    """``configs/offline-vit-digits.yaml`` on ``source`` with ``seed`` into ``out``; steps whose
    artifact exists are reused unless ``rebuild``. ``epochs`` overrides both training sections."""
    if rebuild:
        shutil.rmtree(out, ignore_errors=True)
    data = yaml.safe_load(OFFLINE_CONFIG.read_text())
    data.update(model=str(source), out=str(out), seed=seed)
    if epochs is not None:
        for step in ("lora", "kb"):
            data[step]["train"]["epochs"] = epochs
    todo = [s for s in STEPS if not (out / s / "manifest.json").is_file()]
    if todo:
        run_offline(parse_config(data), todo)
    return out


def run(args: argparse.Namespace, seed: int, report: Path) -> dict:
    """One seed: offline artifacts, then every method over the stream; the report goes to ``report``."""
    start = time.perf_counter()
    source = args.runs / "source-vit"
    train_source_vit(source)
    if args.smoke:
        offline = offline_artifacts(source, SMOKE / f"offline-seed{seed}", seed, epochs=1,
                                    rebuild=args.rebuild)
    else:
        name = "offline-vit" if seed == 0 else f"offline-vit-seed{seed}"
        offline = offline_artifacts(source, args.runs / name, seed, rebuild=args.rebuild)
    shutil.rmtree(report, ignore_errors=True)  # no stale plots or event files from an earlier run
    cfg = AdaptConfig(offline=offline, stream=args.stream, width=args.width, seed=seed,
                      static_epochs=1 if args.smoke else AdaptConfig.model_fields["static_epochs"].default,
                      budget={"steps": args.steps}, out=report)
    results = run_adapt(cfg)
    write_json(report / "results.json", results)  # run_adapt wrote it with absolute paths
    return {**results, "seed": seed, "seconds": round(time.perf_counter() - start, 1)}


def aggregate(runs: list[dict]) -> dict:
    """One result from the seeds' runs: every measured column as mean, std and per-seed values."""
    first = runs[0]
    rows = aggregate_rows([r["rows"] for r in runs], key=("method",),
                          metrics=("mean_accuracy", "retrain_seconds", "peak_memory_bytes"))
    per_domain = aggregate_rows([r["per_domain"] for r in runs], key=("method", "index"),
                                metrics=("accuracy_before", "accuracy", "retrain_seconds",
                                         "peak_memory_bytes"))
    config = {k: v for k, v in first["config"].items() if k not in ("seed", "out", "offline")}
    result = {"seeds": [r["seed"] for r in runs], "rows": rows, "domains": first["domains"],
              "per_domain": per_domain, "config": config, "clean_accuracy": first["clean_accuracy"],
              "proxy_width": first["proxy_width"],
              "per_seed": [{"seed": r["seed"], "offline": r["config"]["offline"],
                            "report": r["config"]["out"], "proxy_width": r["proxy_width"],
                            "seconds": r["seconds"]} for r in runs]}
    result["targets"] = targets(result)
    return result


def targets(result: dict) -> list[dict]:
    """The five round-1 targets, each on paired per-seed differences or ratios (empty when a
    method is missing)."""
    r = {row["method"]: row for row in result["rows"]}
    if not {"edgeadapt", "source", "static", "full"} <= set(r):
        return []

    def diff(method: str) -> list[float]:
        return [a - b for a, b in zip(seeds_of(r["edgeadapt"], "mean_accuracy"),
                                      seeds_of(r[method], "mean_accuracy"))]

    def ratio(key: str) -> list[float]:
        return [a / b for a, b in zip(seeds_of(r["edgeadapt"], key), seeds_of(r["full"], key))]

    return [judge("edgeadapt >= source + 10 pts", diff("source"), 0.10),
            judge("edgeadapt >= static + 3 pts", diff("static"), 0.03),
            judge("edgeadapt within 3 pts of full", diff("full"), -0.03),
            judge("memory <= 50% of full", ratio("peak_memory_bytes"), 0.5, False, "{:.2f}x"),
            judge("time <= 50% of full", ratio("retrain_seconds"), 0.5, False, "{:.2f}x")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma list; rows are means ± std over seeds")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--width", type=float, default=AdaptConfig.model_fields["width"].default)
    parser.add_argument("--stream", default=None)
    parser.add_argument("--runs", type=Path, default=Path("runs"),
                        help="where the source model and the offline artifacts are cached")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached offline artifacts")
    parser.add_argument("--smoke", action="store_true", help="2 domains, 2 steps, 1-epoch offline stage; "
                        "results to runs/bench-smoke/")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.stream = 2, args.stream or SMOKE_STREAM
    out = args.out or (SMOKE if args.smoke else RESULTS)
    seeds = parse_seeds(args.seeds)
    start = time.perf_counter()
    others = SMOKE if args.smoke else args.runs / "bench-online"  # reports of the seeds after the first
    runs = [run(args, seed, out / "online_stream" if i == 0 else others / f"report-seed{seed}")
            for i, seed in enumerate(seeds)]
    result = aggregate(runs)
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "online_stream.json", result)
    print("\n".join(readme_table(result)), "", domain_table(result), "", sep="\n")
    print(f"wrote {out / 'online_stream.json'} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
