"""Registry of Hugging Face architecture families, keyed by ``config.model_type``.

Each family module declares one :class:`~edgeadapt.models.adapter.ArchSpec` (a data table); the
built-in ones are registered when this package is imported, so they are always there, whatever a
user registers and in which order. Register your own with :func:`register_family`. Registering a
model type twice, or a malformed spec, raises.
"""

from __future__ import annotations

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ArchSpec
from edgeadapt.models.cnn import cnn_model_types
from edgeadapt.models.families.bert import BERT
from edgeadapt.models.families.gpt2 import GPT2
from edgeadapt.models.families.llama import LLAMA
from edgeadapt.models.families.opt import OPT
from edgeadapt.models.families.vit import VIT

BUILTIN_FAMILIES: tuple[ArchSpec, ...] = (BERT, GPT2, LLAMA, OPT, VIT)

_BY_MODEL_TYPE: dict[str, ArchSpec] = {}


def register_family(spec: ArchSpec) -> ArchSpec:
    """Add ``spec`` for each of its model types; refuse duplicates and incomplete specs
    (:class:`~edgeadapt.errors.ConfigError`)."""
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
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise ConfigError(
            f"no edgeadapt adapter for model_type {model_type!r}; supported: "
            f"{', '.join(sorted(_BY_MODEL_TYPE))} (and the CNNs {', '.join(cnn_model_types())}, "
            "adapted by edgeadapt.models.cnn). Implement the ModelAdapter protocol for other "
            "models (see examples/custom_adapter.py)."
        ) from None


def supported_model_types() -> list[str]:
    """Every registered model type, sorted."""
    return sorted(_BY_MODEL_TYPE)


for _spec in BUILTIN_FAMILIES:
    register_family(_spec)
