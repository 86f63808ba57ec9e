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
    OVERWRITE_HELP,
    Parser,
    positive_int,
)
from edgeadapt.cli.data import add_data_parser
from edgeadapt.cli.flags import command_name, name_flags
from edgeadapt.cli.llm import add_llm_parsers
from edgeadapt.cli.memory import add_memory_parser
from edgeadapt.cli.offload import add_offload_parser
from edgeadapt.cli.prune import add_prune_parsers
from edgeadapt.cli.stages import add_stage_parsers
from edgeadapt.errors import EdgeAdaptError
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
    from edgeadapt.config import describe_config, planned_outputs, validate_config

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
        print(f"{path}: valid {describe_config(cfg)}" + "".join(f"; {n}" for n in notes))
    return 2 if invalid else 0


def build_parser() -> argparse.ArgumentParser:
    from edgeadapt import __version__

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

    add_prune_parsers(sub)  # prune, export

    s = sub.add_parser("train", help="train a model on a registered dataset from a YAML recipe")
    s.add_argument("--config", type=Path, required=True,
                   help="a train recipe, e.g. configs/train-vit-digits.yaml")
    s.add_argument("--out", type=Path, default=None, help="override the recipe's artifact directory")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("validate", help="check YAML configs without running them")
    s.add_argument("configs", type=Path, nargs="+")
    s.set_defaults(func=cmd_validate)

    add_stage_parsers(sub)  # offline, adapt
    add_llm_parsers(sub)  # llm-prune, llm-pretrain
    add_data_parser(sub)
    add_offload_parser(sub)
    add_memory_parser(sub)

    s = sub.add_parser("demo", help="the end-to-end demo on built-in data")
    s.add_argument("--out", type=Path, default=Path("runs/demo"))
    s.add_argument("--retrain", action="store_true", help="ignore the cached source model")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point. edgeadapt's own user errors (:class:`~edgeadapt.errors.EdgeAdaptError`) print
    one paragraph and exit with status 2; any other exception is a bug and keeps its traceback.
    A config field the command line set is named by its flag (:func:`~edgeadapt.cli.flags.name_flags`).

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
                warnings.showwarning = _one_line_warning(command_name(args))
            code = handler(args)
            sys.stdout.flush()  # a closed pipe shows here, inside the try, not at interpreter exit
            return code
    except EdgeAdaptError as exc:
        if args.debug:
            raise
        print(f"edgeadapt {command_name(args)}: error: {name_flags(str(exc), argv)}", file=sys.stderr)
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
