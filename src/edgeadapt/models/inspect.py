"""Per-block structure, parameters and FLOPs of an adapted model (``edgeadapt inspect``).

FLOPs count multiply-adds as 2 operations: every projection costs ``2 * in * out`` per token,
and attention adds ``4 * context * heads * head_dim`` per token (scores and weighted values).
Vision models report FLOPs per image (per token × tokens per image); text models per token at
the given context length.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.models.cnn import CNNAdapter, stage_costs
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
    dtype: str = ""  # the weights' dtype(s): "bfloat16", or "float32+bfloat16" (most parameters first)
    weight_bytes: int = 0  # bytes the parameters take at that dtype
    stages: list[str] | None = None  # CNNs: each row's module path (rows are stages, ffn_width = channels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _linear_flops(module: nn.Module) -> int:
    return sum(2 * m.weight.numel() for m in module.modules()
               if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")


def weight_dtype(model: nn.Module) -> dict[str, Any]:
    """``dtype``: the dtype(s) of ``model``'s parameters without ``torch.`` (``"bfloat16"``; a mix as
    ``"float32+bfloat16"``, most parameters first) and ``weight_bytes``: their size in bytes. Models
    load at their checkpoint's dtype (transformers' ``dtype="auto"``), so a bf16 checkpoint shows bf16."""
    count: dict[str, int] = {}
    for p in model.parameters():
        name = str(p.dtype).removeprefix("torch.")
        count[name] = count.get(name, 0) + p.numel()
    return {"dtype": "+".join(sorted(count, key=lambda k: -count[k])),
            "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


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
    model's positions (text models). A CNN's rows are its stages (:func:`inspect_cnn`)."""
    if isinstance(adapter, CNNAdapter):
        return inspect_cnn(adapter)
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
        total_flops=sum(r.flops for r in rows) + head_flops, **weight_dtype(model),
    )


def inspect_cnn(adapter: CNNAdapter) -> Inspection:
    """One row per stage of a CNN (:meth:`~edgeadapt.models.cnn.CNNAdapter.stages`): output channels
    (in ``ffn_width``; heads are 0), parameters and FLOPs per image at the model's ``image_size``."""
    costs, head_flops = stage_costs(adapter)
    rows = [BlockRow(i, 0, 0, c.output_shape[0] if c.output_shape else 0, c.params, c.flops)
            for i, c in enumerate(costs)]
    return Inspection(name=adapter.name, family=adapter.family, task=adapter.task.name, unit="image",
                      context=1, blocks=rows, total_params=_params(adapter.model),
                      total_flops=sum(r.flops for r in rows) + head_flops, stages=[c.path for c in costs],
                      **weight_dtype(adapter.model))


def _human(n: float) -> str:
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(int(n))


def format_inspection(info: Inspection) -> str:
    """A fixed-width table with totals, as printed by ``edgeadapt inspect``."""
    if info.stages is not None:
        return _format_stages(info)
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
    if info.dtype:
        lines.append(f"weights: {info.dtype}, {_human(info.weight_bytes)}B")
    return "\n".join(lines)


def _format_stages(info: Inspection) -> str:
    """The CNN table: one line per stage with its output channels and module path."""
    lines = [f"{info.name}  ({info.family}, {info.task}; FLOPs per image; channel-prunable CNN)",
             f"{'stage':>5} {'channels':>8} {'params':>10} {'FLOPs':>10}  module"]
    for r, path in zip(info.blocks, info.stages or []):
        lines.append(f"{r.index:>5} {r.ffn_width:>8} {_human(r.params):>10} {_human(r.flops):>10}  {path}")
    lines.append(f"{'total':>5} {'':>8} {_human(info.total_params):>10} {_human(info.total_flops):>10}")
    lines.append(f"(total params include the head: {info.total_params:,})")
    if info.dtype:
        lines.append(f"weights: {info.dtype}, {_human(info.weight_bytes)}B")
    return "\n".join(lines)
