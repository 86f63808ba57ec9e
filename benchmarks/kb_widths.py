"""Elastic knowledge base vs static pruning at equal width, tiny ViT on digits, over seeds.

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

Each seed trains the KB and the static models anew (data order, random widths, initialisation of
the fine-tuning); the FM is the same model in every seed, like a downloaded foundation model.

    python benchmarks/kb_widths.py [--epochs 8] [--seeds 0,1,2] [--quick | --smoke]

Writes ``benchmarks/results/kb_widths.json`` as ``{"fm": acc, "seeds": [...], "rows": [{"width",
"params_ratio", "kb", "kb_dynamic", "static", "static_kd"}], "targets": [...], "per_seed": [...]}``
(each accuracy ``x`` is the mean over seeds, with ``x_std`` and ``x_seeds``; see ``benchlib.py``)
and a PNG. ``--smoke`` (1 epoch) writes to ``runs/bench-smoke/`` instead.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import RESULTS, SMOKE, aggregate_rows, judge, parse_seeds, seeds_of, write_json  # noqa: E402
from readme_tables import kb_widths as readme_table  # noqa: E402

from edgeadapt.data.registry import build_dataset  # noqa: E402
from edgeadapt.offline.knowledge_base import KBSettings, build_kb, distill_loss, outputs  # noqa: E402
from edgeadapt.online.proxy import extract_proxy  # noqa: E402
from edgeadapt.pruning.prune import prune  # noqa: E402
from edgeadapt.recipes.source import train_source_vit  # noqa: E402
from edgeadapt.tracking import save_figure  # noqa: E402
from edgeadapt.training.config import TrainConfig  # noqa: E402
from edgeadapt.training.loop import fit  # noqa: E402

WIDTHS = (0.25, 0.5, 0.75, 1.0)
ACCURACIES = ("kb", "kb_dynamic", "static", "static_kd")


def params(adapter) -> int:
    return sum(p.numel() for p in adapter.model.parameters())


def static_model(fm, width: float, train, val, cfg: TrainConfig, kd: bool):
    """The FM pruned by magnitude to ``width`` and fine-tuned (optionally with distillation)."""
    model = copy.deepcopy(fm)
    if width < 1.0:
        prune(model, ["heads", "neurons"], "magnitude", unit_sparsity=1.0 - width, device="cpu")
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
            task = F.cross_entropy(student[0], batch["labels"])
            return distill_loss(student, target, batch, settings) + task
    fit(model, train, cfg, val=val, monitor="accuracy", loss_fn=loss_fn)
    model.model.cpu()
    return model


def run(epochs: int, seed: int) -> dict:
    """One seed: build the KB, then at every width extract a proxy and train both static baselines."""
    start = time.perf_counter()
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
            "kb_train_seconds": round(kb_seconds, 1),
            "static_train_seconds_3_widths": round(static_seconds, 1),
            "test_images": len(data.test), "seconds": round(time.perf_counter() - start, 1)}


def aggregate(runs: list[dict]) -> dict:
    """One result from the seeds' runs: accuracies as mean, std and per-seed values, plus targets.
    The source FM is the same model in every run, so its accuracy is taken from the first."""
    rows = aggregate_rows([r["rows"] for r in runs], key=("width",), metrics=ACCURACIES, digits=4)
    shared = ("rows", "fm", "epochs", "test_images")
    per_seed = [{k: v for k, v in r.items() if k not in shared} for r in runs]
    result = {"fm": runs[0]["fm"], "epochs": runs[0]["epochs"], "test_images": runs[0]["test_images"],
              "seeds": [r["seed"] for r in runs], "rows": rows, "per_seed": per_seed}
    result["targets"] = targets(result)
    return result


def targets(result: dict) -> list[dict]:
    """The KB's extracted proxy at least as accurate as static pruning + fine-tuning at every width
    below 100% (paired per seed), and the full-width KB within 1 point of the FM."""
    out = []
    for r in result["rows"]:
        if r["width"] < 1.0:
            diff = [k - s for k, s in zip(seeds_of(r, "kb"), seeds_of(r, "static"))]
            out.append(judge(f"kb >= static at {r['width']:.0%} width", diff, 0.0))
        else:
            out.append(judge("kb within 1 pt of the FM at 100% width",
                              [k - result["fm"] for k in seeds_of(r, "kb")], -0.01))
    return out


def plot(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    widths = [r["width"] for r in result["rows"]]
    for key, label in (("kb", "KB (extracted proxy)"), ("static", "static prune + fine-tune"),
                       ("static_kd", "static + KD")):
        ax.errorbar(widths, [r[key] for r in result["rows"]], yerr=[r.get(f"{key}_std") or 0.0 for r in
                    result["rows"]], marker="o", capsize=3, label=label)
    ax.axhline(result["fm"], color="gray", linestyle="--", label="FM (dense)")
    ax.set_xlabel("width (fraction of heads and FFN neurons kept)")
    ax.set_ylabel("test accuracy")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", default="0,1,2", help="comma list; rows are means ± std over seeds")
    parser.add_argument("--quick", action="store_true", help="3 epochs")
    parser.add_argument("--smoke", action="store_true", help="1 epoch, results to runs/bench-smoke/")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    epochs = 1 if args.smoke else 3 if args.quick else args.epochs
    out = args.out or (SMOKE if args.smoke else RESULTS)
    start = time.perf_counter()
    result = aggregate([run(epochs, seed) for seed in parse_seeds(args.seeds)])
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "kb_widths.json", result)
    plot(result, out / "kb_widths.png")
    print("\n".join(readme_table(result)))
    print(f"wrote {out / 'kb_widths.json'} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
