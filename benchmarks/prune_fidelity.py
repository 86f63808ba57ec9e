"""Pruning fidelity on the real pretrained MiniLM: edgeadapt vs torch-pruning, same data, over seeds.

For FFN neurons and attention heads at 10/25/50% sparsity (uniform per layer), prune with
edgeadapt's magnitude (L2) and Taylor importance and with torch-pruning 1.6.1's group magnitude
and group Taylor importance. Taylor calibration for both: in-batch contrastive loss (InfoNCE)
between the two halves of paragraphs of Python's bundled documentation (train split). Metric:
mean cosine similarity between pruned and dense sentence embeddings of held-out paragraphs (test
split); also parameters and CPU latency relative to dense (interleaved rounds, medians; measured
on the first seed's models: the architecture, hence the latency, does not depend on the seed).

Seeds: each seed draws its own calibration paragraphs (a seeded sample of the train split), the
same for every method; magnitude pruning ignores calibration, so its std is 0.

    python benchmarks/prune_fidelity.py [--seeds 0,1,2] [--quick | --smoke] [--iterative-steps K]

``--iterative-steps K`` (default 1, one shot) is given to both libraries alike: each removes the
units in ``K`` steps on the linear schedule ``sparsity * i / K``, re-scoring the shrunken model on the
same calibration batches before every step (``peer_torch_pruning.py`` says how the peer does it).
``--targets``, ``--methods`` and ``--calibration-batches`` restrict or change the run (the JSON
records them).

Writes ``benchmarks/results/prune_fidelity.json`` as ``{"seeds", "rows": [{"method", "target",
"sparsity", "cosine", "params", "latency_ratio"}], "targets", ...}`` (``cosine`` is the mean over
seeds, with ``cosine_std`` and ``cosine_seeds``; see ``benchlib.py``). ``--smoke`` (one sparsity,
2 calibration batches, 1 latency round) writes to ``runs/bench-smoke/`` instead.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import RESULTS, SMOKE, aggregate_rows, best, judge, parse_seeds, seeds_of, write_json  # noqa: E402
from peer_torch_pruning import prune_with_torch_pruning  # noqa: E402
from readme_tables import prune_fidelity as readme_table  # noqa: E402

from edgeadapt.data.text import builtin_paragraphs, text_batches  # noqa: E402
from edgeadapt.models.registry import load_adapter  # noqa: E402
from edgeadapt.models.tasks import model_inputs  # noqa: E402
from edgeadapt.pruning.prune import prune  # noqa: E402

TARGETS = {"ffn": "neurons", "heads": "heads"}
METHODS = ("magnitude", "taylor", "fisher", "tp-magnitude", "tp-taylor")


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


def build(dense, method: str, target: str, sparsity: float, calibration: list, steps: int = 1):
    adapter = copy.deepcopy(dense)
    if method.startswith("tp-"):
        prune_with_torch_pruning(adapter.model, target, sparsity, method[3:], calibration,
                                 lambda m, b: adapter.task.loss(m, b), iterative_steps=steps)
    else:
        importance = "magnitude-l2" if method == "magnitude" else method
        prune(adapter, [TARGETS[target]], importance, calibration, unit_sparsity=sparsity,
              iterative_steps=steps)
    adapter.model.zero_grad(set_to_none=True)
    # torch-pruning's pruner/DependencyGraph is a reference cycle that pins the traced autograd
    # graph (its nodes keep grad_fns); collect it now rather than whenever gc next runs.
    gc.collect()
    return adapter


def calibration_set(tok, n_batches: int, seed: int) -> list:
    """``n_batches`` batches of 16 paragraph pairs, a sample of the train split drawn with ``seed``."""
    paragraphs = random.Random(seed).sample(builtin_paragraphs("train"), n_batches * 16)
    return list(text_batches(tok, paragraphs, 16, 128, pairs=True))


def measure(dense, settings: list[tuple[str, str, float]], calibration: list, reference: torch.Tensor,
            held_out: list, keep: bool, steps: int = 1) -> tuple[list[dict], dict]:
    """Cosine to the dense embeddings for every (method, target, sparsity); the pruned models are
    returned only when ``keep`` (for the latency rounds), otherwise freed one by one."""
    rows, models = [], {}
    for method, target, s in settings:
        adapter = build(dense, method, target, s, calibration, steps)
        cos = F.cosine_similarity(embed(adapter, held_out), reference, dim=-1).mean().item()
        rows.append({"method": method, "target": target, "sparsity": s, "cosine": cos,
                     "params": params(adapter.model)})
        if keep:
            models[(method, target, s)] = adapter
        print(f"built {method:>12} {target:>5} {s:.2f}: cosine {cos:.4f} (peak RSS {peak_rss_mb():,.0f} MB)",
              file=sys.stderr)
    return rows, models


def latency(dense, models: dict, held_out: list, rounds: int) -> dict:
    """Median forward time of every model over ``held_out`` relative to dense, in interleaved rounds."""
    models = {("dense", "-", 0.0): dense, **models}
    times: dict[tuple, list[float]] = {k: [] for k in models}
    for _ in range(rounds):  # interleaved so machine noise hits every model alike
        for key, adapter in models.items():
            times[key].append(forward_seconds(adapter.model, held_out))
    dense_time = statistics.median(times[("dense", "-", 0.0)])
    return {k: round(statistics.median(t) / dense_time, 3) for k, t in times.items()}


def targets(result: dict) -> list[dict]:
    """Per (target, sparsity): our best importance at least as faithful as torch-pruning's best
    (the methods chosen by mean cosine; the difference is paired per seed)."""
    out = []
    for unit in dict.fromkeys(r["target"] for r in result["rows"]):
        for s in dict.fromkeys(r["sparsity"] for r in result["rows"] if r["target"] == unit):
            here = [r for r in result["rows"] if r["target"] == unit and r["sparsity"] == s]
            ours = best(here, "cosine", lambda r: not r["method"].startswith("tp-"))
            peer = best(here, "cosine", lambda r: r["method"].startswith("tp-"))
            diff = [a - b for a, b in zip(seeds_of(ours, "cosine"), seeds_of(peer, "cosine"))]
            out.append(judge(f"ours ({ours['method']}) >= {peer['method']} at {unit}@{s:.2f}", diff, 0.0,
                              fmt="{:+.4f}"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="calibration samples; cosine: mean ± std over seeds")
    ap.add_argument("--quick", action="store_true", help="fewer calibration batches and latency rounds")
    ap.add_argument("--smoke", action="store_true", help="sparsity 0.5 only, 2 calibration batches, "
                    "1 latency round; results to runs/bench-smoke/")
    ap.add_argument("--sparsities", default="0.1,0.25,0.5")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/...)")
    ap.add_argument("--iterative-steps", type=int, default=1, help="prune in K steps, re-scoring in "
                    "between, for both libraries alike (default 1: one shot)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="subset of ffn,heads")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)} (fisher: "
                    "edgeadapt's second-order importance)")
    ap.add_argument("--calibration-batches", type=int, default=None, help="batches of 16 pairs "
                    "(default 16; --quick 8, --smoke 2)")
    args = ap.parse_args()
    n_cal, rounds = (2, 1) if args.smoke else (8, 3) if args.quick else (16, 5)
    n_cal = args.calibration_batches or n_cal
    sparsities = [0.5] if args.smoke else [float(s) for s in args.sparsities.split(",")]
    out = args.out or (SMOKE if args.smoke else RESULTS) / "prune_fidelity.json"
    start = time.perf_counter()

    dense = load_adapter("minilm")
    tok = dense.tokenizer
    held_out = list(text_batches(tok, builtin_paragraphs("test"), 32, 128))
    reference = embed(dense, held_out)
    methods = args.methods.split(",")
    settings = [(m, t, s) for t in args.targets.split(",") for s in sparsities for m in methods]
    seeds = parse_seeds(args.seeds)
    runs, ratios = [], {}
    for i, seed in enumerate(seeds):
        torch.manual_seed(seed)
        rows, models = measure(dense, settings, calibration_set(tok, n_cal, seed), reference, held_out,
                               keep=i == 0, steps=args.iterative_steps)
        if i == 0:
            ratios = latency(dense, models, held_out, rounds)
            del models
        runs.append(rows)
    rows = aggregate_rows(runs, key=("method", "target", "sparsity"), metrics=("cosine",), digits=4)
    for r in rows:
        r["latency_ratio"] = ratios[(r["method"], r["target"], r["sparsity"])]
    result = {"model": "minilm (all-MiniLM-L6-v2)", "dense_params": params(dense.model), "seeds": seeds,
              "calibration_batches": n_cal, "iterative_steps": args.iterative_steps,
              "held_out_paragraphs": int(reference.shape[0]), "rows": rows}
    result["targets"] = targets(result)
    result["wall_seconds"] = round(time.perf_counter() - start, 1)

    print(f"\nMiniLM ({params(dense.model):,} params), {len(held_out)} held-out batches of "
          f"{held_out[0]['input_ids'].shape[0]} paragraphs, {n_cal} calibration batches\n")
    print("\n".join(readme_table(result)))
    write_json(out, result)
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')} ({result['wall_seconds']:.0f} s)")


def plot(rows: list[dict], path: Path) -> None:
    """Cosine fidelity vs sparsity, one panel per target, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = list(dict.fromkeys(r["target"] for r in rows))
    fig, axes = plt.subplots(1, len(units), figsize=(5 * len(units), 4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, unit in zip(axes, units):
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((r["sparsity"], r["cosine"], r.get("cosine_std") or 0.0) for r in rows
                         if r["target"] == unit and r["method"] == method)
            x, y, err = zip(*pts)
            peer = method.startswith("tp-")
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, linestyle="--" if peer else "-",
                        label=method if peer else f"edgeadapt {method}")
        ax.set_title(f"MiniLM, pruning {unit}")
        ax.set_xlabel("sparsity (fraction removed per layer)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cosine to dense embedding (held-out)")
    axes[-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
