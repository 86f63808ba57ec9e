"""Gradient scoring one block at a time, so peak memory is the weights plus one block's gradients and
activations instead of the weights, every gradient and every block's activations at once.

The full-model gradient a Taylor/Fisher score needs is taken exactly, by a backward that walks the
blocks from last to first (the model's own forward, cut at every block boundary by hooks):

1. **Forward, per calibration batch.** ``adapter.task_loss`` runs as usual, but each block's output
   is replaced by a detached copy (a forward hook), so no block's autograd graph outlives its call;
   a pre-hook caches each call's inputs (hidden state ``[B, T, H]`` and the shared kwargs: masks,
   rotary tables). The loss's gradient w.r.t. the last block's output comes from the head alone.
2. **Backward, block by block.** For block ``i`` from last to first, every cached call is recomputed
   with gradients and back-propagated with the incoming gradient; the block's parameter gradients
   accumulate over batches exactly as a whole-model ``backward`` per batch accumulates them, are
   turned into scores, and are freed before block ``i - 1``. The gradient w.r.t. the block's input
   is what block ``i - 1`` receives.

Memory: weights + one block's gradients + one block's activations + the cached block inputs and
their gradients (``(L + 1) * B * T * H`` values per batch, small beside the weights) + the head's
loss graph for one batch. Compute: one extra forward (about 4/3 of a plain forward + backward).

When the blocks are not a plain chain (a block's input is not the previous block's output, a cached
input carries a gradient from outside the block, or a recomputed output differs from the forward's),
:func:`blockwise_gradient_scores` returns ``None`` and the caller uses the whole-model backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.models.spec import BlockSpec

Batch = dict[str, torch.Tensor]
Scores = dict[str, list[torch.Tensor]]
_PLAIN = (torch.Tensor, int, float, bool, str, type(None), torch.dtype, torch.device)


class Collector(Protocol):
    """Per-sample hooks on one block (``importance._PerSampleTerms`` over ``[block]``)."""

    def remove(self) -> None: ...

    def accumulate(self, totals: Scores) -> int: ...


UnitTerms = Callable[[BlockSpec], dict[str, torch.Tensor]]
"""Per kind, one block's first-order unit scores from the gradients now in ``.grad``."""
NewCollector = Callable[[BlockSpec], Collector]


class NotAChain(Exception):
    """The model's blocks cannot be recomputed one at a time; score with the whole-model backward."""


@dataclass
class _Call:
    """One call of one block: its inputs with the hidden state at ``where`` (an index or a name)."""

    args: tuple
    kwargs: dict
    where: int | str

    def run(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        args, kwargs = list(self.args), dict(self.kwargs)
        if isinstance(self.where, int):
            args[self.where] = hidden
        else:
            kwargs[self.where] = hidden
        return _first(layer(*args, **kwargs))

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[self.where] if isinstance(self.where, int) else self.kwargs[self.where]


@dataclass
class _Forward:
    """What one calibration batch's cut forward leaves: per block, its calls; per call of the last
    block, its output and the loss's gradient w.r.t. it."""

    calls: list[list[_Call]]
    outputs: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)


