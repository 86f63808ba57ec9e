"""TensorBoard tracking: scalars and the run's configuration as event files under the run dir.

``torch.utils.tensorboard`` (and through it the ``tensorboard`` package) is imported when a
logger is created, not when this module is, so importing edgeadapt stays fast on an edge
install without TensorBoard.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeadapt.errors import MissingDependencyError
from edgeadapt.tracking.base import flatten_params, scalar_metrics

TENSORBOARD_DIR = "tensorboard"


class TensorBoardLogger:
    """Write TensorBoard event files to ``run_dir/tensorboard``.

    View with ``tensorboard --logdir <run_dir>``. Parameters appear in the Text tab as JSON;
    ``add_hparams`` is avoided because it creates a separate sub-run per call.
    """

    def __init__(self, run_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise MissingDependencyError(
                "TensorBoard tracking needs the tensorboard package: pip install tensorboard "
                "(or choose the 'csv' tracker)"
            ) from exc
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self._writer = SummaryWriter(log_dir=str(self.log_dir))
        self._params: dict[str, Any] = {}
        self._params_calls = 0

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Write all parameters logged so far as one JSON text entry (step = call count)."""
        self._params.update(flatten_params(params))
        body = json.dumps(self._params, indent=1, sort_keys=True, default=str)
        # Indented by four spaces, the JSON renders as a Markdown code block in the Text tab.
        text = "\n".join("    " + line for line in body.splitlines())
        self._writer.add_text("params", text, global_step=self._params_calls)
        self._params_calls += 1
        self._writer.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Add one scalar per metric at ``step``; flushed so a crash keeps what was logged."""
        for name, value in scalar_metrics(metrics).items():
            self._writer.add_scalar(name, value, global_step=int(step))
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()
