"""``full``: the whole source model retrained with our adaptation loss, without a memory budget (the
unconstrained reference edgeadapt's proxy is compared against). On a ``labelled`` domain our loss is
the task loss (cross-entropy) plus source replay (:func:`~edgeadapt.online.methods.base.our_loss`)."""

from __future__ import annotations

import copy

from edgeadapt.online.methods.base import MethodContext, MethodState, our_loss


def full(ctx: MethodContext) -> MethodState:
    """A copy of ``ctx.fm`` retrained with :func:`~edgeadapt.online.losses.adaptation_loss`."""
    model = copy.deepcopy(ctx.fm)
    return MethodState("full", lambda d, m=model: m,
                       our_loss(ctx), trainable=ctx.trainable)

