"""``edgeadapt prune`` and ``edgeadapt export``: structured pruning into an artifact directory, and
an artifact written as a plain Hugging Face checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeadapt.cli.args import (
    OVERWRITE_HELP,
    finite_float,
    nonempty_str,
    nonnegative_int,
    positive_int,
    size_text,
    target_list,
)
from edgeadapt.errors import ConfigError
from edgeadapt.outputs import check_output_dir
from edgeadapt.progress import bar_enabled


def cmd_prune(args: argparse.Namespace) -> int:
    """Prune by a plan file or by a budget (--unit-sparsity or --param-sparsity) + importance, then
    save an artifact directory; ``--out`` is locked and must be empty or an earlier ``prune``'s
    output (else ``--overwrite``). Python: ``edgeadapt.pruning.prune.prune(...)`` /
    ``apply_plan(...)`` + ``save_pruned(...)``, inside ``edgeadapt.rundir.claim_output(out, ...)``."""
    from edgeadapt.rundir import claim_output

    check_output_dir(args.out, "--out")  # a file or unwritable path: refused before the claim creates it
    config = {k: v for k, v in vars(args).items() if k not in ("func", "overwrite")}
    with claim_output(args.out, "prune", config, overwrite=args.overwrite, resumable=False, field="--out"):
        return _prune(args)


def _prune(args: argparse.Namespace) -> int:
    from edgeadapt.data.calibration import calibration_batches
    from edgeadapt.memory.accounting import parse_bytes
    from edgeadapt.models.cnn import CNNAdapter
    from edgeadapt.models.inspect import inspect_model
    from edgeadapt.pruning.apply import apply_plan
    from edgeadapt.pruning.budget import BUDGETS, check_budget
    from edgeadapt.pruning.checkpoint import load_model
    from edgeadapt.pruning.importance import IMPORTANCES, check_importance
    from edgeadapt.pruning.memory import check_scoring_memory, tokens_per_sample
    from edgeadapt.pruning.plan import PruningPlan
    from edgeadapt.pruning.prune import prune

    if args.sparsity is not None:
        raise ConfigError(f"--sparsity was split in two budgets: use --unit-sparsity S "
                          f"({BUDGETS['unit_sparsity']}; what prune's --sparsity meant) or "
                          f"--param-sparsity S ({BUDGETS['param_sparsity']})")
    budgets = (args.unit_sparsity, args.param_sparsity)
    if (args.plan is None) == all(b is None for b in budgets):
        raise ConfigError("give exactly one of --plan PLAN.json, --unit-sparsity S or --param-sparsity S")
    targets = args.target
    if args.plan is None:
        check_budget(*budgets, names=("--unit-sparsity", "--param-sparsity"))
    check_importance(args.importance, "--importance")
    adapter = load_model(args.model)
    before = inspect_model(adapter)
    blocks = len(before.blocks)
    for flag, n in (("--protect-first", args.protect_first), ("--protect-last", args.protect_last)):
        if n >= blocks:
            raise ConfigError(f"{flag}: {n} protects every one of the model's {blocks} blocks, so nothing "
                              f"would be pruned; give 0 to {blocks - 1}")
    if args.protect_first + args.protect_last >= blocks and args.plan is None:
        raise ConfigError(f"--protect-first {args.protect_first} + --protect-last {args.protect_last} cover "
                          f"all {blocks} blocks, so nothing would be pruned; lower them")
    if isinstance(adapter, CNNAdapter):
        if args.max_memory is not None:
            raise ConfigError("--max-memory predicts transformer scoring only; drop it for a CNN")
        return _prune_channels(args, adapter, before)
    if args.plan is not None:
        apply_plan(adapter, PruningPlan.load(args.plan))
    else:
        batches = None
        if IMPORTANCES[args.importance].needs_batches:
            batches = calibration_batches(adapter, args.calibration_batches, args.batch_size, seed=args.seed)
        if args.max_memory is not None:  # refuse before scoring, naming the largest calibration that fits
            check_scoring_memory(adapter, args.importance, args.batch_size,
                                 tokens_per_sample(adapter, batches[0]) if batches else 1,
                                 args.calibration_batches, parse_bytes(args.max_memory),
                                 {"num_batches": "--calibration-batches", "batch_size": "--batch-size"})
        prune(adapter, targets, args.importance, batches, unit_sparsity=args.unit_sparsity,
              param_sparsity=args.param_sparsity, scope=args.scope, protect_first=args.protect_first,
              protect_last=args.protect_last, seed=args.seed, progress=bar_enabled(), device=args.device)
        adapter.model.cpu()
    return _save_and_report(args, adapter, before)


def _prune_channels(args: argparse.Namespace, adapter: Any, before: Any) -> int:
    """``prune`` of a CNN: its channel groups through torch-pruning's dependency graph. Python:
    ``edgeadapt.pruning.channels.prune_channels(...)`` / ``apply_channel_plan(...)`` +
    ``save_pruned(...)``."""
    from edgeadapt.data.calibration import calibration_batches
    from edgeadapt.pruning.channel_plan import ChannelPlan
    from edgeadapt.pruning.channels import NEEDS_BATCHES, apply_channel_plan, prune_channels

    if args.target != ["neurons"]:
        raise ConfigError(f"{args.model} is a CNN ({adapter.family}): it is pruned by channels "
                          "(--unit-sparsity S: the fraction of every channel group; --param-sparsity S: "
                          "of the stages' parameters; or --plan); --target heads/neurons/layers is for "
                          "transformers")
    if args.plan is not None:
        apply_channel_plan(adapter, ChannelPlan.load(args.plan))
    else:
        batches = None
        if args.importance in NEEDS_BATCHES:
            batches = calibration_batches(adapter, args.calibration_batches, args.batch_size, seed=args.seed)
        prune_channels(adapter, args.importance, batches, unit_sparsity=args.unit_sparsity,
                       param_sparsity=args.param_sparsity, protect_first=args.protect_first,
                       protect_last=args.protect_last, seed=args.seed, device=args.device)
        adapter.model.cpu()
    return _save_and_report(args, adapter, before)


def cmd_export(args: argparse.Namespace) -> int:
    """Write a model (an edgeadapt artifact) as a plain Hugging Face checkpoint; --out is checked and
    locked before the model is loaded. Python: ``edgeadapt.export.export_hf(ARTIFACT, OUT)``."""
    from edgeadapt.export import export_hf

    result = export_hf(args.artifact, args.out, overwrite=args.overwrite, verify=not args.no_verify,
                       field="--out")
    print(f"exported {args.artifact}: {result.summary()}")
    return 0


def add_prune_parsers(sub: Any) -> None:
    """``prune`` and ``export`` under the top-level subparsers ``sub``."""
    from edgeadapt.pruning.importance import DEFAULT_IMPORTANCE, IMPORTANCES
    from edgeadapt.pruning.select import DEFAULT_SCOPE, SCOPES

    s = sub.add_parser("prune", help="structured pruning of heads / FFN neurons / layers (CNNs: channels)")
    s.add_argument("model", help="as for inspect")
    s.add_argument("--plan", type=Path, help="a PruningPlan JSON to apply")
    s.add_argument("--unit-sparsity", type=finite_float, metavar="S",
                   help="budget: the fraction of the units of each --target kind removed, in [0, 1)")
    s.add_argument("--param-sparsity", type=finite_float, metavar="S",
                   help="budget: the fraction of the block parameters removed, in [0, 1) (one unit "
                   "fraction for every --target kind, by bisection)")
    s.add_argument("--sparsity", type=float, help=argparse.SUPPRESS)  # retired: refused with the new names
    s.add_argument("--target", type=target_list, default=["neurons"],
                   help="comma list of heads,neurons,layers (default neurons)")
    s.add_argument("--importance", default=DEFAULT_IMPORTANCE, metavar="NAME",
                   help="how groups are scored (default %(default)s): " + "; ".join(
                       f"{k}: {v.description}" for k, v in IMPORTANCES.items()))
    s.add_argument("--scope", default=DEFAULT_SCOPE, choices=SCOPES,
                   help="uniform: the same fraction in every block (default, as in llm-prune); global: "
                   "rank a kind's units across blocks")
    s.add_argument("--protect-first", type=nonnegative_int, default=0,
                   help="leave the first N blocks untouched")
    s.add_argument("--protect-last", type=nonnegative_int, default=0,
                   help="leave the last N blocks untouched")
    s.add_argument("--calibration-batches", type=positive_int, default=8)
    s.add_argument("--batch-size", type=positive_int, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", type=nonempty_str, default="auto",
                   help="where importance is computed: auto (CUDA if present), cpu, cuda[:N]")
    s.add_argument("--max-memory", type=size_text, default=None, metavar="SIZE",
                   help="e.g. 8GiB: refuse before scoring when the predicted tensor peak (weights, one "
                   "block's gradients and activations, cached block inputs; not the runtime) exceeds it, "
                   "naming the largest --calibration-batches/--batch-size that fits")
    s.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(func=cmd_prune)

    s = sub.add_parser("export", help="write a pruned model as a plain Hugging Face checkpoint")
    s.add_argument("artifact", help="an edgeadapt model artifact (prune, llm-prune, train output), or as "
                   "for inspect")
    s.add_argument("--format", choices=("hf",), default="hf",
                   help="hf: config.json + model.safetensors that transformers' Auto classes load "
                   "(layers must share their widths)")
    s.add_argument("--out", type=Path, required=True, help="directory to write (missing or empty)")
    s.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    s.add_argument("--no-verify", action="store_true",
                   help="skip reloading the export with transformers and comparing outputs")
    s.set_defaults(func=cmd_export)


def _save_and_report(args: argparse.Namespace, adapter: Any, before: Any) -> int:
    """Save the pruned ``adapter`` to ``--out`` (plan + weights + the command's arguments) and print
    its plan and the parameters and FLOPs before → after (``before``: its ``inspect_model`` report
    taken before pruning). Returns the exit status 0."""
    from edgeadapt.models.inspect import inspect_model
    from edgeadapt.pruning.checkpoint import save_pruned

    after = inspect_model(adapter)
    save_pruned(adapter, args.out, config={k: v for k, v in vars(args).items() if k != "func"})
    print(adapter.plan.summary())
    print(f"params {before.total_params:,} -> {after.total_params:,} "
          f"({after.total_params / before.total_params:.1%}); FLOPs/{after.unit} "
          f"{before.total_flops:,} -> {after.total_flops:,} ({after.total_flops / before.total_flops:.1%})")
    print(f"saved to {args.out}")
    return 0
