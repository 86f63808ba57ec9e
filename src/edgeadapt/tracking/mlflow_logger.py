"""MLflow tracking, to a local file store in the run directory unless a server is configured.

An ``MlflowClient`` bound to this logger's tracking URI is used instead of MLflow's fluent
``mlflow.start_run``/``mlflow.log_*`` API: the fluent API keeps a process-wide active run and
tracking URI, which would clash with a user's own MLflow run or with a second logger.
``mlflow`` is imported only when a logger is created.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeadapt.errors import MissingDependencyError
from edgeadapt.tracking.base import flatten_params, scalar_metrics

INSTALL_HINT = "MLflow tracking needs the mlflow package: pip install 'edgeadapt[mlflow]'"
MAX_PARAM_VALUE = 500  # the smallest limit across MLflow versions and servers
_PARAMS_PER_BATCH, _METRICS_PER_BATCH = 100, 1000  # MLflow's log_batch request limits


def resolve_tracking_uri(run_dir: str | Path, tracking_uri: str | None) -> str:
    """``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a ``file:`` store at ``run_dir/mlruns``."""
    local = (Path(run_dir) / "mlruns").resolve().as_uri()
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."


class MLflowLogger:
    """Log to an MLflow run in ``experiment`` (created if missing).

    MLflow parameters are write-once: logging a key again with a different value fails in
    MLflow, so log the full configuration once at the start of a run.
    """

    def __init__(
        self,
        run_dir: str | Path,
        experiment: str = "edgeadapt",
        tracking_uri: str | None = None,
        run_name: str | None = None,
    ) -> None:
        try:
            import mlflow
            from mlflow.entities import Metric, Param
        except ImportError as exc:
            raise MissingDependencyError(INSTALL_HINT) from exc
        self._metric_cls, self._param_cls = Metric, Param
        self.tracking_uri = resolve_tracking_uri(run_dir, tracking_uri)
        self._client: Any = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        found = self._client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self._client.create_experiment(experiment)
        run = self._client.create_run(experiment_id, run_name=run_name or Path(run_dir).name)
        self.run_id: str | None = run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log flattened ``params`` as strings, truncated to :data:`MAX_PARAM_VALUE` characters."""
        items = [self._param_cls(key, _param_value(value)) for key, value in flatten_params(params).items()]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, params=items[start : start + _PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log ``metrics`` at ``step`` in as few requests as MLflow's limits allow."""
        now_ms = int(time.time() * 1000)
        items = [self._metric_cls(k, v, now_ms, int(step)) for k, v in scalar_metrics(metrics).items()]
        for start in range(0, len(items), _METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=items[start : start + _METRICS_PER_BATCH])

    def close(self) -> None:
        """Mark the run finished; calling it twice is harmless."""
        if self.run_id is not None:
            self._client.set_terminated(self.run_id)
            self.run_id = None
