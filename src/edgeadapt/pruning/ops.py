"""Physically shrink one projection along its output or input axis.

Handles ``nn.Linear`` (weight ``[out, in]``) and transformers' ``Conv1D`` (weight ``[in, out]``).
Parameters are replaced by new ones holding the selected rows/columns; nothing else changes.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeadapt.models.spec import Axis


def is_transposed(module: nn.Module) -> bool:
    """True for GPT-2 style ``Conv1D`` (weight stored ``[in, out]``)."""
    return type(module).__name__ == "Conv1D"


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as ``[out, in]`` whatever the storage layout (a view, not a copy)."""
    return module.weight.T if is_transposed(module) else module.weight


def keep(module: nn.Module, axis: Axis, index: torch.Tensor) -> None:
    """Keep only features ``index`` (sorted, long) of ``module`` along ``axis``, in place."""
    transposed = is_transposed(module)
    w = module.weight
    dim = (1 if transposed else 0) if axis == "out" else (0 if transposed else 1)
    index = index.to(w.device)
    module.weight = nn.Parameter(w.detach().index_select(dim, index).clone(), requires_grad=w.requires_grad)
    if axis == "out" and getattr(module, "bias", None) is not None:
        b = module.bias
        module.bias = nn.Parameter(b.detach().index_select(0, index).clone(), requires_grad=b.requires_grad)
    n = int(index.numel())
    if transposed:
        if axis == "out":
            module.nf = n
    elif isinstance(module, nn.Linear):
        if axis == "out":
            module.out_features = n
        else:
            module.in_features = n
