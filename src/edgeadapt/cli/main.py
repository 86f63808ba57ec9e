"""``edgeadapt``: each command parses its arguments, calls one library function and prints.

Every command has a Python equivalent named in its help text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeadapt.cli.args import (
    Parser,
    comma_list,
    finite_float,
    nonempty_str,
    nonnegative_int,
    positive_int,
    target_list,
    unit_interval,
)
from edgeadapt.cli.data import cmd_data_list, cmd_data_show
from edgeadapt.cli.memory import cmd_memory_estimate, cmd_memory_plan
from edgeadapt.cli.offload import add_offload_parser
from edgeadapt.errors import ConfigError, EdgeAdaptError
from edgeadapt.outputs import check_output_dir
from edgeadapt.progress import QUIET_ENV, bar_enabled


def cmd_inspect(args: argparse.Namespace) -> int:
    """Per-block table of heads, KV heads, FFN width, parameters and FLOPs.
    Python: ``edgeadapt.models.inspect.inspect_model(load_adapter(MODEL))``."""
    from edgeadapt.models.inspect import (
        check_context,
        format_inspection,
        inspect_model,
        model_limits,
    )
    from edgeadapt.offline.describe import describe_offline, format_offline
    from edgeadapt.pruning.checkpoint import load_model

    offline = describe_offline(args.model)  # a knowledge base is no model: say what it is and what reads it
    if offline is not None:
        print(json.dumps(offline, indent=1) if args.json else format_offline(offline))
        return 0
    if args.context is not None:
        check_context(args.context, model_limits(args.model).positions, "--context")
    adapter = load_model(args.model)  # a config that does not describe its weights: ArtifactError
    info = inspect_model(adapter, context=args.context)
    print(json.dumps(info.to_dict(), indent=1) if args.json else format_inspection(info))
    return 0


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
    from edgeadapt.pruning.checkpoint import load_model, save_pruned
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
    after = inspect_model(adapter)
    save_pruned(adapter, args.out, config={k: v for k, v in vars(args).items() if k != "func"})
    print(adapter.plan.summary())
    print(f"params {before.total_params:,} -> {after.total_params:,} "
          f"({after.total_params / before.total_params:.1%}); FLOPs/{after.unit} "
          f"{before.total_flops:,} -> {after.total_flops:,} ({after.total_flops / before.total_flops:.1%})")
    print(f"saved to {args.out}")
    return 0


def _prune_channels(args: argparse.Namespace, adapter: Any, before: Any) -> int:
    """``prune`` of a CNN: its channel groups through torch-pruning's dependency graph. Python:
    ``edgeadapt.pruning.channels.prune_channels(...)`` / ``apply_channel_plan(...)`` +
    ``save_pruned(...)``."""
    from edgeadapt.data.calibration import calibration_batches
    from edgeadapt.models.inspect import inspect_model
    from edgeadapt.pruning.channel_plan import ChannelPlan
    from edgeadapt.pruning.channels import NEEDS_BATCHES, apply_channel_plan, prune_channels
    from edgeadapt.pruning.checkpoint import save_pruned

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
    after = inspect_model(adapter)
    save_pruned(adapter, args.out, config={k: v for k, v in vars(args).items() if k != "func"})
    print(adapter.plan.summary())
    print(f"params {before.total_params:,} -> {after.total_params:,} "
          f"({after.total_params / before.total_params:.1%}); FLOPs/image "
          f"{before.total_flops:,} -> {after.total_flops:,} ({after.total_flops / before.total_flops:.1%})")
    print(f"saved to {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a model (an edgeadapt artifact) as a plain Hugging Face checkpoint; --out is checked and
    locked before the model is loaded. Python: ``edgeadapt.export.export_hf(ARTIFACT, OUT)``."""
    from edgeadapt.export import export_hf

    result = export_hf(args.artifact, args.out, overwrite=args.overwrite, verify=not args.no_verify,
                       field="--out")
    print(f"exported {args.artifact}: {result.summary()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the tiny ViT on digits, inspect it, prune it at several sparsities and report.
    Python: ``edgeadapt.recipes.demo.run_demo(out)``."""
    from edgeadapt.recipes.demo import run_demo

    run_demo(check_output_dir(args.out, "--out"), retrain=args.retrain)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model on a registered dataset from a YAML recipe; writes an artifact directory.
    Python: ``edgeadapt.recipes.train.run_training(load_config(CONFIG))``."""
    from edgeadapt.config import load_config
    from edgeadapt.recipes.train import run_training

    recipe = load_config(args.config, kind="train")
    if args.out is not None:
        recipe = recipe.model_copy(update={"out": args.out})
    check_output_dir(recipe.out, "--out" if args.out is not None else f"{args.config}: out")
    outcome = run_training(recipe, overwrite=args.overwrite)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in outcome.test.items())
    print(f"trained {recipe.model} on {recipe.data.name} ({len(outcome.history)} epochs, stopped: "
          f"{outcome.stop_reason}); test {metrics}")
    print(f"saved to {outcome.out}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Check YAML configs without running anything; one verdict per file. An input that another
    config in the same folder (or on the command line) writes is noted "not built yet", not refused.
    Python: ``edgeadapt.config.validate_config(CONFIG, planned_outputs(FILES))``."""
    from edgeadapt.config import planned_outputs, validate_config

    folders = {p.parent for p in args.configs if p.is_file()}
    siblings = sorted({*args.configs, *(f for d in folders for f in d.glob("*.yaml"))})
    planned = planned_outputs(siblings)
    invalid = 0
    for path in args.configs:
        try:
            cfg, notes = validate_config(path, planned)
        except EdgeAdaptError as exc:
            invalid += 1
            print(f"edgeadapt validate: error: {exc}", file=sys.stderr)
            continue
        print(f"{path}: valid {getattr(cfg, 'kind', 'config')} config" + "".join(f"; {n}" for n in notes))
    return 2 if invalid else 0


def cmd_offline(args: argparse.Namespace) -> int:
    """Cloud stage: LoRA-tune the FM, build the elastic knowledge base, write the neuron index.
    Python: ``edgeadapt.offline.pipeline.run_offline(load_config(CONFIG), steps)``."""
    from edgeadapt.config import load_config
    from edgeadapt.offline.pipeline import STEPS, run_offline, step_dir

    cfg = load_config(args.config, kind="offline")
    steps = list(STEPS) if args.step == "all" else [args.step]
    reports = run_offline(cfg, steps, overwrite=args.overwrite)
    for step, report in reports.items():
        print(f"== {step} -> {step_dir(cfg, step)}")
        if step == "lora":
            print(f"   test before {_fmt(report['test_before'])}; after {_fmt(report['test_after'])}")
        elif step == "kb":
            print(f"   FM {_fmt(report['fm'])}")
            for width, metrics in report["widths"].items():
                print(f"   width {float(width):.0%}: {_fmt(metrics)}")
        else:
            print(f"   round trip FM -> KB -> FM max diff {report['round_trip_max_diff']}; "
                  f"{report['tensors_changed_by_kb_training']}/{report['tensors']} tensors moved by KB training")
    return 0


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def cmd_adapt(args: argparse.Namespace) -> int:
    """Edge stage: every method over a drift stream (extract, retrain, sync), with a report; ``--out``
    is locked and must be empty or an earlier ``adapt`` of the same config (else ``--overwrite``).
    Python: ``edgeadapt.online.pipeline.run_adapt(AdaptConfig(...), overwrite=...)``."""
    from edgeadapt.config import load_config, parse_config
    from edgeadapt.online.pipeline import run_adapt
    from edgeadapt.online.report import domain_table, summary_table

    data = load_config(args.config, kind="adapt").model_dump() if args.config else {}
    overrides = {"stream": args.stream, "out": args.out, "width": args.width, "offline": args.offline,
                 "proxy_params": args.proxy_params, "proxy_memory_bytes": args.proxy_memory,
                 "methods": args.methods, "memory_budget": args.memory_budget}
    if args.width is not None:  # an explicit width on the command line wins over a budget in the file
        data.update(proxy_params=None, proxy_memory_bytes=None)
    data.update({k: v for k, v in overrides.items() if v is not None})
    if args.steps is not None:
        data.setdefault("budget", {})
        data["budget"] = {**dict(data["budget"]), "steps": args.steps}
    cfg = parse_config(data, kind="adapt", source=str(args.config or "the adapt command line"))
    check_output_dir(cfg.out, "--out" if args.out is not None else "out")
    results = run_adapt(cfg, progress=bar_enabled(), overwrite=args.overwrite)
    print(summary_table(results))
    print()
    print(domain_table(results))
    print(f"\nreport: {cfg.out / 'report.md'} (and report.html, results.json, per_domain.csv, plots)")
    return 0


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


_OVERWRITE = ("replace the output directory when it holds something else (another command's output, "
              "or a run of another config, which is otherwise refused); what was there is removed only "
              "once the run succeeds")


def build_parser() -> argparse.ArgumentParser:
    from edgeadapt import __version__
    from edgeadapt.pruning.importance import DEFAULT_IMPORTANCE, IMPORTANCES
    from edgeadapt.pruning.select import DEFAULT_SCOPE, SCOPES

    p = Parser(prog="edgeadapt", description="Keep foundation models accurate on edge "
                                "devices under drift: adapt, compress, fit in memory, offload.")
    p.add_argument("--version", action="version", version=f"edgeadapt {__version__}")
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of a user error too (bugs always show theirs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines (results "
                   "are still printed); may be given after the command too. Without a terminal, progress "
                   "is one line per epoch instead of a live bar; TQDM_DISABLE=1 also turns bars off")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="per-block structure, parameters and FLOPs of a model")
    s.add_argument("model", help="built-in name (tiny-vit, tiny-bert, tiny-gpt2, tiny-opt, tiny-llama, "
                   "minilm; CNNs tiny-resnet, tiny-regnet, tiny-mobilenetv2, tiny-mobilevit), a local HF "
                   "model directory, or a pruned-model artifact directory")
    s.add_argument("--context", type=positive_int, default=None,
                   help="context length for text FLOPs per token")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=cmd_inspect)

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
    s.add_argument("--max-memory", type=nonempty_str, default=None, metavar="SIZE",
                   help="e.g. 8GiB: refuse before scoring when the predicted tensor peak (weights, one "
                   "block's gradients and activations, cached block inputs; not the runtime) exceeds it, "
                   "naming the largest --calibration-batches/--batch-size that fits")
    s.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    s.add_argument("--overwrite", action="store_true", help=_OVERWRITE)
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

    s = sub.add_parser("train", help="train a model on a registered dataset from a YAML recipe")
    s.add_argument("--config", type=Path, required=True, help="a train recipe, e.g. configs/train-vit-digits.yaml")
    s.add_argument("--out", type=Path, default=None, help="override the recipe's artifact directory")
    s.add_argument("--overwrite", action="store_true", help=_OVERWRITE)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("validate", help="check YAML configs without running them")
    s.add_argument("configs", type=Path, nargs="+")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("offline", help="cloud stage: LoRA tuning, knowledge base, neuron index")
    s.add_argument("step", choices=("lora", "kb", "index", "all"), help="one step, or all three in order")
    s.add_argument("--config", type=Path, required=True, help="an offline config, e.g. configs/offline-vit-digits.yaml")
    s.add_argument("--overwrite", action="store_true", help=_OVERWRITE + " (each step's directory)")
    s.set_defaults(func=cmd_offline)

    s = sub.add_parser("adapt", help="edge stage: adapt over a drift stream, all methods, with a report")
    s.add_argument("--config", type=Path, default=None, help="an adapt config (configs/adapt-vit-digits.yaml)")
    s.add_argument("--stream", type=nonempty_str, default=None,
                   help="'gaussian_noise:5,fog:3,...' (digits-c) or a YAML file of domains "
                   "({dataset, options} or that shorthand); default stream")
    s.add_argument("--methods", type=comma_list, default=None,
                   help="comma list of source,tent,full,static,edgeadapt")
    s.add_argument("--offline", type=Path, default=None, help="output of `edgeadapt offline all` (default runs/offline-vit)")
    s.add_argument("--width", type=unit_interval(), default=None, help="proxy width in (0, 1]")
    s.add_argument("--proxy-params", type=positive_int, default=None,
                   help="budget as a parameter count: the widest proxy that fits (overrides --width)")
    s.add_argument("--proxy-memory", type=nonempty_str, default=None,
                   help="budget as retraining memory, e.g. 12MiB: the widest proxy whose step fits")
    s.add_argument("--memory-budget", type=nonempty_str, default=None,
                   help="peak retraining memory of the edge methods, e.g. 8MiB: a memory plan (frozen "
                   "blocks, checkpoint segments) is chosen for it instead of fixed checkpointing")
    s.add_argument("--steps", type=positive_int, default=None, help="retraining steps per domain")
    s.add_argument("--out", type=Path, default=None, help="report directory (default runs/adapt)")
    s.add_argument("--overwrite", action="store_true", help=_OVERWRITE)
    s.set_defaults(func=cmd_adapt)

    s = sub.add_parser("llm-prune", help="LLM block pruning with recovery training and perplexity evaluation")
    s.add_argument("--config", type=Path, required=True,
                   help="an llm-prune config (configs/llm-prune-docs.yaml)")
    s.add_argument("--mode", choices=("train", "test"), default="train",
                   help="train: prune + recover + save; test: evaluate the saved model and write a report")
    s.add_argument("--overwrite", action="store_true", help=_OVERWRITE + " (save:, in train mode)")
    s.add_argument("--max-memory", type=nonempty_str, default=None, metavar="SIZE",
                   help="e.g. 24GiB: refuse before scoring when the predicted scoring peak exceeds it, "
                   "naming the largest pruning.calibration_batches / batch_size / seq_len that fits")
    s.set_defaults(func=cmd_llm_prune)

    s = sub.add_parser("llm-pretrain", help="train the reference LM (tiny-llama-ref) on the built-in corpus")
    s.add_argument("--out", type=Path, default=Path("runs/ref-llama"), help="artifact directory (cached)")
    s.add_argument("--epochs", type=positive_int, default=None,
                   help="override the recipe's 20 epochs (early stopping ends it sooner)")
    s.add_argument("--force", action="store_true", help="retrain even if a valid cached model exists")
    s.set_defaults(func=cmd_llm_pretrain)

    s = sub.add_parser("data", help="datasets and drift streams")
    dsub = s.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("list", help="registered datasets and corruptions")
    d.set_defaults(func=cmd_data_list)
    d = dsub.add_parser("show", help="summary of a dataset or a drift stream ('stream')")
    d.add_argument("name", help="a dataset name (digits, digits-c, builtin-docs, ...) or 'stream'")
    d.add_argument("--root", type=Path, default=None, help="local data for datasets that read files")
    d.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. size=32 or corruption=fog (repeatable)")
    d.add_argument("--stream", type=nonempty_str, default=None,
                   help="'gaussian_noise:5,fog:3' or a YAML list; default stream "
                   "when NAME is 'stream'")
    d.add_argument("--grid", type=Path, default=None, help="write a PNG of a digit under every corruption "
                   "and severity (or the stream's corruptions)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_data_show)

    add_offload_parser(sub)

    s = sub.add_parser("memory", help="fit retraining into a memory budget: choose or predict a plan")
    msub = s.add_subparsers(dest="memory_command", required=True)
    for name, func, what in (
            ("plan", cmd_memory_plan, "choose micro-batching, freezing and checkpointing under --budget "
             "(predicted, measured, probed for accuracy gain per second)"),
            ("estimate", cmd_memory_estimate, "predict one plan's peak memory and step time")):
        m = msub.add_parser(name, help=what)
        m.add_argument("model", help="as for inspect")
        if name == "plan":
            m.add_argument("--budget", type=nonempty_str, required=True,
                           help="retraining memory, e.g. 512MiB")
            m.add_argument("--probe-steps", type=positive_int, default=2,
                           help="steps of each plan in the first successive-halving round (default 2)")
            m.add_argument("--max-probes", type=positive_int, default=8, help="Pareto plans probed at most")
            m.add_argument("--probe-batches", type=positive_int, default=4, help="batches the probes cycle")
            m.add_argument("--eval-batches", type=positive_int, default=4, help="held-out batches scored")
            m.add_argument("--lr", type=finite_float, default=1e-3, help="probe learning rate")
            m.add_argument("--save", type=Path, default=None, help="write the chosen plan (kind memory-plan)")
            m.add_argument("--all", action="store_true", help="list over-budget and dominated plans too")
        else:
            m.add_argument("--plan", type=Path, required=True, help="a MemoryPlan JSON/YAML file")
            m.add_argument("--measure", action="store_true", help="also run the plan and measure it")
        m.add_argument("--data", type=nonempty_str, default=None,
                       help="registered dataset of the current data (default: built-in digits or text)")
        m.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="dataset option")
        m.add_argument("--batch-size", type=positive_int, default=8, help="effective batch per step")
        m.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam")
        m.add_argument("--seed", type=int, default=0)
        m.add_argument("--json", action="store_true", help="print JSON instead of a table")
        m.set_defaults(func=func)

    s = sub.add_parser("demo", help="the end-to-end demo on built-in data")
    s.add_argument("--out", type=Path, default=Path("runs/demo"))
    s.add_argument("--retrain", action="store_true", help="ignore the cached source model")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point. edgeadapt's own user errors (:class:`~edgeadapt.errors.EdgeAdaptError`) print
    one paragraph and exit with status 2; any other exception is a bug and keeps its traceback.

    The CLI never downloads: it sets ``HF_HUB_OFFLINE=1`` for this process unless the caller
    set it, so models and data must be local (the library itself leaves the environment alone).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--quiet" in argv:  # a global flag, accepted anywhere: `edgeadapt train --quiet ...`
        argv = ["--quiet", *(a for a in argv if a != "--quiet")]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a bad flag: its one-line message is printed; --help/--version exit 0
        if not exc.code:
            raise
        return exc.code if isinstance(exc.code, int) else 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.quiet:
        os.environ[QUIET_ENV] = "1"
    if not bar_enabled():  # transformers' own "Loading weights" bar follows edgeadapt's rule too
        import transformers

        transformers.utils.logging.disable_progress_bar()
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        with warnings.catch_warnings():
            if not args.debug:  # edgeadapt's own warnings as one line, like its errors
                warnings.showwarning = _one_line_warning(args.command)
            code = handler(args)
            sys.stdout.flush()  # a closed pipe shows here, inside the try, not at interpreter exit
            return code
    except EdgeAdaptError as exc:
        if args.debug:
            raise
        print(f"edgeadapt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `edgeadapt ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _one_line_warning(command: str) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints edgeadapt's own warnings as ``edgeadapt CMD: warning:
    MESSAGE`` (no file, line or source line) and leaves other libraries' in Python's format."""
    default = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if f"{os.sep}edgeadapt{os.sep}" in filename:
            print(f"edgeadapt {command}: warning: {message}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show

if __name__ == "__main__":
    sys.exit(main())
