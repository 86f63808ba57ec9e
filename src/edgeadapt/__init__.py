"""edgeadapt: keep foundation models accurate on edge devices while their data drifts.

Importing the package is cheap and has no side effects; submodules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_adapter": "edgeadapt.models.registry",
    "PruningPlan": "edgeadapt.pruning.plan",
    "apply_plan": "edgeadapt.pruning.apply",
    "save_pruned": "edgeadapt.pruning.checkpoint",
    "load_pruned": "edgeadapt.pruning.checkpoint",
    "adapt": "edgeadapt.online.api",
    "DriftStream": "edgeadapt.data.stream",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgeadapt' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
