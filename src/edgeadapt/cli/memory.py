"""``edgeadapt memory``: fit retraining into a memory budget (plan) and predict one plan (estimate)."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

from edgeadapt.cli.args import finite_float, nonempty_str, positive_int, positive_int_list, size_text
from edgeadapt.cli.data import _options
from edgeadapt.errors import ConfigError, OutputExistsError

DEFAULT_BATCH_SIZE = 8
"""`memory plan`'s effective batch per step when --batch-size is not given."""


def memory_batches(adapter: Any, model: str, data: str | None, options: dict[str, Any], batch_size: int,
                   num_batches: int, eval_batches: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(training batches, held-out batches) of the current data for ``adapter``: the built-in
    calibration data of its modality (digits, documentation text) without ``data``, else the
    registered dataset ``data`` (train split shuffled by ``seed``; its validation split held out)."""
    from edgeadapt.data.calibration import calibration_batches

    if data is None:
        train = calibration_batches(adapter, num_batches, batch_size, seed=seed)
        held = calibration_batches(adapter, eval_batches, batch_size, seed=seed, split="test")
        return train, held
    from edgeadapt.data.registry import build_dataset, dataset_info, options_at_size
    from edgeadapt.training.batches import batch_factory

    info = dataset_info(data)
    image = info.task == "image-classification"
    if image != (adapter.modality == "image"):
        raise ConfigError(f"--data {data}: a {info.task} dataset, but {model} is a "
                          f"{adapter.modality} model; give a dataset of its modality")
    size = adapter.model.config.image_size if image else None
    splits = build_dataset(data, **options_at_size(data, options, size, "--option size"))

    def take(split: Any, n: int, shuffle: bool) -> list[dict]:
        out = []
        for b in batch_factory(adapter, split, batch_size, shuffle=shuffle, seed=seed)(0):
            if len(out) == n:
                break
            if next(iter(b.values())).shape[0] == batch_size:  # whole batches only
                out.append(b)
        if not out:
            raise ConfigError(f"--data {data}: no full batch of {batch_size}; lower --batch-size")
        return out
    return take(splits.train, num_batches, True), take(splits.val, eval_batches, False)


def precision_note(dtype: str | None, trained: str | None) -> str | None:
    """The line saying that ``dtype`` weights (a plan file's ``model.dtype``) train at ``trained``
    (float32 master weights for bf16/fp16, as ``train`` and ``adapt`` do), so the figures are for
    that; ``None`` when they are the same."""
    if dtype is None or trained is None or dtype == trained:
        return None
    return (f"{dtype} weights train on {trained} master weights (as train and adapt do): the memory "
            f"figures are for {trained} training")


def cmd_memory_plan(args: argparse.Namespace) -> int:
    """Choose micro-batching, freezing and checkpointing under ``--budget``: enumerate, predict,
    keep the Pareto set, probe by successive halving, print the table and the choice (or JSON).
    An existing ``--save`` file is refused before the model loads unless ``--overwrite``.
    Python: ``edgeadapt.memory.search.search(adapter, budget, batches, eval_batches)``."""
    from edgeadapt.memory.accounting import parse_bytes
    from edgeadapt.memory.plan_file import plan_model, save_plan
    from edgeadapt.memory.search import format_result, search
    from edgeadapt.outputs import check_output_file
    from edgeadapt.pruning.checkpoint import load_model

    budget = parse_bytes(args.budget)  # a bad size fails before the model loads
    if args.save is not None:
        check_output_file(args.save, "--save")
        if args.save.exists() and not args.overwrite:  # a plan chosen earlier is not lost silently
            raise OutputExistsError(f"--save: {str(args.save)!r} already exists; pass --overwrite to replace "
                                    "it, or choose another path")
    adapter = load_model(args.model)
    train, held = memory_batches(adapter, args.model, args.data, _options(args.option), args.batch_size,
                                 args.probe_batches, args.eval_batches, args.seed)
    result = search(adapter, budget, train, held, lr=args.lr, seed=args.seed, probe_steps=args.probe_steps,
                    max_probes=args.max_probes, optimizer=args.optimizer,
                    batch_sizes=args.batch_sizes or None)
    here = plan_model(adapter, args.model)
    if args.save is not None:
        save_plan(result.chosen.plan, args.save, here, result.chosen.batch_size or args.batch_size, budget)
    if args.json:
        print(json.dumps({**result.to_dict(), "dtype": here.dtype, "trained_dtype": here.trained_dtype},
                         indent=1))
    else:
        print(format_result(result, args.all))
        note = precision_note(here.dtype, here.trained_dtype)
        if note is not None:
            print(f"note: {note}")
    if args.save is not None and not args.json:
        print(f"saved to {args.save}")
    return 0


def cmd_memory_estimate(args: argparse.Namespace) -> int:
    """Predict one plan's peak memory and step time from two profiled steps (``--measure``: and
    run it). A micro-batch that does not divide ``--batch-size`` is accepted as ``train`` accepts it
    (micro-batches of ``ceil`` size, the last smaller; the peak is the largest one's); the plan is
    refused before the model loads when its micro-batch is larger than ``--batch-size``, and before
    profiling when it asks for more blocks than the model has. A prediction (or, with ``--measure``,
    a measurement) above the budget the plan file records is warned about on stderr. A bf16/fp16
    model is predicted as it trains, on float32 master weights.
    Python: ``edgeadapt.memory.estimator.estimate(adapter, load_plan(PLAN), batch)``."""
    from edgeadapt.memory.accounting import format_bytes
    from edgeadapt.memory.estimator import estimate, measure
    from edgeadapt.memory.plan_file import (
        check_micro_batch_size,
        check_plan_fits,
        load_plan_file,
        micro_batch_sizes,
        plan_model,
    )
    from edgeadapt.memory.search import describe_plan
    from edgeadapt.pruning.checkpoint import load_model

    plan_file = load_plan_file(args.plan)
    if args.batch_size is None:  # the batch the plan was chosen for, else 8
        args.batch_size = plan_file.batch_size or DEFAULT_BATCH_SIZE
    check_micro_batch_size(plan_file, args.batch_size, f"--plan {args.plan}: micro_batch_size",
                           "--batch-size")
    adapter = load_model(args.model)
    plan = check_plan_fits(plan_file, adapter, args.model, f"--plan {args.plan}")
    batch = memory_batches(adapter, args.model, args.data, _options(args.option), args.batch_size, 1, 1,
                           args.seed)[0][0]
    here = plan_model(adapter, args.model)
    est = estimate(adapter, plan, batch, args.optimizer)
    sizes = micro_batch_sizes(plan, args.batch_size)
    out: dict[str, Any] = {"plan": plan.model_dump(), "batch_size": args.batch_size, "micro_batches": sizes,
                           "dtype": here.dtype, "trained_dtype": here.trained_dtype,
                           "budget_bytes": plan_file.budget_bytes,
                           "predicted_bytes": est.predicted_bytes, "breakdown": est.breakdown,
                           "step_seconds": est.step_seconds, "measured_bytes": None,
                           "measured_step_seconds": None}
    if args.measure:
        real = measure(adapter, plan, batch, args.optimizer)
        out.update(measured_bytes=real.total_bytes, measured_step_seconds=real.step_seconds)
    budget = plan_file.budget_bytes
    over = {k: out[k] for k in ("predicted_bytes", "measured_bytes")
            if budget is not None and out[k] is not None and out[k] > budget}
    if over:  # the plan no longer fits what it was chosen for (another batch, data, optimizer or model)
        figures = " and ".join(f"{k.split('_')[0]} peak {format_bytes(v)}" for k, v in over.items())
        warnings.warn(f"--plan {args.plan}: {figures} exceeds the budget of {format_bytes(budget)} "
                      f"({budget:,} bytes) the plan was chosen for; plan again for this setting with "
                      f"`edgeadapt memory plan {args.model} --budget {budget} "
                      f"--batch-size {args.batch_size}`", stacklevel=1)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    within = "" if budget is None else f" (planned for a budget of {format_bytes(budget)})"
    print(f"{args.model}, batch {args.batch_size}, {describe_plan(plan)}: predicted peak "
          f"{format_bytes(est.predicted_bytes)}{within}, step {est.step_seconds:.4f} s")
    if len(set(sizes)) > 1:  # a micro-batch that does not divide the batch: say what the peak is of
        print(f"  micro-batches of {', '.join(map(str, sizes))} rows (losses weighted by their share); the "
              f"peak is the largest one's ({sizes[0]})")
    print("  " + ", ".join(f"{k} {format_bytes(v)}" for k, v in est.breakdown.items()))
    note = precision_note(here.dtype, here.trained_dtype)
    if note is not None:
        print(f"  {note}")
    if args.measure:
        print(f"  measured {format_bytes(out['measured_bytes'])} "
              f"({out['measured_bytes'] / est.predicted_bytes - 1:+.1%} vs predicted), "
              f"step {out['measured_step_seconds']:.4f} s")
    return 0


def add_memory_parser(sub: Any) -> None:
    """``memory plan|estimate`` under the top-level subparsers ``sub``."""
    s = sub.add_parser("memory", help="fit retraining into a memory budget: choose or predict a plan")
    msub = s.add_subparsers(dest="memory_command", required=True)
    for name, func, what in (
            ("plan", cmd_memory_plan, ("choose micro-batching, freezing and checkpointing under --budget "
                                       "(predicted, measured, probed for accuracy gain per second)")),
            ("estimate", cmd_memory_estimate, "predict one plan's peak memory and step time")):
        m = msub.add_parser(name, help=what)
        m.add_argument("model", help="as for inspect")
        if name == "plan":
            m.add_argument("--budget", type=size_text, required=True,
                           help="retraining memory, e.g. 512MiB")
            m.add_argument("--probe-steps", type=positive_int, default=2,
                           help="steps of each plan in the first successive-halving round (default 2)")
            m.add_argument("--max-probes", type=positive_int, default=8, help="Pareto plans probed at most")
            m.add_argument("--probe-batches", type=positive_int, default=4, help="batches the probes cycle")
            m.add_argument("--eval-batches", type=positive_int, default=4, help="held-out batches scored")
            m.add_argument("--lr", type=finite_float, default=1e-3, help="probe learning rate")
            m.add_argument("--save", type=Path, default=None, help="write the chosen plan (kind memory-plan)")
            m.add_argument("--overwrite", action="store_true", help="replace an existing --save file")
            m.add_argument("--batch-sizes", type=positive_int_list, default=(),
                           help="also offer smaller effective batches, e.g. 4,8 (each dividing --batch-size; "
                           "fewer rows per step: less memory, more steps per second, other gradients)")
            m.add_argument("--all", action="store_true", help="list over-budget and dominated plans too")
        else:
            m.add_argument("--plan", type=Path, required=True, help="a MemoryPlan JSON/YAML file")
            m.add_argument("--measure", action="store_true", help="also run the plan and measure it")
        m.add_argument("--data", type=nonempty_str, default=None,
                       help="registered dataset of the current data (default: built-in digits or text)")
        m.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="dataset option")
        estimating = func is cmd_memory_estimate
        m.add_argument("--batch-size", type=positive_int, default=None if estimating else DEFAULT_BATCH_SIZE,
                       help="effective batch per step (default: "
                       + ("the batch the plan file records, else 8)" if estimating else "8)"))
        m.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam")
        m.add_argument("--seed", type=int, default=0)
        m.add_argument("--json", action="store_true", help="print JSON instead of a table")
        m.set_defaults(func=func)
