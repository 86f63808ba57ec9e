"""``edgeadapt llm-prune`` (prune, recover and evaluate a causal LM) and ``edgeadapt llm-pretrain``
(the reference LM).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeadapt.cli.args import (
    OVERWRITE_HELP,
    positive_int,
    size_text,
)
from edgeadapt.outputs import check_output_dir


def cmd_llm_prune(args: argparse.Namespace) -> int:
    """Prune a causal LM by gradient sensitivity, recover it, and evaluate it (perplexity, speed,
    memory). Python: ``edgeadapt.llm.pipeline.run_train(cfg)`` / ``run_test(cfg)``."""
    from edgeadapt.config import load_config
    from edgeadapt.llm.pipeline import run_test, run_train
    from edgeadapt.memory.accounting import parse_bytes

    cfg = load_config(args.config, kind="llm-prune")
    if args.mode == "train":
        max_memory = None if args.max_memory is None else parse_bytes(args.max_memory)
        m = run_train(cfg, overwrite=args.overwrite, max_memory=max_memory)
        print(f"dense ppl {m['dense_ppl']:.2f} | pruned {m['prune']['param_sparsity']:.1%} of block params: "
              f"ppl {m['pruned_ppl']:.2f} "
              f"before recovery, {m['recovered_ppl']:.2f} after | model: {cfg.save}")
    else:
        from edgeadapt.memory.accounting import format_bytes

        r = run_test(cfg)
        for name, row in r["perplexity"].items():
            print(f"{name} test perplexity: dense {row['dense']:.2f}, pruned {row['pruned']:.2f}")
        for mode in ("inference", "train"):
            mem = r[mode]["peak_memory_bytes"]
            print(f"{mode}: {r[mode]['speedup']:.2f}x tokens/s, peak memory {format_bytes(mem['pruned'])} vs "
                  f"{format_bytes(mem['dense'])} dense")
        print(f"report: {cfg.log_dir / 'report.md'}")
    return 0


def cmd_llm_pretrain(args: argparse.Namespace) -> int:
    """Train the reference LM (tiny-llama-ref, 1.7M parameters) on the built-in docs corpus, cached.
    Python: ``edgeadapt.recipes.reference_lm.train_reference_lm(out)``."""
    from edgeadapt.recipes.reference_lm import train_reference_lm

    check_output_dir(args.out, "--out")
    adapter, test = train_reference_lm(args.out, reuse=not args.force, epochs=args.epochs, field="--out")
    params = sum(p.numel() for p in adapter.model.parameters())
    print(f"tiny-llama-ref ({params:,} params) at {args.out}: test perplexity {test['perplexity']:.2f}")
    return 0


def add_llm_parsers(sub: Any) -> None:
    """``llm-prune`` and ``llm-pretrain`` under the top-level subparsers ``sub``."""
    s = sub.add_parser("llm-prune", help="LLM block pruning with recovery training and perplexity evaluation")
    s.add_argument("--config", type=Path, required=True,
                   help="an llm-prune config (configs/llm-prune-docs.yaml)")
    s.add_argument("--mode", choices=("train", "test"), default="train",
                   help="train: prune + recover + save; test: evaluate the saved model and write a report")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP + " (save:, in train mode)")
    s.add_argument("--max-memory", type=size_text, default=None, metavar="SIZE",
                   help="e.g. 24GiB: refuse before scoring when the predicted scoring peak exceeds it, "
                   "naming the largest pruning.calibration_batches / batch_size / seq_len that fits")
    s.set_defaults(func=cmd_llm_prune)

    s = sub.add_parser("llm-pretrain", help="train the reference LM (tiny-llama-ref) on the built-in corpus")
    s.add_argument("--out", type=Path, default=Path("runs/ref-llama"), help="artifact directory (cached)")
    s.add_argument("--epochs", type=positive_int, default=None,
                   help="override the recipe's 20 epochs (early stopping ends it sooner)")
    s.add_argument("--force", action="store_true", help="retrain even if a valid cached model exists")
    s.set_defaults(func=cmd_llm_pretrain)
