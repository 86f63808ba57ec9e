"""LLM block pruning: edgeadapt vs torch-pruning vs random, before and after the same recovery.

On the trained reference LM (``edgeadapt llm-pretrain``: tiny-llama-ref on the built-in docs
corpus), at 20% and 50% of the block parameters, in one run on the same data:

- ``ours-taylor`` / ``ours-fisher``: edgeadapt's gradient-sensitivity pruning of heads (KV groups)
  and FFN neurons, ranked globally across layers with per-layer floors, to the parameter target;
- ``tp-taylor`` / ``tp-magnitude``: torch-pruning 1.6.1's group Taylor / group L2 magnitude
  pruner (``peer_torch_pruning_llm.py``), uniform per layer, with the same head count per layer
  and the FFN count chosen to remove the same parameters;
- ``random``: edgeadapt's pruner with seeded random scores.

Every pruned model then gets the same recovery budget (LoRA rank 16 merged afterwards, the same
steps, learning rate and data; validation perplexity after every epoch and at the end, the best
kept, and the pruned weights kept when recovery does not beat them), repeated for a few recovery
seeds. Metrics: validation perplexity (sliding window), parameters,
tokens/s ratio vs dense for inference and a training step (interleaved repeats, medians), and
peak training-step memory ratio vs dense.

    python benchmarks/llm_prune.py [--steps N] [--seeds 0,1,2] [--quick]

Writes ``benchmarks/results/llm_prune.json`` as ``{"dense_ppl": x, "rows": [{"method", "sparsity",
"recovered", "ppl", "params", "tokens_per_s_ratio", "train_memory_ratio", ...}]}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_torch_pruning_llm import prune_llama_with_torch_pruning  # noqa: E402

from edgeadapt.artifacts import atomic_write_text  # noqa: E402
from edgeadapt.config import parse_config  # noqa: E402
from edgeadapt.llm import pipeline  # noqa: E402
from edgeadapt.llm.evaluate import compare_speed, lm_batch, peak_memory  # noqa: E402
from edgeadapt.llm.prune import prune_to_sparsity, random_scores, sensitivity  # noqa: E402
from edgeadapt.models.registry import wrap  # noqa: E402
from edgeadapt.recipes.reference_lm import train_reference_lm  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "llm_prune.json"
METHODS = ("ours-taylor", "ours-fisher", "tp-taylor", "tp-magnitude", "random")


def block_params(adapter) -> int:
    return sum(p.numel() for p in adapter.model.get_submodule(adapter.layers_path()).parameters())


def params(adapter) -> int:
    return sum(p.numel() for p in adapter.model.parameters())


def peer(dense, importance: str, target: float, calibration: list, ours_params: int):
    """torch-pruning at the same parameter count: round(target * KV groups) per layer, then the FFN
    channels per layer that bring the block parameters closest to ours."""
    model = copy.deepcopy(dense.model)
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    per_group = c.num_attention_heads // c.num_key_value_heads
    unit_head = 2 * per_group * head_dim * c.hidden_size + 2 * head_dim * c.hidden_size
    unit_neuron = 3 * c.hidden_size
    n_layers = c.num_hidden_layers
    loss = lambda m, b: m(**b).loss  # noqa: E731
    n_heads = round(target * c.num_key_value_heads)
    if n_heads:
        prune_llama_with_torch_pruning(model, "heads", n_heads / c.num_key_value_heads, importance,
                                       calibration, loss)
    removed = params(dense) - ours_params
    n_neurons = round((removed / n_layers - n_heads * unit_head) / unit_neuron)
    if n_neurons > 0:
        width = model.config.intermediate_size
        # the peer rounds sparsity * width: pass the exact fraction for n_neurons
        prune_llama_with_torch_pruning(model, "neurons", (n_neurons + 0.25) / width, importance,
                                       calibration, loss)
    return wrap(model, dense.tokenizer, "tp-pruned")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="recovery optimizer steps per pruned model")
    ap.add_argument("--sparsities", default="0.2,0.5")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2", help="recovery seeds (data order and LoRA init); the "
                    "table reports the mean and spread of the recovered perplexity")
    ap.add_argument("--quick", action="store_true", help="fewer eval tokens and steps (smoke run)")
    args = ap.parse_args()
    torch.manual_seed(0)
    dense, test = train_reference_lm()
    dense.model.eval()
    steps = 8 if args.quick else args.steps
    cfg = parse_config({
        "kind": "llm-prune", "model": "tiny-llama-ref", "sparsity": 0.2, "seq_len": 128, "batch_size": 16,
        "learning_rate": 5e-4, "epochs": 50, "patience": None,
        "recovery": {"method": "lora", "lora": {"rank": 16, "alpha": 32}, "max_steps": steps,
                     "checkpoint_every": None},
        "evaluation": {"stride": 64}, "tracker": "none", "save": "runs/bench-llm/model",
        "log_dir": "runs/bench-llm/logs"})
    seeds = [int(x) for x in args.seeds.split(",")][:1 if args.quick else None]
    train_ids = pipeline.token_ids(dense, pipeline.corpus(cfg, "train"))
    val_ids = pipeline.token_ids(dense, pipeline.corpus(cfg, "val"), 2048 if args.quick else None)
    calibration = [b for _, b in zip(range(8), pipeline.block_batches(train_ids, cfg.seq_len, cfg.batch_size,
                                                                      shuffle=True, seed=10_000)(0))]
    dense_ppl = pipeline._ppl(cfg, dense, val_ids)
    print(f"reference LM: {params(dense):,} params, validation perplexity {dense_ppl:.2f} "
          f"(test {test['perplexity']:.2f})")
    scores = {"ours-taylor": sensitivity(dense, "taylor", calibration),
              "ours-fisher": sensitivity(dense, "fisher", calibration),
              "random": random_scores(dense, seed=0)}
    dense.model.cpu()
    probe = lm_batch(val_ids, 8, cfg.seq_len)
    rows = []
    for target in (float(s) for s in args.sparsities.split(",")):
        models = {}
        ours_params = None
        for method in args.methods.split(","):
            start = time.perf_counter()
            if method.startswith("tp-"):
                model = peer(dense, method[3:], target, calibration, ours_params or params(dense))
            else:
                model = copy.deepcopy(dense)
                prune_to_sparsity(model, target, ["heads", "neurons"], scores[method])
                ours_params = ours_params or params(model)
            sparsity = 1 - block_params(model) / block_params(dense)
            before = pipeline._ppl(cfg, model, val_ids)
            rows.append({"method": method, "sparsity": target, "achieved_sparsity": sparsity,
                         "recovered": False,
                         "ppl": before, "params": params(model)})
            afters, kept = [], []
            for seed in seeds:
                recovered = copy.deepcopy(model)
                train = pipeline.block_batches(train_ids, cfg.seq_len, cfg.batch_size, shuffle=True,
                                               seed=seed)
                out = pipeline.recover(cfg.model_copy(update={"seed": seed}), recovered, train, val_ids,
                                       baseline=before)
                afters.append(pipeline._ppl(cfg, recovered, val_ids))
                kept.append(out["kept_pruned_weights"])
                models.setdefault(method, recovered)  # the first seed's model is timed below
            after = statistics.mean(afters)
            spread = statistics.stdev(afters) if len(afters) > 1 else 0.0
            rows.append({**rows[-1], "recovered": True, "ppl": after, "ppl_std": spread, "ppl_seeds": afters,
                         "kept_pruned_weights": kept})
            print(f"{method:13s} @ {target:.0%} (achieved {sparsity:.1%}, {params(model):,} params): ppl "
                  f"{before:8.2f} -> {after:7.2f} ± {spread:.2f} after recovery "
                  f"[{time.perf_counter() - start:.0f}s]", flush=True)
        named = {"dense": dense.model, **{m: a.model for m, a in models.items()}}
        speed = {mode: compare_speed(named, probe, mode, repeats=3 if args.quick else 7)
                 for mode in ("inference", "train")}
        mem_dense = peak_memory(dense, probe, "train")
        for row in rows:
            if row["sparsity"] == target:
                m = row["method"]
                row["tokens_per_s_ratio"] = speed["inference"][m]["ratio"]
                row["train_tokens_per_s_ratio"] = speed["train"][m]["ratio"]
                row["train_memory_ratio"] = peak_memory(models[m], probe, "train") / mem_dense
    result = {"dense_ppl": dense_ppl, "dense_params": params(dense), "recovery_steps": steps,
              "recovery_seeds": seeds, "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if not args.quick:
        atomic_write_text(RESULTS, json.dumps(result, indent=1))
    print_table(result)


def print_table(result: dict) -> None:
    d = result["dense_ppl"]
    print(f"\ndense validation perplexity {d:.2f}, {result['dense_params']:,} params; recovery "
          f"{result['recovery_steps']} LoRA steps each, seeds {result['recovery_seeds']} (mean ± std)\n")
    print("| method | sparsity | ppl before | ppl after | after / dense | params | inference tok/s | "
          "train tok/s | train memory |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = result["rows"]
    for before, after in zip(rows[0::2], rows[1::2]):
        print(f"| {before['method']} | {before['sparsity']:.0%} ({before['achieved_sparsity']:.1%}) | "
              f"{before['ppl']:.2f} | {after['ppl']:.2f} ± {after['ppl_std']:.2f} | "
              f"{after['ppl'] / d:.3f} | "
              f"{before['params']:,} | "
              f"{after['tokens_per_s_ratio']:.2f}x | {after['train_tokens_per_s_ratio']:.2f}x | "
              f"{after['train_memory_ratio']:.2f} |")


if __name__ == "__main__":
    main()
