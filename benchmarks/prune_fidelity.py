"""Pruning fidelity on the real pretrained MiniLM: edgeadapt vs torch-pruning, one run, same data.

For FFN neurons and attention heads at 10/25/50% sparsity (uniform per layer), prune with
edgeadapt's magnitude (L2) and Taylor importance and with torch-pruning 1.6.1's group magnitude
and group Taylor importance. Taylor calibration for both: in-batch contrastive loss (InfoNCE)
between the two halves of paragraphs of Python's bundled documentation (train split). Metric:
mean cosine similarity between pruned and dense sentence embeddings of held-out paragraphs (test
split); also parameters and CPU latency relative to dense (interleaved rounds, medians).

    python benchmarks/prune_fidelity.py [--quick]

Writes ``benchmarks/results/prune_fidelity.json`` as
``{"rows": [{"method", "target", "sparsity", "cosine", "params", "latency_ratio"}], ...}``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_torch_pruning import prune_with_torch_pruning  # noqa: E402

from edgeadapt.artifacts import atomic_write_text  # noqa: E402
from edgeadapt.data.text import builtin_paragraphs, text_batches  # noqa: E402
from edgeadapt.models.registry import load_adapter  # noqa: E402
from edgeadapt.models.tasks import model_inputs  # noqa: E402
from edgeadapt.pruning.prune import prune  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "prune_fidelity.json"
TARGETS = {"ffn": "neurons", "heads": "heads"}
METHODS = ("magnitude", "taylor", "tp-magnitude", "tp-taylor")


@torch.no_grad()
def embed(adapter, batches) -> torch.Tensor:
    adapter.model.eval()
    return torch.cat([adapter.features(b) for b in batches])


@torch.no_grad()
def forward_seconds(model, batches) -> float:
    start = time.perf_counter()
    for b in batches:
        model(**model_inputs(b))
    return time.perf_counter() - start


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def build(dense, method: str, target: str, sparsity: float, calibration: list):
    adapter = copy.deepcopy(dense)
    if method.startswith("tp-"):
        prune_with_torch_pruning(adapter.model, target, sparsity, method[3:], calibration,
                                 lambda m, b: adapter.task.loss(m, b))
    else:
        importance = "magnitude-l2" if method == "magnitude" else "taylor"
        prune(adapter, sparsity, [TARGETS[target]], importance, calibration)
    adapter.model.zero_grad(set_to_none=True)
    # torch-pruning's pruner/DependencyGraph is a reference cycle that pins the traced autograd
    # graph (its nodes keep grad_fns); collect it now rather than whenever gc next runs.
    gc.collect()
    return adapter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer calibration batches and latency rounds")
    ap.add_argument("--sparsities", default="0.1,0.25,0.5")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.manual_seed(0)
    n_cal, rounds = (8, 3) if args.quick else (16, 5)

    dense = load_adapter("minilm")
    tok = dense.tokenizer
    calibration = list(text_batches(tok, builtin_paragraphs("train")[: n_cal * 16], 16, 128, pairs=True))
    held_out = list(text_batches(tok, builtin_paragraphs("test"), 32, 128))
    reference = embed(dense, held_out)

    models = {("dense", "-", 0.0): dense}
    sparsities = [float(s) for s in args.sparsities.split(",")]
    for target in TARGETS:
        for s in sparsities:
            for method in METHODS:
                models[(method, target, s)] = build(dense, method, target, s, calibration)
                print(f"built {method:>12} {target:>5} {s:.2f} (peak RSS {peak_rss_mb():,.0f} MB)",
                      file=sys.stderr)

    times: dict[tuple, list[float]] = {k: [] for k in models}
    for _ in range(rounds):  # interleaved so machine noise hits every model alike
        for key, adapter in models.items():
            times[key].append(forward_seconds(adapter.model, held_out))
    dense_time = statistics.median(times[("dense", "-", 0.0)])

    rows = []
    for (method, target, s), adapter in models.items():
        if method == "dense":
            continue
        cos = F.cosine_similarity(embed(adapter, held_out), reference, dim=-1).mean().item()
        rows.append({"method": method, "target": target, "sparsity": s, "cosine": round(cos, 4),
                     "params": params(adapter.model),
                     "latency_ratio": round(statistics.median(times[(method, target, s)]) / dense_time, 3)})

    print(f"\nMiniLM ({params(dense.model):,} params), {len(held_out)} held-out batches of "
          f"{held_out[0]['input_ids'].shape[0]} paragraphs, {len(calibration)} calibration batches\n")
    print(f"| {'target':6} | {'sparsity':8} | " + " | ".join(f"{m:>12}" for m in METHODS) +
          " | params | latency |")
    print("|" + "---|" * (len(METHODS) + 4))
    verdicts = []
    for target in TARGETS:
        for s in sparsities:
            sel = {r["method"]: r for r in rows if r["target"] == target and r["sparsity"] == s}
            print(f"| {target:6} | {s:8.2f} | " + " | ".join(f"{sel[m]['cosine']:12.4f}" for m in METHODS)
                  + f" | {sel['taylor']['params'] / params(dense.model):.1%} | "
                  f"{sel['taylor']['latency_ratio']:.2f}x |")
            best_peer = max(sel["tp-taylor"]["cosine"], sel["tp-magnitude"]["cosine"])
            verdicts.append((target, s, sel["taylor"]["cosine"] >= best_peer - 1e-4))
    print("\nours (taylor) >= best torch-pruning importance: " +
          ", ".join(f"{t}@{s:.2f}: {'yes' if ok else 'NO'}" for t, s, ok in verdicts))
    payload = {"model": "minilm (all-MiniLM-L6-v2)", "dense_params": params(dense.model),
               "calibration_batches": len(calibration), "held_out_paragraphs": int(reference.shape[0]),
               "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=1))
    plot(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def plot(rows: list[dict], path: Path) -> None:
    """Cosine fidelity vs sparsity, one panel per target, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TARGETS), figsize=(10, 4), sharey=True)
    for ax, target in zip(axes, TARGETS):
        for method in METHODS:
            pts = sorted((r["sparsity"], r["cosine"]) for r in rows if r["target"] == target and r["method"] == method)
            ax.plot(*zip(*pts), marker="o", linestyle="--" if method.startswith("tp-") else "-",
                    label=method if method.startswith("tp-") else f"edgeadapt {method}")
        ax.set_title(f"MiniLM, pruning {target}")
        ax.set_xlabel("sparsity (fraction removed per layer)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cosine to dense embedding (held-out)")
    axes[-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
