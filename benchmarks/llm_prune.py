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

    python benchmarks/llm_prune.py [--steps N] [--seeds 0,1,2] [--quick] [--iterative-steps K]

``--iterative-steps K`` (default 1, one shot) is given to both libraries alike: ours reaches the
parameter target in ``K`` steps (``prune_to_param_sparsity(iterative_steps=K)``), the peer its head
and FFN counts in ``K`` steps, each re-scoring the shrunken model on the same calibration batches.
``--scope`` is ours (the peer is always uniform per layer); ``--calibration-batches`` is for both.

Writes ``benchmarks/results/llm_prune.json`` as ``{"dense_ppl": x, "seeds": [...], "rows": [{"method",
"sparsity", "recovered", "ppl", "params", "tokens_per_s_ratio", "train_memory_ratio", ...}],
"targets": [...]}``; a recovered row's ``ppl`` is the mean over recovery seeds, with ``ppl_std`` and
``ppl_seeds`` (see ``benchlib.py``). ``--quick`` (a 1-epoch reference LM, one seed, 8 steps, fewer
eval tokens: a smoke run) writes to ``runs/bench-smoke/`` instead.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import RESULTS, SMOKE, best, judge, parse_seeds, seeds_of, write_json  # noqa: E402
from peer_torch_pruning_llm import prune_llama_with_torch_pruning  # noqa: E402
from readme_tables import llm_prune as readme_table  # noqa: E402

from edgeadapt.config import parse_config  # noqa: E402
from edgeadapt.data.tokens import token_blocks  # noqa: E402
from edgeadapt.llm import pipeline  # noqa: E402
from edgeadapt.llm.evaluate import compare_speed, lm_batch, peak_memory  # noqa: E402
from edgeadapt.models.registry import wrap  # noqa: E402
from edgeadapt.pruning.budget import prune_to_param_sparsity  # noqa: E402
from edgeadapt.pruning.importance import score  # noqa: E402
from edgeadapt.recipes.reference_lm import train_reference_lm  # noqa: E402

METHODS = ("ours-taylor", "ours-fisher", "tp-taylor", "tp-magnitude", "random")
DENSE_RATIO_TARGETS = {0.2: 1.05, 0.5: 1.25}  # round 1: recovered ppl at most this multiple of dense


def block_params(adapter) -> int:
    return sum(p.numel() for p in adapter.model.get_submodule(adapter.layers_path()).parameters())


def params(adapter) -> int:
    return sum(p.numel() for p in adapter.model.parameters())


