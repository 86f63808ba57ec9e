"""How much drift hurts: the source model's accuracy on every digits-c corruption and severity.

The source model is the tiny ViT trained on clean digits by ``configs/train-vit-digits.yaml``
(trained here if ``--source`` holds no valid artifact). Every corruption × severity 1-5 is
applied to the held-out digits test split (the same labeled test split each drift-stream domain
uses) and scored without any adaptation. This is the baseline online adaptation must beat.

    python benchmarks/drift_severity.py [--source runs/source-vit]

Writes ``benchmarks/results/drift_severity.json`` as
``{"clean": acc, "rows": [{"corruption", "severity", "accuracy"}], ...}`` and a heat map PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgeadapt.artifacts import atomic_write_text  # noqa: E402
from edgeadapt.data.corruptions import CORRUPTIONS, SEVERITIES  # noqa: E402
from edgeadapt.data.registry import build_dataset  # noqa: E402
from edgeadapt.recipes.source import train_source_vit  # noqa: E402
from edgeadapt.tracking import save_figure  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def measure(source: Path, seed: int = 0) -> dict:
    adapter, clean = train_source_vit(source)
    size = adapter.model.config.image_size
    rows = []
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            test = build_dataset("digits-c", corruption=name, severity=severity, size=size, corruption_seed=seed).test
            rows.append({"corruption": name, "severity": severity,
                         "accuracy": round(adapter.evaluate(test.batches(256))["accuracy"], 4)})
    return {"clean": round(clean["accuracy"], 4), "rows": rows, "model": "tiny-vit", "image_size": size,
            "test_images": len(test), "seed": seed,
            "mean_by_severity": {s: round(statistics.mean(r["accuracy"] for r in rows if r["severity"] == s), 4)
                                 for s in SEVERITIES}}


def table(result: dict) -> str:
    lines = [f"clean accuracy {result['clean']:.3f}", "",
             "| corruption | " + " | ".join(f"sev {s}" for s in SEVERITIES) + " | mean |",
             "|---|" + "---|" * (len(SEVERITIES) + 1)]
    for name in CORRUPTIONS:
        accs = [r["accuracy"] for r in result["rows"] if r["corruption"] == name]
        lines.append(f"| {name} | " + " | ".join(f"{a:.3f}" for a in accs) + f" | {statistics.mean(accs):.3f} |")
    means = result["mean_by_severity"]
    overall = statistics.mean(r["accuracy"] for r in result["rows"])
    lines.append("| **mean** | " + " | ".join(f"{means[s]:.3f}" for s in SEVERITIES) + f" | {overall:.3f} |")
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
    ax.set_xlabel("severity")
    ax.set_title(f"tiny ViT on digits-c, no adaptation (clean {result['clean']:.3f})")
    fig.colorbar(im, ax=ax, label="test accuracy")
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=Path("runs/source-vit"), help="source model artifact dir")
    parser.add_argument("--seed", type=int, default=0, help="corruption seed")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = measure(args.source, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "drift_severity.json", json.dumps(result, indent=1))
    heat_map(result, args.out / "drift_severity.png")
    print(table(result))
    print(f"\nwrote {args.out / 'drift_severity.json'} and drift_severity.png")


if __name__ == "__main__":
    main()
