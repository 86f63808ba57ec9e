"""``edgeadapt offload``: build descendants and their profile (build), serve blocks (serve), run a
model split between this edge and a server (run).

Each command parses, calls one library function and prints:

- ``build MODEL --out DIR``: :func:`edgeadapt.offload.build.build_offload` (descendants distilled
  block by block, saved as an artifact, and profiled on the device profiles);
- ``serve --model M``: :func:`edgeadapt.offload.serve.serve` until SIGTERM/SIGINT;
- ``run --model M --server H:P``: :func:`edgeadapt.offload.run.run_offload`.

``serve`` and ``run`` take ``build``'s output directory (or its ``descendants/``) as ``--model``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgeadapt.cli.args import finite_float, nonempty_str, nonnegative_int, positive_int
from edgeadapt.errors import ConfigError, OutputExistsError


def width_list(text: str) -> tuple[float, ...]:
    """``--widths``: a comma list of fractions in (0, 1] that includes 1 (``1,0.75,0.5,0.25``)."""
    try:
        widths = tuple(float(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a comma list of numbers, got {text!r}") from None
    if not all(0 < w <= 1 for w in widths) or 1.0 not in widths or len(set(widths)) != len(widths):
        raise argparse.ArgumentTypeError(f"must be distinct fractions in (0, 1] including 1, got {text!r}")
    return widths


def cmd_offload_build(args: argparse.Namespace) -> int:
    """Make descendants of every block at ``--widths``, distill them block-wise on ``--data``, save
    them (``DIR/descendants``) and profile them on the devices (``DIR/profile.json``); train early-exit
    heads for ``--exit-epochs`` (default: ``--epochs``; 0: none), saved in the artifact, profiled in
    ``DIR/exits.json``.
    Python: ``edgeadapt.offload.build.build_exits(OffloadBuildConfig(MODEL, ...), DIR, devices)``."""
    from edgeadapt.offload.build import (
        DESCENDANTS_DIR,
        EXITS_FILE,
        PROFILE_FILE,
        OffloadBuildConfig,
        build_exits,
    )
    from edgeadapt.offload.profile import EMULATED_EDGE, LOCAL_CLOUD, DeviceProfile
    from edgeadapt.outputs import check_output_dir

    out = check_output_dir(args.out, "--out")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise OutputExistsError(f"--out: {str(out)!r} is not empty (it holds "
                                f"{', '.join(sorted(p.name for p in out.iterdir())[:5])}); choose an empty "
                                "or new directory, or pass --overwrite to replace its descendants, profile")
    devices = ([DeviceProfile.load(p) for p in args.device_profile] if args.device_profile
               else [EMULATED_EDGE, LOCAL_CLOUD])
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise ConfigError(f"--device-profile: device names must differ, got {names}")
    cfg = OffloadBuildConfig(args.model, data=args.data, widths=args.widths, epochs=args.epochs, lr=args.lr,
                             batch_size=args.batch_size, profile_batch_size=args.profile_batch_size,
                             warmup=args.warmup, repeats=args.repeats, checks=args.checks, seed=args.seed,
                             exit_epochs=args.epochs if args.exit_epochs is None else args.exit_epochs,
                             image_size=args.image_size)
    desc, profile, exits = build_exits(cfg, out, devices)
    summary: dict[str, Any] = {
        "out": str(out), "descendants": str(out / DESCENDANTS_DIR), "profile": str(out / PROFILE_FILE),
        "blocks": list(desc.names), "widths": list(desc.widths), "devices": names,
        "base_accuracy": profile.base_accuracy, "batch_size": profile.batch_size,
        "exits": str(out / EXITS_FILE) if exits else None, "exit_epochs": cfg.exit_epochs,
        "exit_accuracy": [ex.accuracy for ex in exits], "image_size": int(desc.base_config["image_size"])}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{args.model}: {len(desc.names)} blocks x widths {list(desc.widths)} distilled on {args.data} "
          f"({args.epochs} epochs) at {summary['image_size']}x{summary['image_size']} pixels"
          f"{size_note(args.model, args.image_size)}; base accuracy {profile.base_accuracy:.4f}")
    print(f"descendants: {summary['descendants']}\nprofile on {', '.join(names)} at batch "
          f"{profile.batch_size}: {summary['profile']}")
    if exits:
        accs = ", ".join(f"{ex.block}: {ex.accuracy:.4f}" for ex in exits)
        print(f"early exits after blocks {accs} (blocks from 0; val accuracy, {cfg.exit_epochs} epochs): "
              f"{summary['exits']}")
    else:
        print("no early exits (--exit-epochs 0)")
    print(f"serve it: edgeadapt offload serve --model {out} ...; run it: edgeadapt offload run --model {out} "
          "--floor F ...")
    return 0


def size_note(model: str, image_size: int | None) -> str:
    """``" (the default: ...)"`` when a local model's ``config.json`` names no ``image_size`` and none was
    given, so the image side printed is edgeadapt's CNN default, not the model's; else ``""``."""
    config = Path(model) / "config.json"
    if image_size is not None or not config.is_file():
        return ""
    try:
        named = "image_size" in json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return ""
    return "" if named else " (its config.json names no image_size: the default; --image-size N for another)"


def serving_line(model: str, chain: Any, host: str, port: int) -> str:
    """What ``serve`` prints once listening: the model, its blocks and exit heads (blocks numbered from
    0, as in ``--json`` and ``exits.json``), the address."""
    exits = f", exits after blocks 0..{len(chain.exits) - 1}" if chain.exits else ""
    return f"serving {model} ({len(chain)} blocks{exits}) on {host}:{port}"


def cmd_offload_serve(args: argparse.Namespace) -> int:
    """Serve blocks of a model to edge devices over gRPC until SIGTERM/SIGINT.
    Python: ``edgeadapt.offload.serve.serve(MODEL, read_token(F), ServeConfig(host=H, port=P))``."""
    from edgeadapt.offload.serve import ServeConfig, serve
    from edgeadapt.offload.transport import read_token

    token = read_token(args.token_file)
    cfg = ServeConfig(host=args.host, port=args.port, max_frame_bytes=args.max_frame_bytes)

    def ready(running: Any) -> None:
        print(serving_line(args.model, running.servicer.chain, args.host, running.port), flush=True)

    served = serve(args.model, token, cfg, ready=ready)
    print(f"stopped after {served} calls")
    return 0


def cmd_offload_run(args: argparse.Namespace) -> int:
    """Evaluate a model between this edge and a server: split after --split K at full width, or each
    block's width and device placed for --floor F (a descendants artifact), re-planned as the link moves.
    Python: ``edgeadapt.offload.run.run_offload(OffloadRunConfig(...))``."""
    from edgeadapt.offload.run import OffloadRunConfig, run_offload
    from edgeadapt.offload.transport import read_token

    cfg = OffloadRunConfig(model=args.model, server=args.server, token=read_token(args.token_file),
                           split=args.split, data=args.data, batch_size=args.batch_size, limit=args.limit,
                           duration_s=args.duration,
                           timeout_s=args.timeout, floor=args.floor,
                           profile=str(args.profile) if args.profile else None,
                           edge_device=args.edge_device, cloud_device=args.cloud_device,
                           replan_factor=args.replan_factor, replan_interval_s=args.replan_interval,
                           emulate_edge=args.emulate_edge, use_exits=not args.no_exits)
    report = run_offload(cfg)
    print(json.dumps(report.to_dict()) if args.json else report.summary())
    return 0


def add_offload_parser(sub: Any) -> None:
    """``offload build|serve|run`` under the top-level subparsers ``sub``."""
    s = sub.add_parser("offload", help="split inference between an edge and a server (gRPC)")
    osub = s.add_subparsers(dest="offload_command", required=True)
    o = osub.add_parser("build", help="descendants of every block at several widths (block-wise "
                        "distillation) and their profile per device: what `run --floor` places")
    o.add_argument("model", help="a trained CNN or ViT (name, HF directory or edgeadapt artifact)")
    o.add_argument("--out", type=Path, required=True,
                   help="output directory: descendants/ (the artifact) and profile.json; must be new or "
                   "empty unless --overwrite")
    o.add_argument("--overwrite", action="store_true",
                   help="build into a non-empty --out, replacing its descendants/ and profile.json")
    o.add_argument("--widths", type=width_list, default=(1.0, 0.75, 0.5, 0.25),
                   help="shares of each block's inner units kept, a comma list including 1 (default "
                   "1,0.75,0.5,0.25)")
    o.add_argument("--data", type=nonempty_str, default="digits",
                   help="image dataset: train split distills, val split measures accuracy drops")
    o.add_argument("--epochs", type=positive_int, default=10, help="distillation epochs (default 10)")
    o.add_argument("--exit-epochs", type=nonnegative_int, default=None, metavar="N",
                   help="epochs training early-exit heads on the full-width chain, saved in the artifact and "
                   "profiled in exits.json, so `run --floor` may stop at one (default: --epochs; 0: none)")
    o.add_argument("--image-size", type=positive_int, default=None, metavar="N",
                   help="input side in pixels the model is distilled, profiled and served at (default: the "
                   "model config's image_size; a CNN config without one assumes 224: give the size it was "
                   "trained at); a ViT takes only its own")
    o.add_argument("--lr", type=finite_float, default=1e-3, help="distillation learning rate (Adam)")
    o.add_argument("--batch-size", type=positive_int, default=64, help="distillation batch size")
    o.add_argument("--profile-batch-size", type=positive_int, default=1,
                   help="request size latencies are measured at (1: latency-bound; e.g. 128: resource-bound)")
    o.add_argument("--warmup", type=nonnegative_int, default=3, help="untimed runs before timing")
    o.add_argument("--repeats", type=positive_int, default=10, help="timed runs (median)")
    o.add_argument("--checks", type=nonnegative_int, default=8,
                   help="random compositions measured against the additive accuracy model")
    o.add_argument("--device-profile", type=Path, action="append", default=[], metavar="F",
                   help="a device profile JSON (name, slowdown, threads, memory_bytes); repeat, edge first "
                   "(default: the emulated edge and this machine)")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--json", action="store_true", help="print one JSON object")
    o.set_defaults(func=cmd_offload_build)

    o = osub.add_parser("serve", help="serve blocks of a model to edge devices until SIGTERM/SIGINT")
    o.add_argument("--model", required=True, help="as for inspect (CNNs and ViT), or a descendants artifact "
                   "(`offload build`'s output: every block at every width)")
    o.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    o.add_argument("--port", type=nonnegative_int, default=50051, help="TCP port (0: a free one, printed)")
    o.add_argument("--token-file", type=Path, required=True,
                   help="file holding the device token every call must carry (not world-readable)")
    o.add_argument("--max-frame-bytes", type=positive_int, default=64 * 1024 * 1024,
                   help="largest request accepted, in bytes")
    o.set_defaults(func=cmd_offload_serve)

    o = osub.add_parser("run", help="evaluate a model split between this edge and an offload server")
    o.add_argument("--model", required=True, help="the model the server serves (same weights): a name, a "
                   "HF directory, or a descendants artifact (`offload build`'s output; required by --floor)")
    o.add_argument("--server", type=nonempty_str, required=True, help="HOST:PORT of `offload serve`")
    o.add_argument("--token-file", type=Path, required=True, help="file holding the device token")
    where = o.add_mutually_exclusive_group(required=True)
    where.add_argument("--split", type=nonnegative_int,
                       help="K: blocks 0..K-1 (the first K; blocks count from 0 as in --json) run here, "
                       "the rest on the server, at full width (0: cloud-only; "
                       "the block count: edge-only)")
    where.add_argument("--floor", type=finite_float,
                       help="accuracy floor (fraction): place each block (width, device) by the integer "
                       "program on the descendants artifact's profile and the measured link; re-plan when "
                       "the link moves")
    o.add_argument("--profile", type=Path, default=None,
                   help="with --floor: the profile (default: profile.json beside the descendants artifact)")
    o.add_argument("--edge-device", default=None, help="with --floor: the profile's device this edge is "
                   "(default: its first)")
    o.add_argument("--cloud-device", default=None, help="with --floor: the profile's device the server is "
                   "(default: the first other one)")
    o.add_argument("--replan-factor", type=finite_float, default=1.5,
                   help="with --floor: re-solve when bandwidth or RTT moves by more than this factor")
    o.add_argument("--replan-interval", type=finite_float, default=0.5, metavar="SECONDS",
                   help="with --floor: least time between two placement changes (default 0.5)")
    o.add_argument("--emulate-edge", action="store_true",
                   help="with --floor: run the edge's blocks at its profile's threads and slowdown")
    o.add_argument("--no-exits", action="store_true",
                   help="with --floor: place the whole chain only, never stopping at an early exit of the "
                   "artifact (by default the plan may end at an exit when that is faster at the floor); "
                   "refused with --split, which never uses exits")
    o.add_argument("--data", type=nonempty_str, default="digits", help="image dataset (its test split)")
    o.add_argument("--batch-size", type=positive_int, default=None,
                   help="inputs per request (default: the profile's with --floor, else 32)")
    o.add_argument("--limit", type=positive_int, default=None, help="evaluate at most N test samples")
    o.add_argument("--duration", type=finite_float, default=None, metavar="SECONDS",
                   help="keep sending requests (cycling the test split) for this long instead of one pass")
    o.add_argument("--timeout", type=finite_float, default=10.0,
                   help="seconds per call; past it the server counts as unreachable (edge-only fallback, "
                   "retried with backoff)")
    o.add_argument("--json", action="store_true", help="print one JSON object")
    o.set_defaults(func=cmd_offload_run)
