"""Peak memory and time of Taylor scoring for random-init Llamas from ~5M to ~550M parameters, before
(whole-model backward) and after (block-by-block, :mod:`edgeadapt.pruning.blockwise`).

Each (size, path) runs in its own subprocess (``OMP_NUM_THREADS=1``, one torch thread): the Python +
torch + transformers runtime is the process's RSS after imports; the peak is ``ru_maxrss`` after
building the model (fp32, vocab 32000, random init) and scoring one calibration batch of
``--batch`` × ``--tokens`` tokens with ``edgeadapt.pruning.importance.score(..., "taylor")``. The
scores of both paths are equal (``tests/unit/pruning/test_scoring_memory.py``). A line is fitted to
peak-above-runtime vs fp32 weight bytes per path, and the pruning of a Llama-2-7B-shaped model in
bf16 is extrapolated against 24 GiB two ways: with :func:`edgeadapt.pruning.memory.predict_scoring_peak`
on the 7B shapes (a meta-device model, nothing allocated) and with the after-path's fit line.

    OMP_NUM_THREADS=1 python benchmarks/prune_memory.py [--smoke]

Writes ``benchmarks/results/prune_memory.json`` (``rows``: one per size and path; ``fit``;
``extrapolation``; ``targets``) and ``prune_memory.png``. ``--smoke`` (the two smallest sizes)
writes to ``runs/bench-smoke/``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from benchlib import RESULTS, SMOKE, write_json  # noqa: E402
from readme_tables import prune_memory as readme_table  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from edgeadapt.models.registry import wrap  # noqa: E402
from edgeadapt.pruning.importance import score  # noqa: E402
from edgeadapt.pruning.memory import predict_scoring_peak  # noqa: E402
from edgeadapt.tracking import save_figure  # noqa: E402

VOCAB = 32000
# name -> (hidden, layers, ffn, heads); params with the untied 32000-token embedding and LM head
SIZES: dict[str, tuple[int, int, int, int]] = {
    "5M": (64, 2, 172, 4), "20M": (256, 4, 688, 4), "58M": (512, 8, 1376, 8), "134M": (768, 12, 2048, 12),
    "271M": (1024, 16, 2816, 16), "551M": (1536, 16, 4096, 16)}
LLAMA2_7B = (4096, 32, 11008, 32)
BUDGET = 24 * 2**30
TARGET_RATIO = 1.5


def llama_config(shape: tuple[int, int, int, int], tokens: int) -> LlamaConfig:
    hidden, layers, ffn, heads = shape
    return LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=max(tokens, 64))


def rss_now() -> int:
    """Resident set size of this process, in bytes (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(size: str, bounded: bool, batch: int, tokens: int) -> dict:
    """Build one model and score it once in this process; the measurements as a dict."""
    torch.set_num_threads(1)
    runtime = rss_now()
    torch.manual_seed(0)
    adapter = wrap(LlamaForCausalLM(llama_config(SIZES[size], tokens)), base_hash="bench")
    adapter.model.eval()
    params = sum(p.numel() for p in adapter.model.parameters())
    weights = sum(p.numel() * p.element_size() for p in adapter.model.parameters())
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, VOCAB, (batch, tokens), generator=g),
                "attention_mask": torch.ones(batch, tokens, dtype=torch.long)}]
    gc.collect()
    built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    score(adapter, "taylor", batches, memory_bounded=bounded)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    predicted = predict_scoring_peak(adapter, "taylor", batch, tokens, 1, bounded).total_bytes
    return {"size": size, "path": "after" if bounded else "before", "params": params,
            "weights_bytes": weights,
            "runtime_rss_bytes": runtime, "build_peak_rss_bytes": built, "peak_rss_bytes": peak,
            "above_runtime_bytes": peak - runtime, "ratio_to_weights": round((peak - runtime) / weights, 3),
            "predicted_tensor_bytes": predicted, "seconds": round(seconds, 2)}


