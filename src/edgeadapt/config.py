"""YAML recipes → validated, typed configs, with errors that name the field and the fix.

Every YAML file names its ``kind`` (``train`` when omitted); the kind picks the pydantic model
that validates it. ``edgeadapt validate FILE`` runs exactly this and nothing else.
"""

from __future__ import annotations

import difflib
import importlib
import math
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError, ValidationInfo

from edgeadapt.errors import ConfigError

# kind -> "module:Class"; stages add their config models here.
CONFIG_KINDS: dict[str, str] = {
    "train": "edgeadapt.recipes.train:TrainRecipe",
    "offline": "edgeadapt.offline.pipeline:OfflineConfig",
    "adapt": "edgeadapt.online.pipeline:AdaptConfig",
    "llm-prune": "edgeadapt.llm.config:LLMPruneConfig",
    "memory-plan": "edgeadapt.memory.plan_file:MemoryPlanFile",
}
# kind -> the command that writes a config's `out`/`save` (for "not built yet (run ...)" notes).
BUILD_COMMANDS: dict[str, str] = {
    "train": "edgeadapt train --config {}",
    "offline": "edgeadapt offline all --config {}",
    "llm-prune": "edgeadapt llm-prune --config {} --mode train",
    "adapt": "edgeadapt adapt --config {}",
}
# Paths edgeadapt commands write by default, without a config.
DEFAULT_OUTPUTS: dict[str, str] = {"runs/ref-llama": "edgeadapt llm-pretrain"}
# Plan files `validate` recognises by their `format` (they have no `kind`): format -> ("module:Class"
# with a `from_dict`, what reads them).
PLAN_FORMATS: dict[str, tuple[str, str]] = {
    "edgeadapt.pruning-plan": ("edgeadapt.pruning.plan:PruningPlan", "edgeadapt prune MODEL --plan {}"),
    "edgeadapt.channel-plan": ("edgeadapt.pruning.channel_plan:ChannelPlan",
                               "edgeadapt prune MODEL --plan {}"),
}
# format -> the field that marks a plan file written without its `format`
PLAN_FIELDS: dict[str, str] = {"edgeadapt.pruning-plan": "blocks", "edgeadapt.channel-plan": "groups"}


def config_model(kind: str) -> type[BaseModel]:
    """The pydantic model for a config kind."""
    if kind not in CONFIG_KINDS:
        raise ConfigError(f"kind: {kind!r} is not a config kind; choose one of "
                          f"{', '.join(sorted(CONFIG_KINDS))}")
    module, _, name = CONFIG_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field's annotation (``X``, ``X | None``, ``list[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def fields_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """The field names of the (nested) model at ``loc`` in ``model`` (``()``: its own fields;
    ``("train",)``: the ``train:`` section's); ``[]`` where ``loc`` leaves the pydantic models."""
    current = model
    for part in loc:
        if isinstance(part, int):  # a list index: the items' model
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = _submodel(fields[part].annotation)
    return list(getattr(current, "model_fields", {}))


def unknown_field_message(key: Any, known: list[str]) -> str:
    """The message for an unknown config field: the closest known name when one is close."""
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    if close:
        return f"unknown field; did you mean {close[0]!r}?"
    return "unknown field; remove it or check its spelling"


