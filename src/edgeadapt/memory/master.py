"""Plan retraining at the precision it really runs in: float32 master weights for a bf16/fp16 model.

``train`` (:func:`~edgeadapt.training.loop.fit`) and ``adapt`` (the online stage's retraining) train
a bf16/fp16 checkpoint on float32 master weights (:func:`~edgeadapt.numerics.fp32_master`): its
weights, gradients, optimizer state and activations are all float32 while it trains. A plan
profiled, measured or probed at the checkpoint's own dtype therefore under-predicts the real
peak (by 1.9x on a tiny bf16 ViT: 423 KiB predicted, 789 KiB trained). :func:`on_master_weights`
runs a planning entry point (:func:`~edgeadapt.memory.profile.profile`,
:func:`~edgeadapt.memory.estimator.measure`, :func:`~edgeadapt.memory.search.search`) inside
the same :func:`~edgeadapt.numerics.fp32_master` block, so the rule that decides the training
precision lives in one place; a float32 model passes through untouched, and a nested call (a
search profiling and measuring) is a no-op. :func:`trained_dtype` names the dtype that training,
and so the plan, runs at.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

import torch

from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.numerics import floating_dtype, fp32_master, master_dtype

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["on_master_weights", "trained_dtype"]


AdapterFn = Callable[Concatenate[ModelAdapter, P], R]


def on_master_weights(fn: AdapterFn[P, R]) -> AdapterFn[P, R]:
    """Wrap ``fn(adapter, ...)`` so it runs with ``adapter.model``'s bf16/fp16 parameters and buffers
    cast to float32 (:func:`~edgeadapt.numerics.fp32_master`), as ``train`` and ``adapt`` train
    them, and cast back to their own dtype afterwards (also on an exception)."""
    @functools.wraps(fn)
    def wrapper(adapter: ModelAdapter, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with fp32_master(adapter.model):
            return fn(adapter, *args, **kwargs)
    return wrapper


def trained_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype ``model`` trains in (and the memory planner predicts at): float32 for a bf16/fp16
    checkpoint (float32 master weights), else its weights' own."""
    return master_dtype(floating_dtype(model))
