"""edgeadapt's user errors: what the person running a command can fix.

Every error a user can fix by changing a config, a flag, a path or a budget is one of these types,
so the CLI prints it as one paragraph (what is wrong, the value, the fix) with exit code 2 and
every other exception — a bug — keeps its traceback. Each subclasses the builtin it replaces
(``ValueError``, ``FileNotFoundError``), so ``except ValueError`` in callers keeps working.
"""

from __future__ import annotations


class EdgeAdaptError(Exception):
    """Base of every user-fixable error; the message names the field, the value and the fix."""


class ConfigError(EdgeAdaptError, ValueError):
    """A config field, CLI flag or argument with a value edgeadapt cannot use."""


class ArtifactError(EdgeAdaptError, ValueError):
    """An artifact directory that is missing, of another kind or version, or corrupted."""


class PlanError(ConfigError):
    """A pruning plan that does not fit the model or is malformed."""


class InfeasibleError(ConfigError):
    """A budget or target no configuration can meet; the message names the smallest feasible one."""


class PathError(EdgeAdaptError, FileNotFoundError):
    """An input path that does not exist or an output path that cannot be written."""


class OutputExistsError(EdgeAdaptError, FileExistsError):
    """An output path that already holds something this command must not overwrite."""


class OutputLockedError(OutputExistsError):
    """An output directory another edgeadapt run is writing right now; the message names its PID."""


class MissingDependencyError(EdgeAdaptError, ImportError):
    """An optional package (a tracking backend, a server stack) that is not installed; the message
    names the ``pip install`` that adds it."""
