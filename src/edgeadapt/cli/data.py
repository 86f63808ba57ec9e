"""``edgeadapt data``: the dataset registry and drift streams from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgeadapt.cli.args import nonempty_str
from edgeadapt.errors import ConfigError
from edgeadapt.outputs import check_output_file


def _options(pairs: list[str]) -> dict[str, object]:
    import yaml

    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {pair!r} must look like key=value, e.g. size=32")
        out[key] = yaml.safe_load(value)
    return out


def cmd_data_list(args: argparse.Namespace) -> int:
    """Registered datasets. Python: ``edgeadapt.data.registry.list_datasets()``."""
    from edgeadapt.data.corruptions import CORRUPTIONS
    from edgeadapt.data.registry import list_datasets

    for info in list_datasets():
        print(f"{info.name:<14} {info.task:<22} {info.description}")
    print(f"\ncorruptions (digits-c, severities 1-5): {', '.join(CORRUPTIONS)}")
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    """A dataset's splits and classes, or a drift stream's domains; optionally a PNG sample grid.
    Python: ``edgeadapt.data.summary.summarize_dataset(NAME)`` / ``summarize_stream(parse_stream(S))``
    (digits-c streams) / ``DriftStream.parse(S).describe(sizes=True)`` (streams of other datasets)."""
    from edgeadapt.data import summary
    from edgeadapt.data.stream import DriftStream

    options = _options(args.option)
    if args.grid is not None:
        check_output_file(args.grid, "--grid")
    if "size" in options:
        summary.check_image_size(options["size"], "--option size")
    if args.name == "stream" or args.stream is not None:
        stream = DriftStream.parse(args.stream)
        size = int(options.get("size", 16))
        corruptions = list(dict.fromkeys(d.corruption for d in stream if d.corruption is not None))
        if args.grid is not None and not corruptions:  # before any output
            raise ConfigError("--grid: the stream has no digits-c domains to preview; drop --grid")
        digits_c = all(d.corruption is not None for d in stream)
        if args.json:
            s = (summary.summarize_stream(list(stream), size=size) if digits_c
                 else {"domains": stream.to_list()})
            print(json.dumps(s, indent=1))
        elif digits_c:  # digits-c only: sizes and pixel shift
            print(summary.format_stream_summary(summary.summarize_stream(list(stream), size=size)))
        else:  # other datasets: each domain's dataset, options and split sizes
            print(stream.describe(sizes=True))
    else:
        s = summary.summarize_dataset(args.name, root=args.root, **options)
        print(json.dumps(s, indent=1) if args.json else summary.format_dataset_summary(s))
        corruptions = None
        size = int(options.get("size", 16))
    if args.grid is not None:
        from edgeadapt.data.digits import digits_tensors
        from edgeadapt.data.preview import corruption_grid

        # digits-c corrupts 32x32 digits with CIFAR-10-C's parameters, then resizes to `size`.
        images, _ = digits_tensors("test", size=32)
        print(f"wrote {corruption_grid(images[:1], args.grid, corruptions, size=size)}")
    return 0


def add_data_parser(sub: Any) -> None:
    """``data list|show`` under the top-level subparsers ``sub``."""
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
