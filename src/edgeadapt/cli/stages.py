"""``edgeadapt offline`` (the cloud stage: LoRA, knowledge base, neuron index) and ``edgeadapt
adapt`` (the edge stage over a drift stream), each from its YAML config.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeadapt.cli.args import (
    OVERWRITE_HELP,
    comma_list,
    nonempty_str,
    positive_int,
    size_text,
    unit_interval,
)
from edgeadapt.outputs import check_output_dir
from edgeadapt.progress import bar_enabled


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
                  f"{report['tensors_changed_by_kb_training']}/{report['tensors']} tensors moved by KB "
                  "training")
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
                 "methods": args.methods, "memory_budget": args.memory_budget,
                 "time_budget": args.time_budget}
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


def add_stage_parsers(sub: Any) -> None:
    """``offline`` and ``adapt`` under the top-level subparsers ``sub``."""
    s = sub.add_parser("offline", help="cloud stage: LoRA tuning, knowledge base, neuron index")
    s.add_argument("step", choices=("lora", "kb", "index", "all"), help="one step, or all three in order")
    s.add_argument("--config", type=Path, required=True,
                   help="an offline config, e.g. configs/offline-vit-digits.yaml")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP + " (each step's directory)")
    s.set_defaults(func=cmd_offline)

    s = sub.add_parser("adapt", help="edge stage: adapt over a drift stream, all methods, with a report")
    s.add_argument("--config", type=Path, default=None,
                   help="an adapt config (configs/adapt-vit-digits.yaml)")
    s.add_argument("--stream", type=nonempty_str, default=None,
                   help="'gaussian_noise:5,fog:3,...' (digits-c) or a YAML file of domains "
                   "({dataset, options} or that shorthand); default stream")
    s.add_argument("--methods", type=comma_list, default=None,
                   help="comma list of source,tent,full,static,edgeadapt")
    s.add_argument("--offline", type=Path, default=None,
                   help="output of `edgeadapt offline all` (default runs/offline-vit)")
    s.add_argument("--width", type=unit_interval(), default=None, help="proxy width in (0, 1]")
    s.add_argument("--proxy-params", type=positive_int, default=None,
                   help="budget as a parameter count: the widest proxy that fits (overrides --width)")
    s.add_argument("--proxy-memory", type=size_text, default=None,
                   help="budget as retraining memory, e.g. 12MiB: the widest proxy whose step fits")
    s.add_argument("--memory-budget", type=size_text, default=None,
                   help="peak retraining memory of the edge methods, e.g. 8MiB: a memory plan (frozen "
                   "blocks, checkpoint segments) is chosen for it instead of fixed checkpointing")
    s.add_argument("--time-budget", type=nonempty_str, default=None,
                   help="retraining time per domain of the edge methods: seconds (1.5, 1500ms) or a fraction "
                   "of the unconstrained retraining (0.5x); planned with --memory-budget (edge steps, "
                   "frozen blocks, distillation on or off)")
    s.add_argument("--steps", type=positive_int, default=None, help="retraining steps per domain")
    s.add_argument("--out", type=Path, default=None, help="report directory (default runs/adapt)")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(func=cmd_adapt)
