"""Weights & Biases tracking, offline unless the user has opted in to syncing.

An edge device or a CI job usually has no network and no W&B account, so the default mode is
``"offline"``: the run is kept under ``run_dir/wandb`` and can be uploaded later with
``wandb sync``. ``wandb`` itself is imported only when a logger is created.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeadapt.errors import MissingDependencyError
from edgeadapt.tracking.base import flatten_params, scalar_metrics

INSTALL_HINT = "W&B tracking needs the wandb package: pip install 'edgeadapt[wandb]'"


def resolve_mode(mode: str | None) -> str | None:
    """The ``mode`` passed to ``wandb.init``.

    An explicit ``mode`` wins. Otherwise, if the user set ``WANDB_MODE`` or ``WANDB_API_KEY``,
    return ``None`` so wandb applies its own settings (online with an API key); else
    ``"offline"``, so nothing is sent anywhere by default. A login stored by ``wandb login``
    (an ``api.wandb.ai`` entry in ``~/.netrc``) counts as logged in.
    """
    if mode is not None:
        return mode
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY") or _netrc_login():
        return None
    return "offline"


def _netrc_login() -> bool:
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger:
    """Log to a W&B run whose local files live in ``run_dir/wandb``.

    Args:
        run_dir: the edgeadapt run directory.
        project: W&B project name.
        name: display name of the run; defaults to the run directory's name.
        mode: ``"online"``, ``"offline"`` or ``"disabled"``; see :func:`resolve_mode`.
        config: initial configuration, flattened like :meth:`log_params`.
    """

    def __init__(
        self,
        run_dir: str | Path,
        project: str = "edgeadapt",
        name: str | None = None,
        mode: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise MissingDependencyError(INSTALL_HINT) from exc
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.mode = resolve_mode(mode)
        self._run: Any = wandb.init(
            project=project,
            name=name or run_dir.name,
            dir=str(run_dir),
            mode=self.mode,
            config=flatten_params(config or {}),
        )

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Merge flattened ``params`` into the run's config."""
        # allow_val_change: a resumed or re-configured run may legitimately update a value.
        self._run.config.update(flatten_params(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log ``metrics`` at ``step`` (W&B requires steps to increase)."""
        self._run.log(scalar_metrics(metrics), step=int(step))

    def close(self) -> None:
        """Finish the run, writing its files; offline runs can then be uploaded with ``wandb sync``."""
        if self._run is not None:
            self._run.finish()
            self._run = None
