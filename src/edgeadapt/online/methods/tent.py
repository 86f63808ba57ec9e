"""``tent``: TENT (Wang et al., ICLR 2021), entropy minimisation on the full model's norm affines.

No memory budget (an unconstrained reference) and no guard against collapse: on low-contrast or
foggy domains it can drive the model to one class (DESIGN.md §5). Label-free by definition: on a
``labelled`` domain it ignores the labels and keeps minimising entropy, so it cannot learn new
classes (EATA and SAR likewise)."""

from __future__ import annotations

import copy

from edgeadapt.online.losses import tent_loss
from edgeadapt.online.methods.base import MethodContext, MethodState


def tent(ctx: MethodContext) -> MethodState:
    """A copy of ``ctx.fm`` adapted continually with the mean prediction entropy."""
    model = copy.deepcopy(ctx.fm)
    return MethodState("tent", lambda d, m=model: m, tent_loss, trainable="norm")

