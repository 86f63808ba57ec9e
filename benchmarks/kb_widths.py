"""Elastic knowledge base vs static pruning at equal width, tiny ViT on digits, one run.

- **FM**: the source tiny ViT (``configs/train-vit-digits.yaml``; trained here if missing).
- **kb**: one knowledge base built from the FM (Taylor-ordered units, gates, sandwich training
  with distillation; ``--epochs`` passes). At each width a proxy is *extracted* from it for a
  window of unlabeled source validation images (a physically smaller model) and scored on test.
  ``kb_dynamic`` scores the gated KB itself at that width (no extraction).
- **static**: the FM magnitude-pruned to the same width (same heads and FFN neurons per block),
  then fine-tuned on the labels for the same number of epochs. ``static_kd`` adds the KB's
  distillation loss from the FM, so the only difference left is the elastic KB.

Budget: the KB runs 4 widths per step, so it costs about as much as the three static
fine-tunes together — and it serves every width from one set of weights.

    python benchmarks/kb_widths.py [--epochs 8] [--seeds 0,1,2] [--quick]

Writes ``benchmarks/results/kb_widths.json`` as ``{"fm": acc, "rows": [{"width", "kb", "static"}]}``
(plus ``kb_dynamic``, ``static_kd``, ``params_ratio``) and a PNG.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgeadapt.artifacts import atomic_write_text  # noqa: E402
from edgeadapt.data.registry import build_dataset  # noqa: E402
from edgeadapt.offline.knowledge_base import KBSettings, build_kb, distill_loss, outputs  # noqa: E402
from edgeadapt.online.proxy import extract_proxy  # noqa: E402
from edgeadapt.pruning.prune import prune  # noqa: E402
from edgeadapt.recipes.source import train_source_vit  # noqa: E402
from edgeadapt.tracking import save_figure  # noqa: E402
from edgeadapt.training.config import TrainConfig  # noqa: E402
from edgeadapt.training.loop import fit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WIDTHS = (0.25, 0.5, 0.75, 1.0)


def params(adapter) -> int:
    return sum(p.numel() for p in adapter.model.parameters())


def static_model(fm, width: float, train, val, cfg: TrainConfig, kd: bool):
    """The FM pruned by magnitude to ``width`` and fine-tuned (optionally with distillation)."""
    model = copy.deepcopy(fm)
    if width < 1.0:
        prune(model, 1.0 - width, ["heads", "neurons"], "magnitude", device="cpu")
    loss_fn = None
    if kd:
        teacher, settings = copy.deepcopy(fm), KBSettings()
        teacher.model.eval().requires_grad_(False)

        def loss_fn(adapter, batch):
            import torch
            import torch.nn.functional as F

            with torch.no_grad():
                target = outputs(teacher, batch)
            student = outputs(adapter, batch)
            return distill_loss(student, target, batch, settings) + F.cross_entropy(student[0], batch["labels"])
    fit(model, train, cfg, val=val, monitor="accuracy", loss_fn=loss_fn)
    model.model.cpu()
    return model


def run(epochs: int, seed: int) -> dict:
    fm, clean = train_source_vit("runs/source-vit")
    data = build_dataset("digits", size=fm.model.config.image_size)
    train = lambda e: data.train.batches(64, shuffle=True, seed=seed + e)  # noqa: E731
    val = lambda: data.val.batches(256)  # noqa: E731
    test = list(data.test.batches(256))
    cfg = TrainConfig(epochs=epochs, learning_rate=2e-3, seed=seed, progress=False)
    t0 = time.perf_counter()
    kb, _ = build_kb(fm, train, cfg, KBSettings(), list(data.val.batches(32)), val=val, monitor="accuracy")
    kb_seconds = time.perf_counter() - t0
    rows, static_seconds = [], 0.0
    for width in WIDTHS:
        proxy = extract_proxy(kb, data.val.unlabeled().batches(256), width).adapter
        t0 = time.perf_counter()
        static = static_model(fm, width, train, val, cfg, kd=False)
        static_seconds += time.perf_counter() - t0 if width < 1.0 else 0.0
        static_kd = static_model(fm, width, train, val, cfg, kd=True)
        rows.append({"width": width, "kb": round(proxy.evaluate(test)["accuracy"], 4),
                     "kb_dynamic": round(kb.evaluate(test, width)["accuracy"], 4),
                     "static": round(static.evaluate(test)["accuracy"], 4),
                     "static_kd": round(static_kd.evaluate(test)["accuracy"], 4),
                     "params_ratio": round(params(proxy) / params(fm), 4)})
        print(f"width {width:.2f}: {rows[-1]}", flush=True)
    return {"fm": round(clean["accuracy"], 4), "rows": rows, "epochs": epochs, "seed": seed,
            "kb_train_seconds": round(kb_seconds, 1), "static_train_seconds_3_widths": round(static_seconds, 1),
            "test_images": len(data.test)}


def average(runs: list[dict]) -> dict:
    """Mean over seeds of every accuracy column (the source FM is the same model in every run)."""
    import statistics

    if len(runs) == 1:
        return runs[0]
    rows = []
    for i, row in enumerate(runs[0]["rows"]):
        mean = {k: round(statistics.mean(r["rows"][i][k] for r in runs), 4) for k in row}
        mean["kb_minus_static_per_seed"] = [round(r["rows"][i]["kb"] - r["rows"][i]["static"], 4) for r in runs]
        rows.append(mean)
    return {**runs[0], "rows": rows, "seed": [r["seed"] for r in runs], "per_seed": runs}


def table(result: dict) -> str:
    lines = [f"FM (dense) test accuracy {result['fm']:.3f}; {result['epochs']} epochs for the KB and for "
             f"each static model; seed(s) {result['seed']}", "",
             "| width | params | kb (extracted) | kb (gated) | static | static + KD | kb - static |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['width']:.0%} | {r['params_ratio']:.1%} | {r['kb']:.3f} | {r['kb_dynamic']:.3f} | "
                     f"{r['static']:.3f} | {r['static_kd']:.3f} | {r['kb'] - r['static']:+.3f} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    widths = [r["width"] for r in result["rows"]]
    for key, label in (("kb", "KB (extracted proxy)"), ("static", "static prune + fine-tune"),
                       ("static_kd", "static + KD")):
        ax.plot(widths, [r[key] for r in result["rows"]], marker="o", label=label)
    ax.axhline(result["fm"], color="gray", linestyle="--", label="FM (dense)")
    ax.set_xlabel("width (fraction of heads and FFN neurons kept)")
    ax.set_ylabel("test accuracy")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", default="0", help="comma list; rows are means over seeds (e.g. 0,1,2)")
    parser.add_argument("--quick", action="store_true", help="3 epochs (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    seeds = [int(x) for x in args.seeds.split(",")]
    result = average([run(3 if args.quick else args.epochs, seed) for seed in seeds])
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "kb_widths.json", json.dumps(result, indent=1))
    plot(result, args.out / "kb_widths.png")
    print(table(result))


if __name__ == "__main__":
    main()