def run_one(size: str, bounded: bool, batch: int, tokens: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    argv = [sys.executable, __file__, "--worker", size, "--batch", str(batch), "--tokens", str(tokens)]
    out = subprocess.run(argv + ([] if bounded else ["--before"]), env=env, capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{size} {'after' if bounded else 'before'} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit_line(rows: list[dict]) -> dict:
    """Least-squares ``above_runtime = slope * weights + intercept`` over ``rows``."""
    xs = [r["weights_bytes"] for r in rows]
    ys = [r["above_runtime_bytes"] for r in rows]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return {"slope": round(slope, 4), "intercept_bytes": int(my - slope * mx)}


def extrapolate(fit: dict, runtime: int, tokens: int, batch: int) -> dict:
    """Llama-2-7B shapes in bf16 on the meta device: the prediction and the fit line, plus runtime."""
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(LLAMA2_7B, tokens)).to(torch.bfloat16)
    adapter = wrap(model, base_hash="meta")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = predict_scoring_peak(adapter, "taylor", batch, tokens, 1, True)
    old = predict_scoring_peak(adapter, "taylor", batch, tokens, 1, False)
    line = int(fit["slope"] * weights + fit["intercept_bytes"])
    total = runtime + max(peak.total_bytes, line)
    return {"model": f"Llama-2-7B shapes (hidden {LLAMA2_7B[0]}, {LLAMA2_7B[1]} layers, FFN {LLAMA2_7B[2]}), "
                     f"bf16, {batch}x{tokens} tokens",
            "params": sum(p.numel() for p in model.parameters()), "weights_bytes": weights,
            "predicted_tensor_bytes": peak.total_bytes, "predicted_parts": {
                k: getattr(peak, k) for k in ("weights_bytes", "gradient_bytes", "activation_bytes",
                                              "cache_bytes", "head_bytes")},
            "fit_line_bytes": line, "runtime_bytes": runtime, "total_bytes": total,
            "before_predicted_tensor_bytes": old.total_bytes, "budget_bytes": BUDGET, "fits": total <= BUDGET}


def plot(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.8, 3.8))
    ax = fig.add_subplot()
    gib = 2**30
    for name, marker in (("before", "s"), ("after", "o")):
        rows = [r for r in result["rows"] if r["path"] == name]
        xs = [r["weights_bytes"] / gib for r in rows]
        ax.plot(xs, [r["above_runtime_bytes"] / gib for r in rows], marker=marker, linestyle="",
                label=f"{name} (whole-model backward)" if name == "before" else f"{name} (block by block)")
        f = result["fit"][name]
        ax.plot(xs, [(f["slope"] * x * gib + f["intercept_bytes"]) / gib for x in xs], linewidth=1,
                label=f"fit {f['slope']:.2f}x weights")
    xs = [r["weights_bytes"] / gib for r in result["rows"]]
    ax.plot(sorted(xs), [TARGET_RATIO * x for x in sorted(xs)], "k--", linewidth=1,
            label="target 1.5x weights")
    ax.set_xlabel("fp32 weights (GiB)")
    ax.set_ylabel("peak RSS above runtime (GiB)")
    ax.set_title("Taylor scoring, random-init Llamas")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="the two smallest sizes, to runs/bench-smoke/")
    parser.add_argument("--worker", choices=tuple(SIZES), help=argparse.SUPPRESS)
    parser.add_argument("--before", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, not args.before, args.batch, args.tokens)))
        return
    sizes = list(SIZES)[:2] if args.smoke else list(SIZES)
    rows = []
    start = time.perf_counter()
    for size in sizes:
        for bounded in (False, True):
            r = run_one(size, bounded, args.batch, args.tokens)
            rows.append(r)
            print(f"{size:>5} {r['path']:>6}: peak {r['peak_rss_bytes'] / 2**30:.2f} GiB, above runtime "
                  f"{r['ratio_to_weights']:.2f}x weights, {r['seconds']:.1f} s", flush=True)
    fit = {p: fit_line([r for r in rows if r["path"] == p]) for p in ("before", "after")}
    runtime = max(r["runtime_rss_bytes"] for r in rows)
    extra = extrapolate(fit["after"], runtime, args.tokens, args.batch)
    largest = [r for r in rows if r["size"] == sizes[-1]]
    after = next(r for r in largest if r["path"] == "after")
    before = next(r for r in largest if r["path"] == "before")
    result = {
        "setup": {"batch": args.batch, "tokens": args.tokens, "vocab": VOCAB, "dtype": "float32",
                  "threads": 1,
                  "importance": "taylor", "calibration_batches": 1,
                  "machine": f"{os.cpu_count()} cores, OMP_NUM_THREADS=1, one process per size and path"},
        "rows": rows, "fit": fit, "extrapolation": extra,
        "total_seconds": round(time.perf_counter() - start, 1),
        "targets": [
            {"target": f"after: peak above runtime <= {TARGET_RATIO}x the fp32 weights at {sizes[-1]}",
             "met": after["ratio_to_weights"] <= TARGET_RATIO,
             "value": f"{after['ratio_to_weights']:.2f}x (before {before['ratio_to_weights']:.2f}x)"},
            {"target": "Llama-2-7B-shaped bf16 model: Taylor scoring predicted within 24 GiB (with runtime)",
             "met": extra["fits"], "value": f"{extra['total_bytes'] / 2**30:.1f} GiB"},
        ]}
    out = SMOKE if args.smoke else RESULTS
    write_json(out / "prune_memory.json", result)
    plot(result, out / "prune_memory.png")
    print("\n".join(readme_table(result)))


if __name__ == "__main__":
    main()
