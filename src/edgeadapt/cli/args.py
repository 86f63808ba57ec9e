"""Argument types for the CLI: each checks range and finiteness and names the flag when it refuses.

argparse calls a flag's ``type=`` with the raw string; a :class:`argparse.ArgumentTypeError`
becomes ``edgeadapt CMD: error: argument --flag: WHY`` with exit code 2 — one message, the flag's
name, no traceback, before any model is loaded. Every command gets the same checks by using
these types.

>>> positive_int("8")
8
>>> finite_float("inf")
Traceback (most recent call last):
argparse.ArgumentTypeError: must be a finite number, got 'inf'
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

from edgeadapt.errors import ConfigError
from edgeadapt.pruning.groups import KINDS


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, counts, steps, context lengths)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_int_list(text: str) -> tuple[int, ...]:
    """A comma list of integers >= 1 (``4,8``: effective batch sizes)."""
    return tuple(positive_int(part.strip()) for part in text.split(",") if part.strip())


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (numbers of protected blocks)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def finite_float(text: str) -> float:
    """Any finite float (range checks that depend on other flags happen later, by name)."""
    return _float(text)


def unit_interval(low_open: bool = True) -> Callable[[str], float]:
    """A float in (0, 1] (``low_open``) or [0, 1]."""

    def parse(text: str) -> float:
        value = _float(text)
        if (value <= 0 if low_open else value < 0) or value > 1:
            raise argparse.ArgumentTypeError(f"must be in {'(0' if low_open else '[0'}, 1], got {value}")
        return value

    parse.__name__ = "fraction"
    return parse


def comma_list(text: str) -> list[str]:
    """A non-empty comma-separated list of non-empty names (``a,b,c``)."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise argparse.ArgumentTypeError(f"must be a comma list of names without empty items, got {text!r}")
    return items


def target_list(text: str) -> list[str]:
    """``--target``: a comma list of pruning kinds (heads, neurons, layers), refused by name before
    any model is loaded."""
    items = comma_list(text)
    unknown = [item for item in items if item not in KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(map(repr, unknown))} is not a pruning target; give a "
                                         f"comma list of {', '.join(KINDS)}")
    return list(dict.fromkeys(items))


def nonempty_str(text: str) -> str:
    """A string that is not empty or blank."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def size_text(text: str) -> str:
    """A memory size > 0 (``512MiB``, ``1.5GB``, ``4096`` bytes), refused by the flag's name before
    any model loads; returned as given, since the configs it feeds take the text too."""
    from edgeadapt.memory.accounting import parse_bytes  # imports torch: only when a size is given

    try:
        value = parse_bytes(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive size like '512MiB', got {text!r}")
    return text


OVERWRITE_HELP = ("replace the output directory when it holds something else (another command's output, "
                  "or a run of another config, which is otherwise refused); what was there is removed only "
                  "once the run succeeds")
"""The help of every command's ``--overwrite``."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one paragraph: ``PROG: error: WHY (see PROG --help)``,
    exit code 2, without the multi-line usage block argparse prints first. Subcommand parsers
    made by ``add_subparsers`` are of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
