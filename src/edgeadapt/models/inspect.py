"""Per-block structure, parameters and FLOPs of an adapted model (``edgeadapt inspect``).

FLOPs count multiply-adds as 2 operations: every projection costs ``2 * in * out`` per token,
and attention adds ``4 * context * heads * head_dim`` per token (scores and weighted values).
Vision models report FLOPs per image (per token × tokens per image); text models per token at
the given context length.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from edgeadapt.artifacts import MANIFEST, check_safetensors_header
from edgeadapt.errors import ArtifactError, ConfigError, EdgeAdaptError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.models.families import family_for
from edgeadapt.models.registry import minilm_path, model_config_dict
from edgeadapt.models.tiny import TINY

# Config keys that bound what a model accepts, by meaning (families name them differently).
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


@dataclass(frozen=True)
class ModelLimits:
    """What a model's config bounds, read without loading weights; ``None`` where it says nothing.

    ``positions``: longest token sequence (the position table or trained context); ``vocab``:
    token ids are < vocab; ``image_size``: input side in pixels; ``num_labels``: classifier
    outputs; ``layers``: transformer blocks of the base model."""

    positions: int | None
    vocab: int | None
    image_size: int | None
    num_labels: int | None
    layers: int | None


def _first(config: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def limits_from_config(config: dict[str, Any]) -> ModelLimits:
    """:class:`ModelLimits` of a Hugging Face config given as a dict."""
    labels = config.get("num_labels") or (len(config["id2label"]) if config.get("id2label") else None)
    image = config.get("image_size")
    return ModelLimits(positions=_first(config, _POSITION_KEYS), vocab=_first(config, ("vocab_size",)),
                       image_size=int(image) if isinstance(image, int) else None,
                       num_labels=int(labels) if labels else None, layers=_first(config, _LAYER_KEYS))


def model_limits(model: str | Path) -> ModelLimits:
    """:class:`ModelLimits` of a built-in name, local Hugging Face directory or edgeadapt model
    artifact (its base config: pruning never adds positions, vocabulary or labels), without loading
    weights. Raises :class:`~edgeadapt.errors.ConfigError` as
    :func:`~edgeadapt.models.registry.model_config_dict` does for anything else."""
    name = str(model)
    if name in TINY:
        return limits_from_config(TINY[name][0]().to_dict())
    if name == "minilm":
        return limits_from_config(model_config_dict(minilm_path()) or {})
    return limits_from_config(model_config_dict(model) or {})


def check_context(context: int | None, positions: int | None, field: str = "context") -> None:
    """Refuse a context length below 1 or beyond the model's ``positions``, naming ``field``
    (:class:`~edgeadapt.errors.ConfigError`, both numbers in the message)."""
    if context is None:
        return
    if context < 1:
        raise ConfigError(f"{field}: {context} tokens is not a context length; give a number >= 1")
    if positions is not None and context > positions:
        raise ConfigError(f"{field}: {context} tokens is more than the model's {positions} positions; "
                          f"give at most {positions}")


@dataclass
class BlockRow:
    index: int
    heads: int
    kv_heads: int
    ffn_width: int
    params: int
    flops: int


@dataclass
class Inspection:
    name: str
    family: str
    task: str
    unit: str  # "token" or "image"
    context: int
    blocks: list[BlockRow]
    total_params: int
    total_flops: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _linear_flops(module: nn.Module) -> int:
    return sum(2 * m.weight.numel() for m in module.modules()
               if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")


def tokens_per_input(adapter: ModelAdapter, context: int | None = None) -> tuple[str, int]:
    """("image", patches + 1) for vision models, ("token", context) for text models."""
    config = getattr(adapter.model, "config", None)
    if adapter.modality == "image" and config is not None:
        return "image", (config.image_size // config.patch_size) ** 2 + 1
    if context is not None:
        return "token", context
    return "token", min(getattr(config, "max_position_embeddings", 512) or 512, 512)


def inspect_model(adapter: ModelAdapter, context: int | None = None) -> Inspection:
    """Count parameters and FLOPs per block and in total.

    Raises :class:`~edgeadapt.errors.ConfigError` when ``context`` is below 1 or beyond the
    model's positions (text models)."""
    model = adapter.model
    config = getattr(model, "config", None)
    if adapter.modality != "image":
        check_context(context, limits_from_config(config.to_dict()).positions if config is not None else None)
    unit, ctx = tokens_per_input(adapter, context)
    per_input = ctx if unit == "image" else 1
    layers = model.get_submodule(adapter.layers_path())
    rows = []
    for spec, layer in zip(adapter.blocks(), layers):
        a = spec.attention
        flops_token = _linear_flops(layer) + 4 * ctx * a.num_heads * a.head_dim
        rows.append(BlockRow(spec.index, a.num_heads, a.num_kv_heads, spec.mlp.width, _params(layer),
                             flops_token * per_input))
    # Parts outside the blocks: only the head multiplies (embedding lookups are free).
    head = adapter.head()
    head_flops = _linear_flops(model.get_submodule(head)) if head else 0
    return Inspection(
        name=getattr(adapter, "name", type(model).__name__), family=adapter.family, task=adapter.task.name,
        unit=unit, context=ctx, blocks=rows, total_params=_params(model),
        total_flops=sum(r.flops for r in rows) + head_flops,
    )


def _human(n: float) -> str:
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(int(n))


