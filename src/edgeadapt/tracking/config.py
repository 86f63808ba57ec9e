"""The ``tracking:`` section of every config that trains, and the loggers it asks for."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeadapt.tracking.base import MetricLogger
from edgeadapt.tracking.run import make_logger


class TrackingSection(BaseModel):
    """Where metrics go besides the console."""

    model_config = ConfigDict(extra="forbid")

    backends: list[Literal["tensorboard", "csv", "wandb", "mlflow", "none"]] = Field(
        default_factory=lambda: ["tensorboard", "csv"], description="Metric loggers.")
    project: str = Field("edgeadapt", description="W&B project / MLflow experiment name.")


def make_run_logger(tracking: TrackingSection, run_dir: Path) -> MetricLogger:
    """The configured metric loggers writing into ``run_dir`` (the caller closes it)."""
    backends = tracking.backends
    options = {k: v for k, v in {"wandb": {"project": tracking.project},
                                 "mlflow": {"experiment": tracking.project}}.items() if k in backends}
    return make_logger(run_dir, backends, **options)
