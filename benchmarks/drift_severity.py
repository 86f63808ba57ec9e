"""How much drift hurts: the source model's accuracy on every digits-c corruption and severity, over seeds.

The source model is the tiny ViT trained on clean digits by ``configs/train-vit-digits.yaml``
(16×16). Each seed trains its own source model (seed 0 is ``runs/source-vit``, the model the
demo uses; seed s > 0 is ``runs/source-vit-seed{s}``; a valid artifact there is reused) and
corrupts with its own corruption seed. Every corruption × severity 1-5 (CIFAR-10-C's parameters,
made at 32×32 and box-averaged to 16×16, as ``digits-c`` does) is applied to the held-out digits
test split — the labeled split each drift-stream domain uses — and scored without adaptation.
This is the baseline online adaptation must beat, and how the default stream's severities are
chosen (easy and hard domains mixed, DESIGN.md §5).

    python benchmarks/drift_severity.py [--seeds 0,1,2] [--runs runs]

Writes ``benchmarks/results/drift_severity.json`` as ``{"clean", "clean_std", "clean_seeds",
"seeds", "rows": [{"corruption", "severity", "accuracy", "accuracy_std", "accuracy_seeds"}],
"mean_by_severity", "mean_standard15", "sources", ...}`` (means over seeds; see ``benchlib.py``;
paths repository-relative) and a heat map PNG of the means.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import REPO, RESULTS, aggregate_rows, parse_seeds, summarize, write_json  # noqa: E402

from edgeadapt.artifacts import ArtifactError  # noqa: E402
from edgeadapt.config import parse_config  # noqa: E402
from edgeadapt.data.corruptions import CORRUPTIONS, SEVERITIES, STANDARD  # noqa: E402
from edgeadapt.data.registry import build_dataset  # noqa: E402
from edgeadapt.models.adapter import HFAdapter  # noqa: E402
from edgeadapt.pruning.checkpoint import load_pruned  # noqa: E402
from edgeadapt.recipes.source import SOURCE_RECIPE, source_test_metrics  # noqa: E402
from edgeadapt.recipes.train import run_training  # noqa: E402
from edgeadapt.tracking import save_figure  # noqa: E402


def source_model(seed: int, runs: Path) -> tuple[HFAdapter, Path]:
    """The source recipe trained with ``seed`` (reused when its artifact is valid)."""
    out = runs / ("source-vit" if seed == 0 else f"source-vit-seed{seed}")
    if (out / "manifest.json").exists():
        try:
            return load_pruned(out), out
        except ArtifactError:
            pass  # stale or corrupted: retrain
    recipe = parse_config({**SOURCE_RECIPE, "seed": seed, "out": str(out), "resume": False,
                           "train": {**SOURCE_RECIPE["train"], "progress": False}})
    run_training(recipe)
    return load_pruned(out), out


def measure(seed: int, runs: Path) -> dict:
    """One seed: clean accuracy and one row per corruption × severity."""
    adapter, path = source_model(seed, runs)
    size = adapter.model.config.image_size
    rows = []
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            test = build_dataset("digits-c", corruption=name, severity=severity, size=size,
                                 corruption_seed=seed).test
            rows.append({"corruption": name, "severity": severity,
                         "accuracy": adapter.evaluate(test.batches(256))["accuracy"]})
        print(f"seed {seed} {name:<18}", " ".join(f"{r['accuracy']:.3f}" for r in rows[-5:]), flush=True)
    return {"seed": seed, "clean": source_test_metrics(adapter)["accuracy"], "rows": rows,
            "source": path.resolve(), "image_size": size, "test_images": len(test)}


def aggregate(runs: list[dict]) -> dict:
    """Means ± std over the seeds' runs, plus per-severity means (all 19 and the standard 15)."""
    rows = aggregate_rows([r["rows"] for r in runs], ("corruption", "severity"), ("accuracy",), digits=4)
    clean, clean_std = summarize([r["clean"] for r in runs])

    def mean_of(names: tuple[str, ...], severity: int | None = None) -> float:
        return round(statistics.fmean(r["accuracy"] for r in rows if r["corruption"] in names
                                      and severity in (None, r["severity"])), 4)

    return {"model": "tiny-vit", "image_size": runs[0]["image_size"], "test_images": runs[0]["test_images"],
            "corruptions": "CIFAR-10-C parameters at 32x32, box-averaged to the model's size",
            "seeds": [r["seed"] for r in runs], "sources": [r["source"] for r in runs],
            "clean": round(clean, 4), "clean_std": None if clean_std is None else round(clean_std, 4),
            "clean_seeds": [round(r["clean"], 4) for r in runs], "rows": rows,
            "mean_by_severity": {s: mean_of(CORRUPTIONS, s) for s in SEVERITIES},
            "mean_standard15_by_severity": {s: mean_of(STANDARD, s) for s in SEVERITIES},
            "mean_standard15": mean_of(STANDARD)}


def table(result: dict) -> str:
    """Every corruption's mean ± std over seeds (markdown)."""
    def cell(r: dict) -> str:
        return f"{r['accuracy']:.3f}" + ("" if r["accuracy_std"] is None else f" ± {r['accuracy_std']:.3f}")

    lines = [f"clean accuracy {result['clean']:.3f} (seeds {result['seeds']})", "",
             "| corruption | " + " | ".join(f"sev {s}" for s in SEVERITIES) + " |",
             "|---|" + "---|" * len(SEVERITIES)]
    for name in CORRUPTIONS:
        cells = [cell(r) for r in result["rows"] if r["corruption"] == name]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    means = result["mean_by_severity"]
    lines.append("| **mean of 19** | " + " | ".join(f"{means[s]:.3f}" for s in SEVERITIES) + " |")
    std15 = result["mean_standard15_by_severity"]
    lines.append("| **mean of the 15** | " + " | ".join(f"{std15[s]:.3f}" for s in SEVERITIES) + " |")
    return "\n".join(lines)


def heat_map(result: dict, path: Path) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    grid = np.array([[r["accuracy"] for r in result["rows"] if r["corruption"] == n] for n in CORRUPTIONS])
    fig = Figure(figsize=(6.5, 0.42 * len(CORRUPTIONS) + 1.6))
    ax = fig.add_subplot()
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(SEVERITIES)), [str(s) for s in SEVERITIES])
    ax.set_yticks(range(len(CORRUPTIONS)), CORRUPTIONS)
    ax.axhline(len(STANDARD) - 0.5, color="black", linewidth=1)  # the 4 extras below the line
    ax.set_xlabel("severity")
    ax.set_title(f"tiny ViT on digits-c (CIFAR-10-C parameters), no adaptation\n"
                 f"clean {result['clean']:.3f}, mean of {len(result['seeds'])} seeds")
    fig.colorbar(im, ax=ax, label="test accuracy")
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2",
                        help="comma list; one source model and one corruption seed each")
    parser.add_argument("--runs", type=Path, default=REPO / "runs", help="where the source models are kept")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = aggregate([measure(seed, args.runs) for seed in parse_seeds(args.seeds)])
    write_json(args.out / "drift_severity.json", result)
    heat_map(result, args.out / "drift_severity.png")
    print(table(result))
    print(f"\nwrote {args.out / 'drift_severity.json'} and drift_severity.png")


if __name__ == "__main__":
    main()
