"""``method_options`` checked before any model loads: each built-in method's settings against its
schema, so ``edgeadapt validate`` and ``adapt`` refuse a typo with the closest known name.

The schemas are the methods' own config models (:class:`~edgeadapt.online.methods.eata.EATAConfig`,
:class:`~edgeadapt.online.methods.sar.SARConfig`, and for ``edgeadapt`` its ``safeguard`` section,
:class:`~edgeadapt.online.safeguard.SafeguardConfig`); a method registered without a schema (a
plug-in) is checked when it is built, as before; a built-in method that reads no options
(``source``, ``tent``, ``full``, ``static``) refuses any, which it would otherwise ignore.

>>> check_method_options({"eata": {"d_margn": 0.4}})
Traceback (most recent call last):
...
edgeadapt.errors.ConfigError: method_options.eata.d_margn: unknown field; did you mean 'd_margin'?
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeadapt.config import fields_at, unknown_field_message
from edgeadapt.errors import ConfigError
from edgeadapt.online.methods import BUILTIN
from edgeadapt.online.methods.eata import EATAConfig
from edgeadapt.online.methods.sar import SARConfig
from edgeadapt.online.safeguard import SafeguardConfig

__all__ = ["OPTION_SCHEMAS", "WITHOUT_OPTIONS", "EdgeAdaptOptions", "check_method_options"]


class EdgeAdaptOptions(BaseModel):
    """What ``method_options: {edgeadapt: ...}`` may set (the method reads ``safeguard`` only)."""

    model_config = ConfigDict(extra="forbid")

    safeguard: SafeguardConfig | None = Field(None, description="The safeguard's settings after each "
                                              "domain's retraining (edgeadapt.online.safeguard).")


OPTION_SCHEMAS: dict[str, type[BaseModel]] = {"eata": EATAConfig, "sar": SARConfig,
                                              "edgeadapt": EdgeAdaptOptions}
"""Built-in method -> the model its ``method_options`` entry must validate against."""

WITHOUT_OPTIONS = frozenset(name for name, _ in BUILTIN) - set(OPTION_SCHEMAS)
"""Built-in methods that read no ``method_options``."""


def check_method_options(options: dict[str, Any]) -> None:
    """Validate each entry of ``options`` (method name -> settings) that has a schema in
    :data:`OPTION_SCHEMAS`. Raises :class:`~edgeadapt.errors.ConfigError` naming the field path
    (``method_options.eata.d_margn``), why, and for an unknown field the closest known name."""
    problems = []
    for name, settings in options.items():
        schema = OPTION_SCHEMAS.get(name)
        if name in WITHOUT_OPTIONS and settings:
            problems.append(f"method_options.{name}: {name} takes no options (those that do: "
                            f"{', '.join(OPTION_SCHEMAS)}); remove it")
        if schema is None:
            continue
        if not isinstance(settings, dict):
            problems.append(f"method_options.{name}: a mapping of {schema.__name__} fields, got {settings!r}")
            continue
        try:
            schema(**settings)
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(["method_options", name, *map(str, err["loc"])])
                if err["type"] == "extra_forbidden":
                    why = unknown_field_message(err["loc"][-1], fields_at(schema, tuple(err["loc"][:-1])))
                else:
                    why = f"{err['msg'].removeprefix('Value error, ')} (got {err['input']!r})"
                problems.append(f"{where}: {why}")
    if problems:
        raise ConfigError("; ".join(problems))
