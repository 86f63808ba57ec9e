"""The logger protocol every stage writes metrics through, plus fan-out and no-op loggers.

Stages depend on :class:`MetricLogger` only, so the backend (CSV, TensorBoard, W&B, MLflow) is
chosen by the caller (see :func:`edgeadapt.tracking.make_logger`) and never by the training code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class MetricLogger(Protocol):
    """Where a run's configuration and scalar metrics go.

    Loggers own files or connections; wrap them in ``contextlib.closing`` or call
    :meth:`close` in a ``finally`` so nothing buffered is lost.
    """

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record the run's configuration; nested mappings are flattened with dots."""
        ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar ``metrics`` at training ``step``."""
        ...

    def close(self) -> None:
        """Flush and release resources; the logger is unusable afterwards."""
        ...


def flatten_params(params: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """Flatten nested mappings: ``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``.

    Backends such as MLflow only store flat key/value pairs; flattening once here keeps every
    backend's keys identical, so a parameter is found under the same name everywhere.
    """
    flat: dict[str, Any] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for key, sub in value.items():
                visit(f"{prefix}{sep}{key}" if prefix else str(key), sub)
        else:
            flat[prefix] = value

    for key, value in params.items():
        visit(str(key), value)
    return flat


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Convert metric values (floats, ints, 0-d tensors, numpy scalars) to ``float``.

    Raises ``TypeError`` naming the metric whose value is not a scalar, so a wrongly logged
    tensor fails at the call site rather than inside a backend.
    """
    out: dict[str, float] = {}
    for name, value in metrics.items():
        try:
            out[str(name)] = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"metric {name!r} must be a scalar number, got {type(value).__name__}") from None
    return out


class MultiLogger:
    """Send every call to several loggers.

    Each call reaches every logger even if an earlier one raises; the first error is re-raised
    afterwards, so one failing backend cannot stop the others from flushing or closing.
    """

    def __init__(self, loggers: Sequence[MetricLogger]) -> None:
        self.loggers = list(loggers)

    def _fan_out(self, method: str, *args: Any) -> None:
        first: BaseException | None = None
        for logger in self.loggers:
            try:
                getattr(logger, method)(*args)
            except Exception as exc:  # keep going: the remaining loggers must still run
                first = first or exc
        if first is not None:
            raise first

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Forward ``params`` to every logger."""
        self._fan_out("log_params", params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Forward ``metrics`` at ``step`` to every logger."""
        self._fan_out("log_metrics", metrics, step)

    def close(self) -> None:
        """Close every logger, then re-raise the first failure, if any."""
        self._fan_out("close")


class NullLogger:
    """A logger that records nothing (tracker ``"none"``), so callers never test for ``None``."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Ignore ``params``."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Ignore ``metrics``."""

    def close(self) -> None:
        """Nothing to release."""
