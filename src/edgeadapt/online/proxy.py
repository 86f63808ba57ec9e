"""Proxy extraction: cut an ordinary small model out of the knowledge base for the current data.

The gates of the knowledge base (KB) say, per input, which heads and neurons matter. Over a window
of current samples their saliency is averaged; per block the most salient units are kept, the KB
is physically shrunk to them (:func:`edgeadapt.pruning.apply.apply_plan`, so the proxy is an
ordinary model of the KB's kind — Hugging Face or a custom ``ModelAdapter`` — with a plan relative
to the KB) and each kept unit's mean gate value is folded
into the output-projection columns it feeds. The plan doubles as the index map back into the KB.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.offline.gates import gate_point, kwta
from edgeadapt.offline.knowledge_base import KnowledgeBase, units_at
from edgeadapt.online.retrain import step_memory
from edgeadapt.pruning import ops
from edgeadapt.pruning.apply import apply_plan, meta_copy, params_under
from edgeadapt.pruning.groups import num_units
from edgeadapt.pruning.plan import BlockPlan, PruningPlan
from edgeadapt.training.device import resolve_device

Batch = dict[str, torch.Tensor]


@dataclass
class WindowSaliency:
    """Per block, the mean gate value (saliency × k-WTA mask) and mean raw saliency of each unit."""

    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]
    heads_raw: list[torch.Tensor]
    neurons_raw: list[torch.Tensor]
    samples: int


@torch.no_grad()
def window_saliency(kb: KnowledgeBase, window: Iterable[Batch], width: float = 1.0) -> WindowSaliency:
    """Aggregate gate saliency over every sample of ``window`` with the KB running at ``width``."""
    kb.set_width(width)
    kb.adapter.model.eval()
    kb.gates.eval()
    device = next(kb.adapter.model.parameters()).device
    n_blocks = len(kb.gates.gates)
    sums: dict[str, list[torch.Tensor | float]] = {k: [0.0] * n_blocks for k in ("h", "n", "hr", "nr")}
    count = 0
    for batch in window:
        batch = {k: v.to(device) for k, v in batch.items()}
        kb.adapter.logits(batch)  # one forward: the gates record their saliency in kb.gates.last
        for pos, (h, n) in enumerate(kb.gates.last):
            for key, sal in (("h", h), ("n", n)):
                k = units_at(width, sal.shape[-1])
                sums[key][pos] = sums[key][pos] + (sal * kwta(sal, k)).sum(0)
                sums[key + "r"][pos] = sums[key + "r"][pos] + sal.sum(0)
        count += len(next(iter(batch.values())))
    kb.set_width(1.0)
    if count == 0:
        raise ConfigError("window is empty: proxy extraction needs at least one current sample")
    mean = {k: [torch.as_tensor(v).cpu() / count for v in vals] for k, vals in sums.items()}
    return WindowSaliency(mean["h"], mean["n"], mean["hr"], mean["nr"], count)


def plan_from_saliency(kb: KnowledgeBase, sal: WindowSaliency, width: float) -> PruningPlan:
    """Keep the top ``width`` fraction of heads and neurons per block by mean saliency over the
    window — the same rule the gates apply to a batch (``pooling="batch"``), so the proxy is the
    KB at that width with the window as its batch."""
    arch = kb.adapter.fingerprint()
    blocks = []
    for pos, block in enumerate(kb.adapter.blocks()):
        kept = []
        for values in (sal.heads_raw[pos], sal.neurons_raw[pos]):
            k = units_at(width, len(values))
            # stable: among equal values the earlier (more important) KB unit wins
            order = sorted(range(len(values)), key=lambda i: (-float(values[i]), i))
            kept.append(sorted(order[:k]))
        blocks.append(BlockPlan(block.index, kept[0], kept[1]))
    return PruningPlan(arch, blocks).validate(arch)


@dataclass
class Proxy:
    """A small model cut from the KB: the adapter, its plan (KB-relative indices) and folded scales."""

    adapter: ModelAdapter
    plan: PruningPlan
    saliency: WindowSaliency


def extract_proxy(kb: KnowledgeBase, window: Iterable[Batch], width: float) -> Proxy:
    """The proxy for ``window`` at ``width`` (fraction of heads and neurons kept in every block)."""
    sal = window_saliency(kb, window, width)
    plan = plan_from_saliency(kb, sal, width)
    kb.gates.detach()  # hooks must not be copied into the proxy
    try:
        proxy = copy.deepcopy(kb.adapter)
    finally:
        kb.gates.attach(kb.adapter)
    proxy.model.cpu()
    apply_plan(proxy, plan)
    with torch.no_grad():
        for pos, (block, bplan) in enumerate(zip(proxy.blocks(), plan.blocks)):
            for kind, kept, raw in (("heads", bplan.heads, sal.heads_raw[pos]),
                                    ("neurons", bplan.neurons, sal.neurons_raw[pos])):
                point = gate_point(block, kind)
                weight = ops.weight_matrix(proxy.model.get_submodule(point.module))
                for local, unit in enumerate(kept):
                    weight[:, point.index[local]] *= raw[unit].to(weight.dtype)
    return Proxy(proxy, plan, sal)


# -- budgets -----------------------------------------------------------------------------------
# A budget is a width, a parameter count or bytes of retraining memory. Parameters and memory are
# monotone in the width, so the widest proxy that fits is found by bisection over the widths at
# which some block's unit count changes. An infeasible budget names the smallest feasible one.


def candidate_widths(kb: KnowledgeBase) -> list[float]:
    """Every width at which a block keeps a different number of heads or neurons, ascending."""
    sizes = {num_units(b, k) for b in kb.adapter.blocks() for k in ("heads", "neurons")}
    return sorted({k / n for n in sizes for k in range(1, n + 1)})


def _first_units_plan(kb: KnowledgeBase, width: float) -> PruningPlan:
    arch = kb.adapter.fingerprint()
    return PruningPlan(arch, [BlockPlan(b.index, list(range(units_at(width, num_units(b, "heads")))),
                                        list(range(units_at(width, num_units(b, "neurons")))))
                              for b in kb.adapter.blocks()])


def _meta_copy(kb: KnowledgeBase) -> ModelAdapter:
    """A weightless (meta-device) copy of the KB's model, for counting shapes."""
    kb.gates.detach()
    try:
        return meta_copy(kb.adapter)
    finally:
        kb.gates.attach(kb.adapter)


