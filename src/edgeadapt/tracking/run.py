"""Run directories and logger construction from tracker names.

A run directory holds everything one run writes (metrics, params, event files, plots,
artifacts). It is created explicitly by the caller, never at import time, and an existing
non-empty one is only reused when the caller asks to resume.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeadapt.errors import ConfigError, OutputExistsError
from edgeadapt.tracking.base import MetricLogger, MultiLogger, NullLogger

BACKENDS = ("tensorboard", "csv", "wandb", "mlflow", "none")


# backend -> (module, class); imported on demand so choosing "csv" never loads torch, wandb or mlflow.
_LOGGERS = {
    "csv": ("edgeadapt.tracking.csv_logger", "CSVLogger"),
    "tensorboard": ("edgeadapt.tracking.tensorboard", "TensorBoardLogger"),
    "wandb": ("edgeadapt.tracking.wandb_logger", "WandbLogger"),
    "mlflow": ("edgeadapt.tracking.mlflow_logger", "MLflowLogger"),
}


def _factory(backend: str) -> Callable[..., MetricLogger]:
    module, cls = _LOGGERS[backend]
    return getattr(importlib.import_module(module), cls)


def make_logger(
    run_dir: str | Path,
    backends: Sequence[str] | str = ("tensorboard", "csv"),
    **options: Mapping[str, Any],
) -> MetricLogger:
    """Build the logger for ``backends`` (tracker names from :data:`BACKENDS`) writing in ``run_dir``.

    Keep ``"csv"`` in the list: it needs no extra package and is what :func:`plot_curves` and
    reports read. ``"none"`` must stand alone. ``backends`` may be a comma-separated string.
    Per-backend keyword arguments go in ``options`` under the backend's name::

        make_logger(run, ["csv", "wandb"], wandb={"project": "drift", "mode": "online"})
    """
    if isinstance(backends, str):
        backends = [b.strip() for b in backends.split(",") if b.strip()]
    names = list(backends)
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise ConfigError(f"tracker: unknown backend(s) {unknown}; choose from {list(BACKENDS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"tracker: backend listed twice in {names}")
    if "none" in names and len(names) > 1:
        raise ConfigError(f"tracker: 'none' cannot be combined with other backends, got {names}")
    stray = sorted(set(options) - set(names))
    if stray:
        raise ConfigError(f"tracker: options given for backend(s) {stray} that are not selected ({names})")
    if not names or names == ["none"]:
        return NullLogger()
    loggers: list[MetricLogger] = []
    try:
        for name in names:
            loggers.append(_factory(name)(run_dir, **dict(options.get(name, {}))))
    except BaseException:
        # Release what was opened before the failing backend; its error is the one to report.
        with contextlib.suppress(Exception):
            MultiLogger(loggers).close()
        raise
    return loggers[0] if len(loggers) == 1 else MultiLogger(loggers)


def _timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def new_run_dir(root: str | Path, name: str | None = None, exist_ok: bool = False) -> Path:
    """Create and return ``root/name``.

    Without ``name``, use the UTC time ``YYYYmmdd-HHMMSS``, adding ``-1``, ``-2``, ... when that
    directory already exists. With ``name``, an existing empty directory is reused, and a
    non-empty one raises ``FileExistsError`` unless ``exist_ok=True`` (resuming that run).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if name is None:
        stem = _timestamp()
        for attempt in range(1000):
            path = root / (stem if attempt == 0 else f"{stem}-{attempt}")
            try:
                path.mkdir()  # atomic: two processes starting together get distinct dirs
                return path
            except FileExistsError:
                continue
        raise OutputExistsError(f"could not find a free run directory name under {root} for {stem}")
    if not name or Path(name).name != name or name in (".", ".."):
        raise ConfigError(f"run name must be a single directory name, got {name!r}")
    path = root / name
    path.mkdir(exist_ok=True)
    if not exist_ok and any(path.iterdir()):
        raise OutputExistsError(f"run directory {path} already holds a run; pick another name "
                              "or pass exist_ok=True to resume it")
    return path
