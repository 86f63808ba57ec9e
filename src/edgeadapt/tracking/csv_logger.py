"""Plain-file tracking: ``metrics.csv`` in long format and ``params.json`` in the run directory.

Long format (``step,name,value``, one row per metric value) never needs rewriting when a new
metric appears mid-run, so every row can be appended and flushed as it is logged: a crash loses
at most the row being written, and :func:`read_metrics` skips such a truncated last line.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeadapt.artifacts import atomic_write_text
from edgeadapt.errors import ConfigError
from edgeadapt.tracking.base import flatten_params, scalar_metrics

METRICS_FILE = "metrics.csv"
PARAMS_FILE = "params.json"
_HEADER = ["step", "name", "value"]


def _drop_partial_line(path: Path) -> None:
    """Cut a line left unfinished by a crash, so appended rows start on a fresh line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


class CSVLogger:
    """Log to ``run_dir/metrics.csv`` and ``run_dir/params.json``; needs no extra package.

    Re-opening an existing run directory appends to its metrics and merges into its params,
    so a resumed run keeps one history.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        self.params_path = self.run_dir / PARAMS_FILE
        self._params: dict[str, Any] = (
            json.loads(self.params_path.read_text()) if self.params_path.is_file() else {}
        )
        resumed = self.metrics_path.is_file() and self.metrics_path.stat().st_size > 0
        if resumed:
            _drop_partial_line(self.metrics_path)
        self._file = open(self.metrics_path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file, lineterminator="\n")
        if not resumed or self.metrics_path.stat().st_size == 0:
            self._writer.writerow(_HEADER)
            self._file.flush()

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Merge flattened ``params`` into ``params.json`` (rewritten atomically)."""
        self._params.update(flatten_params(params))
        atomic_write_text(self.params_path, json.dumps(self._params, indent=1, sort_keys=True, default=str))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Append one ``step,name,value`` row per metric and flush."""
        step = int(step)
        for name, value in scalar_metrics(metrics).items():
            # repr keeps full float precision, so values read back bit-identical.
            self._writer.writerow([step, name, repr(value)])
        # flush, not fsync: a crash of this process loses nothing; fsync per step would be slow.
        self._file.flush()

    def close(self) -> None:
        """Close ``metrics.csv``; calling it twice is harmless."""
        if not self._file.closed:
            self._file.close()


def read_metrics(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Read a ``metrics.csv`` (or the run directory holding one) into ``{name: [(step, value)]}``.

    Rows keep file order. A truncated final line (crash mid-write) is ignored; any other
    malformed row raises ``ValueError`` naming the line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = csv.reader(io.StringIO(text, newline=""))
    header = next(rows, None)
    if header is not None and header != _HEADER:
        raise ConfigError(f"{path} is not an edgeadapt metrics file (header {header}, expected {_HEADER})")
    out: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        try:
            step, name, value = row
            out.setdefault(name, []).append((int(step), float(value)))
        except ValueError:
            raise ConfigError(f"{path}:{rows.line_num}: malformed metrics row {row!r}") from None
    return out