def proxy_params(kb: KnowledgeBase, width: float, _meta: ModelAdapter | None = None) -> int:
    """Parameters of a proxy at ``width`` (independent of which units are kept)."""
    return params_under(_meta if _meta is not None else _meta_copy(kb), _first_units_plan(kb, width))


def width_for_budget(kb: KnowledgeBase, cost: Callable[[float], int], limit: int, name: str,
                     unit: str = "parameters") -> float:
    """The widest candidate width whose ``cost`` is at most ``limit``; a ``ValueError`` naming the
    smallest feasible budget (the cost at the narrowest width) when none fits."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {limit!r}")
    widths = candidate_widths(kb)
    smallest = cost(widths[0])
    if smallest > limit:
        raise ConfigError(f"{name}={limit:,} is infeasible: the smallest proxy (one head and one FFN neuron "
                         f"per block) needs {smallest:,} {unit}; set {name} >= {smallest:,}")
    lo, hi = 0, len(widths) - 1  # invariant: widths[lo] fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(widths[mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return widths[lo]


def width_for_params(kb: KnowledgeBase, params: int, name: str = "proxy_params") -> float:
    """The widest proxy with at most ``params`` parameters."""
    meta = _meta_copy(kb)
    return width_for_budget(kb, lambda w: proxy_params(kb, w, meta), params, name)


def proxy_step_memory(kb: KnowledgeBase, width: float, loss: Callable[[ModelAdapter], Any], batch: Batch,
                      lr: float = 3e-4, device: str = "auto", checkpointing: bool = False) -> int:
    """Peak bytes of one retraining step of a proxy at ``width`` (parameters, gradients, AdamW state
    and activations), measured on a proxy with the first units of every block."""
    kb.gates.detach()
    try:
        probe = copy.deepcopy(kb.adapter)
    finally:
        kb.gates.attach(kb.adapter)
    probe.model.cpu()
    apply_plan(probe, _first_units_plan(kb, width))
    return step_memory(probe, loss(probe), batch, lr, resolve_device(device), checkpointing)


def width_for_memory(kb: KnowledgeBase, memory_bytes: int, loss: Callable[[ModelAdapter], Any], batch: Batch,
                     lr: float = 3e-4, device: str = "auto", checkpointing: bool = False,
                     name: str = "proxy_memory_bytes") -> float:
    """The widest proxy whose retraining step (with ``loss`` on ``batch``) peaks at most ``memory_bytes``."""
    cache: dict[float, int] = {}

    def cost(w: float) -> int:
        if w not in cache:
            cache[w] = proxy_step_memory(kb, w, loss, batch, lr, device, checkpointing)
        return cache[w]

    return width_for_budget(kb, cost, memory_bytes, name, unit="bytes of retraining memory")
