"""``static``: the source model pruned once to the proxy's width (magnitude) and fine-tuned on the
source data, then retrained on every domain with our loss under the edge's memory measures: what a
device gets without a knowledge base to cut a fresh proxy from. On a ``labelled`` domain our loss is
the task loss (cross-entropy) plus source replay (:func:`~edgeadapt.online.methods.base.our_loss`)."""

from __future__ import annotations

from edgeadapt.errors import ConfigError
from edgeadapt.online.methods.base import MethodContext, MethodState, our_loss


def static(ctx: MethodContext) -> MethodState:
    """The model ``ctx.static_model()`` builds, retrained with our loss; refused without that builder."""
    if ctx.static_model is None:
        raise ConfigError("methods: 'static' needs a statically pruned model")
    model = ctx.static_model()
    return MethodState("static", lambda d, m=model: m,
                       our_loss(ctx), trainable=ctx.trainable,
                       constrained=True)

