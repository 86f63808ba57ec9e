"""Memory plans as files: ``kind: memory-plan`` JSON or YAML that ``edgeadapt validate`` checks.

A plan file holds the fields of :class:`~edgeadapt.memory.plan.MemoryPlan` and, optionally,
``kind: memory-plan`` (what ``edgeadapt validate`` needs to know the file is a plan;
:func:`save_plan` writes it). ``edgeadapt memory plan --save`` writes one and
``edgeadapt memory estimate --plan`` reads it. Example::

    {"kind": "memory-plan", "micro_batch_size": 4, "freeze_blocks": 1, "checkpoint_segments": 2}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from edgeadapt.config import parse_config, read_yaml
from edgeadapt.errors import ConfigError
from edgeadapt.memory.plan import MemoryPlan

KIND = "memory-plan"

__all__ = ["KIND", "MemoryPlanFile", "load_plan", "save_plan"]


class MemoryPlanFile(MemoryPlan):
    """A :class:`MemoryPlan` as a config file: the same fields plus ``kind: memory-plan``."""

    kind: Literal["memory-plan"] = KIND


def load_plan(path: str | Path) -> MemoryPlan:
    """The plan in a JSON or YAML file (``kind`` optional, but ``memory-plan`` when given).
    Raises :class:`~edgeadapt.errors.ConfigError` naming the file and the field for a missing,
    unreadable or invalid file."""
    data = read_yaml(path)
    if isinstance(data, dict) and data.get("kind", KIND) != KIND:
        raise ConfigError(f"{path}: kind {data['kind']!r} is not a memory plan; give a file with "
                          f"kind: {KIND} (or no kind) and the fields of MemoryPlan")
    cfg = parse_config(data, kind=KIND, source=str(path))
    return MemoryPlan(**cfg.model_dump(exclude={"kind"}))


def save_plan(plan: MemoryPlan, path: str | Path) -> Path:
    """Write ``plan`` as JSON with ``kind: memory-plan`` (only the fields that differ from the
    defaults); returns the path."""
    path = Path(path)
    data = {"kind": KIND, **plan.model_dump(exclude_defaults=True)}
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path
