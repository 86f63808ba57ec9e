"""``edgeadapt``, the product's method: per domain, a proxy cut from the knowledge base for the
current window (:func:`~edgeadapt.online.proxy.extract_proxy`), retrained with our loss under the
edge's memory measures, then synced back into the knowledge base and a copy of the foundation model
(:func:`~edgeadapt.online.sync.sync`), so the next domain's proxy starts from what was learned.

A label-free safeguard (:mod:`edgeadapt.online.safeguard`) judges every update on the unlabeled
window before it is scored: a rejected update is dropped — the proxy as extracted (before this
domain's retraining) is scored, and nothing is synced, so the KB and the edge FM stay as they were.
Settings: ``method_options: {edgeadapt: {safeguard: {...}}}``
(:class:`~edgeadapt.online.safeguard.SafeguardConfig`; ``{enabled: false}`` turns it off). Classifiers
only: its criteria read class predictions, so other tasks adapt without it."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch

from edgeadapt.data.stream import DomainData
from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import HFAdapter
from edgeadapt.online.methods.base import MethodContext, MethodState, our_loss
from edgeadapt.online.proxy import extract_proxy
from edgeadapt.online.retrain import unlabeled
from edgeadapt.online.safeguard import SafeguardConfig, judge
from edgeadapt.online.sync import sync

OPTIONS = ("safeguard",)  # what method_options["edgeadapt"] may set


def edgeadapt(ctx: MethodContext) -> MethodState:
    """Proxy → retrain → (safeguard) → sync per domain; needs ``ctx.kb`` (the knowledge base)."""
    if ctx.kb is None:
        raise ConfigError("methods: 'edgeadapt' needs a knowledge base (run `edgeadapt offline all`)")
    options = dict(ctx.options.get("edgeadapt", {}))
    stray = sorted(set(options) - set(OPTIONS))
    if stray:
        raise ConfigError(f"method options: edgeadapt takes {list(OPTIONS)}, not {stray}")
    guard = options.get("safeguard")
    try:
        guard = guard if isinstance(guard, SafeguardConfig) else SafeguardConfig(**dict(guard or {}))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"method options: edgeadapt.safeguard: {exc}") from None
    # the criteria read class predictions: a language model or an encoder adapts without the safeguard
    guarded = guard.enabled and getattr(getattr(ctx.fm, "task", None), "name", "") == "classification"
    kb, width = ctx.kb, ctx.width
    edge_fm = copy.deepcopy(ctx.fm)
    holder: dict[str, Any] = {}

    def prepare(d: DomainData) -> HFAdapter:
        holder["proxy"] = extract_proxy(kb, unlabeled(d.adapt.batches(256)), width)
        holder["accepted"] = True
        if guarded:  # the model before this domain's retraining, to return to
            holder["previous"] = copy.deepcopy(holder["proxy"].adapter)
        return holder["proxy"].adapter

    def settle(model: HFAdapter, window: Iterable[dict[str, torch.Tensor]]) -> HFAdapter:
        verdict = judge(model, holder["previous"], window, guard, reference=ctx.fm)
        holder["accepted"] = verdict.accepted
        state.notes.update(verdict.row())
        return model if verdict.accepted else holder.pop("previous")

    def finish(_model: HFAdapter) -> None:
        holder.pop("previous", None)
        holder["proxy"].adapter.model.cpu()
        if holder["accepted"]:  # a rejected update leaves the KB and the edge FM as they were
            sync(kb, holder["proxy"], edge_fm)

    state = MethodState("edgeadapt", prepare, our_loss(ctx), trainable=ctx.trainable, finish=finish,
                        constrained=True, settle=settle if guarded else None)
    return state