def peer(dense, importance: str, target: float, calibration: list, ours_params: int, steps: int = 1):
    """torch-pruning at the same parameter count: round(target * KV groups) per layer, then the FFN
    channels per layer that bring the block parameters closest to ours. ``steps > 1``: both counts
    are reached in that many steps on the linear schedule (``round(n * i / steps)``), every call
    re-accumulating the Taylor gradients on the shrunken model, as ours re-scores between steps."""
    model = copy.deepcopy(dense.model)
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    per_group = c.num_attention_heads // c.num_key_value_heads
    unit_head = 2 * per_group * head_dim * c.hidden_size + 2 * head_dim * c.hidden_size
    unit_neuron = 3 * c.hidden_size
    n_layers = c.num_hidden_layers
    loss = lambda m, b: m(**b).loss  # noqa: E731
    n_heads = round(target * c.num_key_value_heads)
    removed = params(dense) - ours_params
    n_neurons = max(0, round((removed / n_layers - n_heads * unit_head) / unit_neuron))
    done = {"heads": 0, "neurons": 0}
    for i in range(1, steps + 1):
        for kind, total, key in (("heads", n_heads, "num_key_value_heads"),
                                 ("neurons", n_neurons, "intermediate_size")):
            now = round(total * i / steps) - done[kind]
            if now > 0:
                # the peer rounds sparsity * count: pass the exact fraction for `now` of the current count
                prune_llama_with_torch_pruning(model, kind, (now + 0.25) / getattr(model.config, key),
                                               importance, calibration, loss)
                done[kind] += now
    return wrap(model, dense.tokenizer, "tp-pruned")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="recovery optimizer steps per pruned model")
    ap.add_argument("--sparsities", default="0.2,0.5")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2", help="recovery seeds (data order and LoRA init); the "
                    "table reports the mean and spread of the recovered perplexity")
    ap.add_argument("--quick", action="store_true", help="fewer eval tokens and steps (smoke run)")
    ap.add_argument("--iterative-steps", type=int, default=1, help="prune in K steps, re-scoring in "
                    "between, for both libraries alike (default 1: one shot)")
    ap.add_argument("--scope", choices=("global", "uniform"), default="global", help="ours: rank units "
                    "across layers (global, default) or the same fraction per layer (uniform, as the peer)")
    ap.add_argument("--calibration-batches", type=int, default=8, help="calibration batches, both libraries")
    args = ap.parse_args()
    bench_start = time.perf_counter()
    torch.manual_seed(0)
    # --quick prunes a 1-epoch reference LM of its own, so a smoke run needs no pretraining
    dense, test = train_reference_lm(SMOKE / "ref-llama", epochs=1) if args.quick else train_reference_lm()
    dense.model.eval()
    steps = 8 if args.quick else args.steps
    cfg = parse_config({
        "kind": "llm-prune", "model": "tiny-llama-ref", "param_sparsity": 0.2, "seq_len": 128,
        "batch_size": 16,
        "recovery": {"method": "lora", "lora": {"rank": 16, "alpha": 32}, "max_steps": steps,
                     "checkpoint_every": None, "learning_rate": 5e-4, "epochs": 50, "patience": None},
        "evaluation": {"stride": 64}, "tracker": "none", "save": "runs/bench-llm/model",
        "log_dir": "runs/bench-llm/logs"})
    seeds = parse_seeds(args.seeds)[:1 if args.quick else None]
    train_ids = pipeline.token_ids(dense, pipeline.corpus(cfg, "train"))
    val_ids = pipeline.token_ids(dense, pipeline.corpus(cfg, "val"), 2048 if args.quick else None)
    blocks = token_blocks(train_ids, cfg.seq_len, cfg.batch_size, shuffle=True, seed=10_000)(0)
    calibration = [b for _, b in zip(range(args.calibration_batches), blocks)]
    device = pipeline.select_device(cfg.use_gpu, cfg.gpu_ids)
    dense_ppl = pipeline._ppl(cfg, dense, val_ids, device)
    print(f"reference LM: {params(dense):,} params, validation perplexity {dense_ppl:.2f} "
          f"(test {test['perplexity']:.2f})")
    scores = {"ours-taylor": score(dense, "taylor", calibration),
              "ours-fisher": score(dense, "fisher", calibration),
              "random": score(dense, "random", seed=0)}
    dense.model.cpu()
    probe = lm_batch(val_ids, 8, cfg.seq_len)
    rows = []
    for target in (float(s) for s in args.sparsities.split(",")):
        models = {}
        ours_params = None
        for method in args.methods.split(","):
            start = time.perf_counter()
            if method.startswith("tp-"):
                model = peer(dense, method[3:], target, calibration, ours_params or params(dense),
                             args.iterative_steps)
            else:
                model = copy.deepcopy(dense)
                importance = method.removeprefix("ours-")
                prune_to_param_sparsity(model, target, ["heads", "neurons"], scores[method], scope=args.scope,
                                        iterative_steps=args.iterative_steps,
                                        rescore=lambda a, imp=importance: score(a, imp, calibration))
                ours_params = ours_params or params(model)
            sparsity = 1 - block_params(model) / block_params(dense)
            before = pipeline._ppl(cfg, model, val_ids, device)
            rows.append({"method": method, "sparsity": target, "achieved_sparsity": sparsity,
                         "recovered": False,
                         "ppl": before, "params": params(model)})
            afters, kept = [], []
            for seed in seeds:
                recovered = copy.deepcopy(model)
                train = token_blocks(train_ids, cfg.seq_len, cfg.batch_size, shuffle=True, seed=seed)
                out = pipeline.recover(cfg.model_copy(update={"seed": seed}), recovered, train, val_ids,
                                       baseline=before, device=device)
                afters.append(pipeline._ppl(cfg, recovered, val_ids, device))
                kept.append(out["kept_pruned_weights"])
                models.setdefault(method, recovered)  # the first seed's model is timed below
            after = statistics.mean(afters)
            spread = statistics.stdev(afters) if len(afters) > 1 else None
            rows.append({**rows[-1], "recovered": True, "ppl": after, "ppl_std": spread, "ppl_seeds": afters,
                         "kept_pruned_weights": kept})
            print(f"{method:13s} @ {target:.0%} (achieved {sparsity:.1%}, {params(model):,} params): ppl "
                  f"{before:8.2f} -> {after:7.2f} ± {spread or 0.0:.2f} after recovery "
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
              "seeds": seeds, "iterative_steps": args.iterative_steps, "scope": args.scope,
              "calibration_batches": args.calibration_batches, "rows": rows}
    result["targets"] = targets(result)
    result["wall_seconds"] = round(time.perf_counter() - bench_start, 1)
    out = (SMOKE if args.quick else RESULTS) / "llm_prune.json"
    write_json(out, result)
    print(f"\ndense validation perplexity {dense_ppl:.2f}, {result['dense_params']:,} params; recovery "
          f"{steps} LoRA steps each\n")
    print("\n".join(readme_table(result)))
    print(f"wrote {out} ({result['wall_seconds']:.0f} s)")


def targets(result: dict) -> list[dict]:
    """Round-1 targets per sparsity, for our best method after recovery (lowest mean perplexity)
    against torch-pruning's best: lower perplexity before and after the same recovery (paired per
    recovery seed), recovered perplexity within the DENSE_RATIO_TARGETS multiple of dense, faster
    than dense in inference and in a training step."""
    out, rows, dense = [], result["rows"], result["dense_ppl"]
    for s in dict.fromkeys(r["sparsity"] for r in rows):
        def pick(ours: bool, recovered: bool) -> dict:
            return best(rows, "ppl", lambda r: r["sparsity"] == s and r["recovered"] == recovered
                        and r["method"].startswith("ours-" if ours else "tp-"), lowest=True)

        for recovered, when in ((False, "before"), (True, "after")):
            ours, peer = pick(True, recovered), pick(False, recovered)
            diff = [a - b for a, b in zip(seeds_of(ours, "ppl"), seeds_of(peer, "ppl"))]
            out.append(judge(f"ours ({ours['method']}) <= {peer['method']} ppl {when} recovery at {s:.0%}",
                             diff, 0.0, higher_is_better=False, fmt="{:+.2f}"))
        ours = pick(True, True)
        if s in DENSE_RATIO_TARGETS:
            limit = DENSE_RATIO_TARGETS[s]
            out.append(judge(f"ours ({ours['method']}) <= {limit}x dense ppl after recovery at {s:.0%}",
                             [p / dense for p in seeds_of(ours, "ppl")], limit, higher_is_better=False,
                             fmt="{:.3f}x"))
        for key, mode in (("tokens_per_s_ratio", "inference"), ("train_tokens_per_s_ratio", "training")):
            out.append(judge(f"ours ({ours['method']}) faster than dense in {mode} at {s:.0%}",
                             [ours[key]], 1.0, fmt="{:.2f}x"))
    return out


if __name__ == "__main__":
    main()
