"""How progress is shown: live bars on a terminal, one line per epoch or stage otherwise, nothing
when quiet.

A live bar redraws itself with ``\\r``; written to a log file or a pipe that is kilobytes of
partial lines. So a bar is drawn only when stderr is a terminal and neither ``TQDM_DISABLE`` (tqdm's
own switch) nor ``EDGEADAPT_QUIET`` (set by ``edgeadapt --quiet``) is set; without a terminal a
stage prints one plain line per epoch instead, unless quiet. Every tqdm bar in edgeadapt passes
``disable=not bar_enabled(progress)`` so the rule is the same everywhere.
"""

from __future__ import annotations

import os
import sys

QUIET_ENV = "EDGEADAPT_QUIET"


def _set(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def quiet() -> bool:
    """True under ``edgeadapt --quiet`` (``EDGEADAPT_QUIET=1``): no bars, no per-epoch lines."""
    return _set(QUIET_ENV)


def bar_enabled(requested: bool = True) -> bool:
    """Whether to draw a live bar: requested, stderr is a terminal, and not quiet / ``TQDM_DISABLE``."""
    return requested and sys.stderr.isatty() and not quiet() and not _set("TQDM_DISABLE")


def lines_enabled(requested: bool = True) -> bool:
    """Whether to print one plain progress line per epoch/stage: requested, no live bar, not quiet."""
    return requested and not quiet() and not bar_enabled(requested)


def progress_line(text: str) -> None:
    """One progress line on stderr (flushed, so a log shows it as it happens)."""
    print(text, file=sys.stderr, flush=True)
