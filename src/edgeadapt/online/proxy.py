"""Proxy extraction: cut an ordinary small model out of the knowledge base for the current data.

The gates of the knowledge base (KB) say, per input, which heads and neurons matter. Over a window
of current samples their saliency is averaged; per block the most salient units are kept, the KB
is physically shrunk to them (:func:`edgeadapt.pruning.apply.apply_plan`, so the proxy is a plain
Hugging Face model with a plan relative to the KB) and each kept unit's mean gate value is folded
into the output-projection columns it feeds. The plan doubles as the index map back into the KB.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from edgeadapt.models.adapter import HFAdapter
from edgeadapt.models.tasks import model_inputs
from edgeadapt.offline.gates import _gate_point, kwta
from edgeadapt.offline.knowledge_base import KnowledgeBase, units_at
from edgeadapt.pruning import ops
from edgeadapt.pruning.apply import apply_plan
from edgeadapt.pruning.plan import BlockPlan, PruningPlan

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
        kb.adapter.model(**model_inputs(batch))
        for pos, (h, n) in enumerate(kb.gates.last):
            for key, sal in (("h", h), ("n", n)):
                k = units_at(width, sal.shape[-1])
                sums[key][pos] = sums[key][pos] + (sal * kwta(sal, k)).sum(0)
                sums[key + "r"][pos] = sums[key + "r"][pos] + sal.sum(0)
        count += len(next(iter(batch.values())))
    kb.set_width(1.0)
    if count == 0:
        raise ValueError("window is empty: proxy extraction needs at least one current sample")
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

    adapter: HFAdapter
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
                point = _gate_point(proxy, block, kind)
                weight = ops.weight_matrix(proxy.model.get_submodule(point.module))
                for local, unit in enumerate(kept):
                    weight[:, point.index[local]] *= raw[unit].to(weight.dtype)
    return Proxy(proxy, plan, sal)