def format_inspection(info: Inspection) -> str:
    """A fixed-width table with totals, as printed by ``edgeadapt inspect``."""
    lines = [f"{info.name}  ({info.family}, {info.task}; FLOPs per {info.unit}"
             f"{'' if info.unit == 'image' else f' at context {info.context}'})",
             f"{'block':>5} {'heads':>5} {'kv':>4} {'ffn':>6} {'params':>10} {'FLOPs':>10}"]
    for r in info.blocks:
        lines.append(f"{r.index:>5} {r.heads:>5} {r.kv_heads:>4} {r.ffn_width:>6} "
                     f"{_human(r.params):>10} {_human(r.flops):>10}")
    lines.append(f"{'total':>5} {sum(r.heads for r in info.blocks):>5} "
                 f"{sum(r.kv_heads for r in info.blocks):>4} "
                 f"{sum(r.ffn_width for r in info.blocks):>6} {_human(info.total_params):>10} "
                 f"{_human(info.total_flops):>10}")
    lines.append(f"(total params include embeddings and head: {info.total_params:,})")
    return "\n".join(lines)


# -- a Hugging Face directory whose config does not describe its weights ----------------------------

_EXPORT_HINT = ("This is what `model.save_pretrained(DIR)` of a pruned model writes (its config keeps "
                "the original widths), and transformers cannot load it. Save pruned models with edgeadapt "
                "(`edgeadapt prune --out`, edgeadapt.pruning.checkpoint.save_pruned) and use that artifact, "
                "or turn such an artifact into a loadable Hugging Face checkpoint with `edgeadapt export "
                "ARTIFACT --format hf --out DIR`")


def _structure_fields(config: Any) -> str:
    """``num_hidden_layers=2, num_attention_heads=4, ...``: the config's structure fields, by family."""
    try:
        spec = family_for(config.model_type)
        keys = [spec.layers_key, spec.heads_key, spec.kv_heads_key, spec.ffn_key, "head_dim"]
    except ConfigError:
        keys = ["num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                "head_dim"]
    return ", ".join(f"{k}={getattr(config, k)}" for k in keys if k and getattr(config, k, None) is not None)


def _saved_names(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights under the names ``save_pretrained`` writes (transformers 5 renames some
    families' weights back to their legacy layout on save, e.g. ViT's ``encoder.layer.N``); empty
    when this transformers has no such renaming (it is transformers' own, not a stable API)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion

        return dict(revert_weight_conversion(model, model.state_dict()))
    except Exception:  # an older or newer transformers: compare the current names only
        return {}


def weight_mismatches(directory: str | Path) -> list[str]:
    """Weights in ``directory``'s ``*.safetensors`` files whose shapes differ from those of the model
    its ``config.json`` describes (built on the meta device: no memory, no weights read), as
    ``"name: [file shape] in FILE, config implies [shape]"``. Only weights the model has are compared
    (a key transformers renames on load is skipped). Raises :class:`~edgeadapt.errors.ArtifactError`
    for a broken safetensors header."""
    import transformers  # loaded on first use, as in registry, so config validation stays fast

    directory = Path(directory)
    config = transformers.AutoConfig.from_pretrained(directory)
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    with torch.device("meta"):
        model = cls._from_config(config) if cls is not None else transformers.AutoModel.from_config(config)
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected.update({k: list(v.shape) for k, v in _saved_names(model).items()})
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    out = []
    for file in sorted(directory.glob("*.safetensors")):
        check_safetensors_header(file)
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                name = next((n for n in (key, prefix + key, key.removeprefix(prefix)) if n in expected), None)
                shape = list(f.get_slice(key).get_shape())
                if name is not None and shape != expected[name]:
                    out.append(f"{key}: {shape} in {file.name}, config implies {expected[name]}")
    return out


def check_hf_checkpoint(directory: str | Path) -> None:
    """Refuse (:class:`~edgeadapt.errors.ArtifactError`, one paragraph) a Hugging Face directory whose
    weights do not have the shapes its ``config.json`` implies, naming the file, the first
    mismatches with both shapes, the config's structure fields and the fix."""
    import transformers

    directory = Path(directory)
    mismatches = weight_mismatches(directory)
    if mismatches:
        config = transformers.AutoConfig.from_pretrained(directory)
        more = f"; and {len(mismatches) - 3} more" if len(mismatches) > 3 else ""
        fields = _structure_fields(config)
        raise ArtifactError(f"{directory}: the weights do not match config.json ({fields}): "
                            f"{'; '.join(mismatches[:3])}{more}. {_EXPORT_HINT}")


@contextmanager
def explain_load_failure(model: str | Path) -> Iterator[None]:
    """Around loading ``model``: for a local Hugging Face directory (``config.json``, no edgeadapt
    ``manifest.json``), first :func:`check_hf_checkpoint`, then turn a transformers load failure
    (``RuntimeError``/``ValueError`` from ``from_pretrained``, e.g. a size mismatch) into an
    :class:`~edgeadapt.errors.ArtifactError` naming the directory and the fix instead of a traceback.
    edgeadapt's own errors, and failures for anything else, pass through unchanged.

    >>> with explain_load_failure(path):  # doctest: +SKIP
    ...     adapter = load_model(path)
    """
    path = Path(model).expanduser()
    hf_dir = path.is_dir() and (path / "config.json").is_file() and not (path / MANIFEST).is_file()
    try:
        if hf_dir:
            check_hf_checkpoint(path)  # builds the config's model on meta: may raise as from_pretrained would
        yield
    except EdgeAdaptError:
        raise
    except (RuntimeError, ValueError) as exc:
        if not hf_dir:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{path}: transformers cannot load this model directory ({first}). "
                            f"{_EXPORT_HINT}") from None
