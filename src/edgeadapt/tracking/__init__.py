"""Experiment tracking: one :class:`MetricLogger` protocol over CSV, TensorBoard, W&B and MLflow.

Typical use::

    run = new_run_dir("runs")
    logger = make_logger(run, ["tensorboard", "csv"])
    try:
        logger.log_params(config)
        logger.log_metrics({"train/loss": 0.7}, step=1)
    finally:
        logger.close()
    plot_curves(run / "metrics.csv", run / "curves.png")

Names load on first access, so importing this package never pulls in torch, TensorBoard,
wandb, mlflow or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeadapt.tracking.base import MetricLogger, MultiLogger, NullLogger, flatten_params
    from edgeadapt.tracking.csv_logger import CSVLogger, read_metrics
    from edgeadapt.tracking.mlflow_logger import MLflowLogger
    from edgeadapt.tracking.plots import plot_curves
    from edgeadapt.tracking.run import BACKENDS, make_logger, new_run_dir
    from edgeadapt.tracking.tensorboard import TensorBoardLogger
    from edgeadapt.tracking.wandb_logger import WandbLogger

_LAZY = {
    "MetricLogger": "base",
    "MultiLogger": "base",
    "NullLogger": "base",
    "flatten_params": "base",
    "CSVLogger": "csv_logger",
    "read_metrics": "csv_logger",
    "TensorBoardLogger": "tensorboard",
    "WandbLogger": "wandb_logger",
    "MLflowLogger": "mlflow_logger",
    "BACKENDS": "run",
    "make_logger": "run",
    "new_run_dir": "run",
    "plot_curves": "plots",
    "save_figure": "plots",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = list(_LAZY)
