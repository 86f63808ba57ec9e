"""``source``: the source (foundation) model as it is, never adapted — not even on a ``labelled``
domain: the floor every method must beat."""

from __future__ import annotations

from edgeadapt.online.methods.base import MethodContext, MethodState


def source(ctx: MethodContext) -> MethodState:
    """Score ``ctx.fm`` on every domain without adapting it."""
    return MethodState("source", lambda d, m=ctx.fm: m, None)

