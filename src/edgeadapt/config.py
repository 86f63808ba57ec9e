"""YAML recipes → validated, typed configs, with errors that name the field and the fix.

Every YAML file names its ``kind`` (``train`` when omitted); the kind picks the pydantic model
that validates it. ``edgeadapt validate FILE`` runs exactly this and nothing else.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from edgeadapt.errors import ConfigError

# kind -> "module:Class"; stages add their config models here.
CONFIG_KINDS: dict[str, str] = {
    "train": "edgeadapt.recipes.train:TrainRecipe",
    "offline": "edgeadapt.offline.pipeline:OfflineConfig",
    "adapt": "edgeadapt.online.pipeline:AdaptConfig",
    "llm-prune": "edgeadapt.llm.config:LLMPruneConfig",
}




def config_model(kind: str) -> type[BaseModel]:
    """The pydantic model for a config kind."""
    if kind not in CONFIG_KINDS:
        raise ConfigError(f"kind: {kind!r} is not a config kind; choose one of {', '.join(sorted(CONFIG_KINDS))}")
    module, _, name = CONFIG_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: ``field.path: message (got value)``."""
    lines = [f"{source} is invalid:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "required field is missing; add it"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        got = f" (got {err['input']!r})" if err["type"] not in ("missing", "model_type") and \
            not isinstance(err.get("input"), dict) else ""
        # Cross-field checks already name their field ("data.name: ..."); don't prefix twice.
        names_field = msg.split(" ", 1)[0].endswith(":")
        lines.append(f"  {msg}{got}" if names_field else f"  {where}: {msg}{got}")
    return "\n".join(lines)


def parse_config(data: Any, kind: str | None = None, source: str = "config") -> BaseModel:
    """Validate a mapping (already parsed YAML) as config ``kind`` (or its own ``kind`` field)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a YAML mapping of fields, got {type(data).__name__}")
    kind = kind or data.get("kind", "train")
    model = config_model(kind)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path, kind: str | None = None) -> BaseModel:
    """Read and validate a YAML config file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(data, kind, source=str(path))
