"""Registry of Hugging Face architecture families, keyed by ``config.model_type``.

Each family module declares one :class:`~edgeadapt.models.adapter.ArchSpec` (a data table) and
registers it. Registering a model type twice, or a malformed spec, raises.
"""

from __future__ import annotations

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ArchSpec

_BY_MODEL_TYPE: dict[str, ArchSpec] = {}


def register_family(spec: ArchSpec) -> ArchSpec:
    """Add ``spec`` for each of its model types; refuse duplicates and incomplete specs."""
    if not spec.family or not spec.family.replace("-", "").isalnum():
        raise ConfigError(f"family name {spec.family!r} must be a non-empty alphanumeric identifier")
    if not spec.model_types:
        raise ConfigError(f"family {spec.family!r} lists no model_types")
    if not spec.mlp_inputs or not spec.layers:
        raise ConfigError(f"family {spec.family!r} must name its layers and at least one MLP input")
    for mt in spec.model_types:
        if mt in _BY_MODEL_TYPE:
            raise ConfigError(f"model_type {mt!r} is already registered by family "
                             f"{_BY_MODEL_TYPE[mt].family!r}")
    for mt in spec.model_types:
        _BY_MODEL_TYPE[mt] = spec
    return spec


def family_for(model_type: str) -> ArchSpec:
    """The spec for ``model_type``, or a clear error listing the supported ones."""
    _load_builtin()
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise ConfigError(
            f"no edgeadapt adapter for model_type {model_type!r}; supported: "
            f"{', '.join(sorted(_BY_MODEL_TYPE))}. Implement the ModelAdapter protocol for other "
            "models (see examples/custom_adapter.py)."
        ) from None


def supported_model_types() -> list[str]:
    _load_builtin()
    return sorted(_BY_MODEL_TYPE)


def _load_builtin() -> None:
    if _BY_MODEL_TYPE:
        return
    from edgeadapt.models.families import bert, gpt2, llama, opt, vit  # noqa: F401  (registers)
