"""Per-block structure, parameters and FLOPs of an adapted model (``edgeadapt inspect``).

FLOPs count multiply-adds as 2 operations: every projection costs ``2 * in * out`` per token,
and attention adds ``4 * context * heads * head_dim`` per token (scores and weighted values).
Vision models report FLOPs per image (per token × tokens per image); text models per token at
the given context length.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from edgeadapt.models.adapter import ModelAdapter


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
    return "token", context or min(getattr(config, "max_position_embeddings", 512) or 512, 512)


def inspect_model(adapter: ModelAdapter, context: int | None = None) -> Inspection:
    """Count parameters and FLOPs per block and in total."""
    model = adapter.model
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
