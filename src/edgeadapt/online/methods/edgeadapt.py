"""``edgeadapt``, the product's method: per domain, a proxy cut from the knowledge base for the
current window (:func:`~edgeadapt.online.proxy.extract_proxy`), retrained with our loss under the
edge's memory measures, then synced back into the knowledge base and a copy of the foundation model
(:func:`~edgeadapt.online.sync.sync`), so the next domain's proxy starts from what was learned."""

from __future__ import annotations

import copy
from typing import Any

from edgeadapt.data.stream import DomainData
from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import HFAdapter
from edgeadapt.online.methods.base import MethodContext, MethodState, our_loss
from edgeadapt.online.proxy import extract_proxy
from edgeadapt.online.retrain import unlabeled
from edgeadapt.online.sync import sync


def edgeadapt(ctx: MethodContext) -> MethodState:
    """Proxy → retrain → sync per domain; needs ``ctx.kb`` (the knowledge base)."""
    if ctx.kb is None:
        raise ConfigError("methods: 'edgeadapt' needs a knowledge base (run `edgeadapt offline all`)")
    kb, width = ctx.kb, ctx.width
    edge_fm = copy.deepcopy(ctx.fm)
    holder: dict[str, Any] = {}

    def prepare(d: DomainData) -> HFAdapter:
        holder["proxy"] = extract_proxy(kb, unlabeled(d.adapt.batches(256)), width)
        return holder["proxy"].adapter

    def finish(_model: HFAdapter) -> None:
        holder["proxy"].adapter.model.cpu()
        sync(kb, holder["proxy"], edge_fm)

    return MethodState("edgeadapt", prepare, our_loss(ctx),
                       trainable=ctx.trainable, finish=finish, constrained=True)