def _first(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out  # type: ignore[return-value]


def _plain(value: object) -> object:
    """A cached kwarg: tensors detached; objects a block mutates (a KV cache) dropped, since the
    recomputation must see what the first call saw (an empty cache)."""
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            raise NotAChain("a block input other than the hidden state carries a gradient")
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    return value if isinstance(value, _PLAIN) else None


def _cut_forward(adapter: ModelAdapter, layers: nn.ModuleList, batch: Batch) -> _Forward:
    """Run ``task_loss`` with every block cut from the graph; cache block inputs (see module doc)."""
    n = len(layers)
    record = _Forward(calls=[[] for _ in range(n)])
    produced: list[list[torch.Tensor]] = [[] for _ in range(n)]

    def pre(i: int) -> Callable:
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            where: int | str = 0 if args else "hidden_states"
            hidden = args[0] if args else kwargs.get("hidden_states")
            if not isinstance(hidden, torch.Tensor):
                raise NotAChain(f"block {i} was called without a hidden-state tensor")
            call = len(record.calls[i])
            if i > 0 and (call >= len(produced[i - 1]) or produced[i - 1][call] is not hidden):
                raise NotAChain(f"block {i}'s input is not block {i - 1}'s output")
            rest_args = tuple(hidden.detach() if j == 0 else _plain(a) for j, a in enumerate(args))
            rest_kwargs = {k: hidden.detach() if k == where else _plain(v) for k, v in kwargs.items()}
            record.calls[i].append(_Call(rest_args, rest_kwargs, where))
        return hook

    def post(i: int) -> Callable:
        def hook(_m: nn.Module, _args: tuple, _kwargs: dict, out: object) -> object:
            y = _first(out)
            cut = y.detach().requires_grad_(i == n - 1)
            produced[i].append(cut)
            return (cut, *out[1:]) if isinstance(out, tuple) else cut
        return hook

    handles = [h for i, layer in enumerate(layers)
               for h in (layer.register_forward_pre_hook(pre(i), with_kwargs=True),
                         layer.register_forward_hook(post(i), with_kwargs=True))]
    try:
        loss = adapter.task_loss(batch)
    finally:
        for h in handles:
            h.remove()
    if len({len(c) for c in record.calls}) != 1 or not record.calls[0]:
        raise NotAChain("blocks were called a different number of times")
    record.outputs = [t.detach() for t in produced[-1]]
    grads = torch.autograd.grad(loss, produced[-1], allow_unused=True)
    record.grads = [torch.zeros_like(t) if g is None else g for t, g in zip(produced[-1], grads)]
    return record


def _layer_term(layer: nn.Module) -> float:
    return sum((q * q.grad).sum().item() for q in layer.parameters() if q.grad is not None)


def _backward_block(layer: nn.Module, forward: _Forward, i: int, outputs: Sequence[torch.Tensor],
                    grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Recompute every call of block ``i`` in one batch and back-propagate ``grads`` (one per call):
    parameter gradients accumulate into ``.grad``; returns the gradients w.r.t. the block's inputs.
    ``outputs`` are what the forward produced, checked against the recomputation."""
    into = []
    for call, expect, g in zip(forward.calls[i], outputs, grads):
        x = call.hidden.detach().requires_grad_(True)
        y = call.run(layer, x)
        if y.shape != expect.shape or not torch.allclose(y.detach(), expect, rtol=1e-4, atol=1e-5):
            raise NotAChain(f"block {i} recomputed differs from its forward")
        torch.autograd.backward(y, g)
        into.append(torch.zeros_like(x) if x.grad is None else x.grad)
    return into


def blockwise_gradient_scores(adapter: ModelAdapter, batches: Sequence[Batch], unit_terms: UnitTerms,
                              new_collector: NewCollector | None = None, progress: bool = False,
                              desc: str = "scoring") -> tuple[Scores, torch.Tensor, int, int]:
    """Per-block gradient scores of ``adapter`` over ``batches`` (model in eval mode, grads cleared).

    Returns ``(totals, layer_total, samples, n_batches)`` in the units of the whole-model path of
    :mod:`edgeadapt.pruning.importance`: for first order (no ``new_collector``) ``totals`` are
    ``sum |w * sum_b g_b|`` per unit and ``layer_total`` is ``|sum w * sum_b g_b|`` per block (not yet
    divided by the batch count); with ``new_collector`` (second order) they are the summed squared per-sample
    terms and the summed squared per-batch block terms. Raises :class:`NotAChain` (before any
    score is returned) when the model cannot be walked block by block. ``progress`` shows a bar
    over the blocks (``desc`` its label)."""
    squared = new_collector is not None
    layers = adapter.model.get_submodule(adapter.layers_path())
    blocks = adapter.blocks()
    forwards = [_cut_forward(adapter, layers, b) for b in batches]
    n = len(layers)
    outputs = [f.outputs for f in forwards]
    grads = [f.grads for f in forwards]
    totals: Scores = {"heads": [torch.empty(0)] * n, "neurons": [torch.empty(0)] * n}
    layer_total = torch.zeros(n)
    samples = 0
    for i in tqdm(list(reversed(range(n))), desc=desc, disable=not progress, leave=False):
        layer, block = layers[i], blocks[i]
        layer.zero_grad(set_to_none=True)
        if squared:
            acc = {"heads": [torch.zeros(block.attention.num_units)],
                   "neurons": [torch.zeros(block.mlp.width)]}
        for b, forward in enumerate(forwards):
            if squared:
                layer.zero_grad(set_to_none=True)
                collector = new_collector(block)
            try:
                into = _backward_block(layer, forward, i, outputs[b], grads[b])
            finally:
                if squared:
                    collector.remove()
            if squared:
                with torch.no_grad():
                    counted = collector.accumulate(acc)
                    samples += counted if i == 0 else 0
                    layer_total[i] += _layer_term(layer) ** 2
            outputs[b] = [c.hidden for c in forward.calls[i]]
            grads[b] = into
        with torch.no_grad():
            if squared:
                totals["heads"][i], totals["neurons"][i] = acc["heads"][0], acc["neurons"][0]
            else:
                part = unit_terms(block)
                totals["heads"][i], totals["neurons"][i] = part["heads"], part["neurons"]
                layer_total[i] = abs(_layer_term(layer))
        layer.zero_grad(set_to_none=True)
    return totals, layer_total, samples, len(forwards)