def format_validation_error(exc: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    """One line per problem: ``field.path: message (got value)``; an unknown field of ``model``
    gets the closest known name (``did you mean 'learning_rate'?``)."""
    lines = [f"{source} is invalid:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "required field is missing; add it"
        elif err["type"] == "extra_forbidden":
            msg = unknown_field_message(err["loc"][-1], fields_at(model, tuple(err["loc"][:-1])))
        got = f" (got {err['input']!r})" if err["type"] not in ("missing", "model_type") and \
            not isinstance(err.get("input"), dict) else ""
        # Cross-field checks already name their field ("data.name: ..."); don't prefix twice.
        names_field = msg.split(" ", 1)[0].endswith(":")
        lines.append(f"  {msg}{got}" if names_field else f"  {where}: {msg}{got}")
    return "\n".join(lines)


def non_finite_fields(data: Any, where: str = "") -> list[str]:
    """Dotted paths of every ``.inf``/``.nan`` float in parsed YAML (no field of any config takes one)."""
    if isinstance(data, float) and not math.isfinite(data):
        return [f"{where or '(top level)'}: {data!r} is not a finite number; give a finite value"]
    if isinstance(data, dict):
        return [m for k, v in data.items() for m in non_finite_fields(v, f"{where}.{k}" if where else str(k))]
    if isinstance(data, list):
        return [m for i, v in enumerate(data) for m in non_finite_fields(v, f"{where}[{i}]")]
    return []


def parse_config(data: Any, kind: str | None = None, source: str = "config") -> BaseModel:
    """Validate a mapping (already parsed YAML) as config ``kind`` (or its own ``kind`` field).
    Non-finite numbers are refused by field name before the schema sees them."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a YAML mapping of fields, got {type(data).__name__}")
    bad = non_finite_fields(data)
    if bad:
        raise ConfigError("\n  ".join([f"{source} is invalid:", *bad]))
    kind = kind or data.get("kind", "train")
    model = config_model(kind)
    try:
        cfg = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, model)) from None
    return cfg


def read_yaml(path: str | Path) -> Any:
    """The parsed YAML of a config file; :class:`~edgeadapt.errors.ConfigError` naming the file when
    it is missing, a directory, not UTF-8 text or not YAML."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {path} is a directory; give YAML files (e.g. {path}/*.yaml)")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text (a binary file?); give a YAML "
                          "file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None


def load_config(path: str | Path, kind: str | None = None) -> BaseModel:
    """Read and validate a YAML config file."""
    return parse_config(read_yaml(path), kind, source=str(path))


def planned_outputs(files: list[Path]) -> dict[str, str]:
    """Paths that a step writes -> the command that writes them: every ``out``/``save`` of the
    given YAML files (unreadable ones are skipped; ``validate`` reports them itself) plus
    :data:`DEFAULT_OUTPUTS`. Paths are compared as written (relative to the current directory)."""
    planned = dict(DEFAULT_OUTPUTS)
    for file in files:
        try:
            data = read_yaml(file)
        except ConfigError:
            continue
        if not isinstance(data, dict) or data.get("kind", "train") not in BUILD_COMMANDS:
            continue
        for field in ("out", "save"):
            if isinstance(data.get(field), str):
                planned.setdefault(Path(data[field]).as_posix(), BUILD_COMMANDS[data.get("kind", "train")]
                                   .format(file))
    return planned


def not_built_yet(path: str | Path, field: str, info: ValidationInfo | None) -> bool:
    """True when ``path`` does not exist but an earlier step writes it and the caller (``validate``)
    passed such steps as validation context ``{"planned": {...}, "notes": [...]}``; then a note
    ``FIELD PATH not built yet (run ...)`` is added. Outside ``validate`` (no context) always False:
    running a step whose input is missing stays an error."""
    context = info.context if info is not None else None
    if not context or Path(path).exists():
        return False
    command = context.get("planned", {}).get(Path(path).as_posix())
    if command is None:
        return False
    context.setdefault("notes", []).append(f"{field} {path} not built yet (run `{command}`)")
    return True


def infer_kind(data: dict[str, Any]) -> str | None:
    """What a mapping without ``kind`` is, by its fields: a plan file's format (its ``format``, or
    its ``blocks``/``groups``), ``memory-plan`` (a MemoryPlan knob such as ``freeze_blocks``; no
    other config has one at the top), or ``None`` (read as a train recipe)."""
    if data.get("format") in PLAN_FORMATS:
        return str(data["format"])
    for fmt, field in PLAN_FIELDS.items():
        if field in data:
            return fmt
    if set(data) & (set(config_model("memory-plan").model_fields) - {"model", "kind"}):
        return "memory-plan"
    return None


def describe_config(cfg: Any) -> str:
    """How ``validate`` names what it checked: ``adapt config``, ``memory-plan config``,
    ``pruning-plan file``."""
    kind = getattr(cfg, "kind", None)
    if isinstance(kind, str):
        return f"{kind} config"
    fmt = next((f for f, (where, _) in PLAN_FORMATS.items() if where.endswith(f":{type(cfg).__name__}")), "")
    return f"{fmt.removeprefix('edgeadapt.') or type(cfg).__name__} file"


def _validate_plan(path: str | Path, data: dict[str, Any], fmt: str) -> tuple[Any, list[str]]:
    where, reader = PLAN_FORMATS[fmt]
    module, _, name = where.partition(":")
    try:
        plan = getattr(importlib.import_module(module), name).from_dict({"format": fmt, **data})
    except ConfigError as exc:
        raise ConfigError(f"{path} is invalid: {exc}") from None
    return plan, [f"read by `{reader.format(path)}`"]


def validate_config(path: str | Path, planned: dict[str, str] | None = None) -> tuple[Any, list[str]]:
    """What ``edgeadapt validate`` runs: the config and its notes (inputs an earlier step in
    ``planned`` writes are noted, not refused). A file without ``kind`` is recognised by its fields
    (:func:`infer_kind`: a pruning, channel or memory plan), else read as a train recipe; when that
    fails the error lists the kinds."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a YAML mapping of fields, got {type(data).__name__}")
    bad = non_finite_fields(data)
    if bad:
        raise ConfigError("\n  ".join([f"{path} is invalid:", *bad]))
    context: dict[str, Any] = {"planned": planned or {}, "notes": []}
    inferred = None if "kind" in data else infer_kind(data)
    if inferred in PLAN_FORMATS:
        return _validate_plan(path, data, inferred)
    kind = data.get("kind", inferred or "train")
    model = config_model(kind)
    try:
        cfg = model.model_validate(data, context=context)
    except ValidationError as exc:
        message = format_validation_error(exc, str(path), model)
        if "kind" not in data:
            message += (f"\n  (no kind: field, so it was read as a {kind} config; give kind: one of "
                        f"{', '.join(sorted(CONFIG_KINDS))}, or a plan file's format: "
                        f"{', '.join(PLAN_FORMATS)})")
        raise ConfigError(message) from None
    notes = [f"no kind: read as a {kind} by its fields"] if inferred else []
    return cfg, list(dict.fromkeys([*notes, *context["notes"]]))
