"""Predict the peak memory of importance scoring before running it, and refuse a run that won't fit.

The prediction counts tensors only (weights, gradients, activations, cached block inputs, the head's
loss), in bytes; the Python/torch runtime (about 0.4 GB RSS on CPU, the CUDA context on a GPU) is
not included. It comes from parameter counts and one block's activation size, derived from the
block's widths (:class:`~edgeadapt.models.spec.BlockSpec`), so nothing runs:

- ``taylor`` / ``fisher``, memory-bounded (the default, :mod:`edgeadapt.pruning.blockwise`):
  weights + the largest block's gradients (plus four copies of its largest matrix while its groups
  are scored: weight and gradient slices, their product, its absolute value) + the cached block
  inputs and their gradients (``(L + 3) * N * B * T * H`` values for ``N`` batches of ``B`` samples
  of ``T`` tokens) + one block's activations + the head's loss graph for one batch;
- ``taylor`` / ``fisher`` by whole-model backward: weights + every gradient + every block's
  activations + the head;
- ``activation``: weights + one block's activations + the logits; ``magnitude``: weights + 2.5
  copies of one block's weights; ``random``: weights.

Block activations use ``B * T * (12 H + 4 A + 4 F) + 3 B n T^2`` values per block (``A`` the attention
width, ``F`` the FFN width, ``n`` query heads), which holds the saved tensors of a pre-norm block
with some margin (``tests/unit/pruning/test_scoring_memory.py`` checks it stays above the measured
peak). The head's loss counts ``B * T * V`` float32 logits three times (logits, log-softmax and its
gradient) for a causal LM, ``B * V`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeadapt.errors import InfeasibleError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.pruning.importance import IMPORTANCES, check_importance

_HIDDEN, _ATTN, _FFN, _SCORES = 12, 4, 4, 3  # values per token (per query head and key for _SCORES)
_LOGIT_COPIES = 3


@dataclass(frozen=True)
class ScoringPeak:
    """Predicted peak of one scoring run, in bytes, by part (``total_bytes`` is their sum)."""

    method: str
    memory_bounded: bool
    weights_bytes: int
    gradient_bytes: int
    activation_bytes: int
    cache_bytes: int
    head_bytes: int

    @property
    def total_bytes(self) -> int:
        return (self.weights_bytes + self.gradient_bytes + self.activation_bytes + self.cache_bytes
                + self.head_bytes)


def _bytes(tensors: object) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _head_width(adapter: ModelAdapter) -> int:
    path = adapter.head()
    if path is None:
        return 0
    weight = getattr(adapter.model.get_submodule(path), "weight", None)
    return 0 if weight is None else int(weight.shape[0])


def tokens_per_sample(adapter: ModelAdapter, batch: dict[str, torch.Tensor]) -> int:
    """Tokens one sample of ``batch`` puts through each block: ``input_ids``' length for text, the
    patches (+1 class token) of the model's ``image_size``/``patch_size`` for images."""
    if "input_ids" in batch:
        return int(batch["input_ids"].shape[-1])
    cfg = adapter.model.config
    return (int(cfg.image_size) // int(cfg.patch_size)) ** 2 + 1


def predict_scoring_peak(adapter: ModelAdapter, method: str, batch_size: int, tokens: int,
                         num_batches: int = 1, memory_bounded: bool = True) -> ScoringPeak:
    """Predicted tensor peak of ``score(adapter, method, batches)`` over ``num_batches`` batches of
    ``batch_size`` samples of ``tokens`` tokens each (see the module doc for the model). The
    element size is the model's parameter dtype (a bf16 model scores in bf16). Raises
    :class:`~edgeadapt.errors.ConfigError` for an unknown method."""
    check_importance(method)
    model = adapter.model
    params = list(model.parameters())
    e = params[0].element_size() if params else 4
    weights = _bytes(params) + _bytes(model.buffers())
    layers: nn.Module = model.get_submodule(adapter.layers_path())
    block_params = [_bytes(layer.parameters()) for layer in layers]
    # scoring a group copies a member's weight and gradient slices and their product: ~4 matrices
    scoring = 4 * max((_bytes([q]) for layer in layers for q in layer.parameters()), default=0)
    hidden = int(adapter.fingerprint()["hidden_size"])
    b, t = batch_size, tokens
    acts = [(b * t * (_HIDDEN * hidden + _ATTN * blk.attention.num_heads * blk.attention.head_dim
                      + _FFN * blk.mlp.width) + _SCORES * b * blk.attention.num_heads * t * t) * e
            for blk in adapter.blocks()]
    logits = b * (t if adapter.task.name == "causal-lm" else 1) * _head_width(adapter) * 4
    zero = {"gradient_bytes": 0, "activation_bytes": 0, "cache_bytes": 0, "head_bytes": 0}
    if method == "random":
        parts = zero
    elif method in ("magnitude", "magnitude-l2"):
        parts = {**zero, "activation_bytes": 5 * max(block_params, default=0) // 2}  # |w|, flat copy, members
    elif method == "activation":
        parts = {**zero, "activation_bytes": max(acts, default=0), "head_bytes": logits}
    elif memory_bounded:
        parts = {"gradient_bytes": max(block_params, default=0) + scoring,
                 "activation_bytes": max(acts, default=0),
                 "cache_bytes": (len(acts) + 3) * num_batches * b * t * hidden * e,
                 "head_bytes": logits * _LOGIT_COPIES}
    else:
        parts = {"gradient_bytes": _bytes(params) + scoring, "activation_bytes": sum(acts), "cache_bytes": 0,
                 "head_bytes": logits * _LOGIT_COPIES}
    return ScoringPeak(method, memory_bounded, weights, **parts)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_scoring_memory(adapter: ModelAdapter, method: str, batch_size: int, tokens: int, num_batches: int,
                         max_memory: int, names: dict[str, str | None], memory_bounded: bool = True
                         ) -> ScoringPeak:
    """The prediction, when it fits in ``max_memory`` bytes; else an
    :class:`~edgeadapt.errors.InfeasibleError` naming a change that fits, found by halving fewer
    calibration batches first, then the batch size, then the tokens, each only when ``names`` gives
    the setting's user-facing name (``{"num_batches": "--calibration-batches", "batch_size":
    "--batch-size", "tokens": None}``), or the smallest budget when no setting helps."""
    peak = predict_scoring_peak(adapter, method, batch_size, tokens, num_batches, memory_bounded)
    if peak.total_bytes <= max_memory:
        return peak
    if not IMPORTANCES[method].needs_batches:
        raise InfeasibleError(f"{method} scoring needs {_gib(peak.total_bytes)} (weights "
                              f"{_gib(peak.weights_bytes)}), over the memory limit {_gib(max_memory)}; "
                              "no calibration setting changes that: raise the limit or load the model "
                              "in bf16")
    asked = {"num_batches": num_batches, "batch_size": batch_size, "tokens": tokens}
    setting = dict(asked)
    for knob in ("num_batches", "batch_size", "tokens"):
        if names.get(knob) is None:
            continue
        while setting[knob] > 1:
            setting[knob] = max(1, setting[knob] // 2)
            trial = predict_scoring_peak(adapter, method, setting["batch_size"], setting["tokens"],
                                         setting["num_batches"], memory_bounded)
            if trial.total_bytes <= max_memory:
                change = ", ".join(f"{names[k]} {setting[k]}" for k in setting if setting[k] != asked[k])
                raise InfeasibleError(
                    f"{method} scoring is predicted to need {_gib(peak.total_bytes)} ({_parts(peak)}), over "
                    f"the memory limit {_gib(max_memory)}; it fits with {change} "
                    f"(predicted {_gib(trial.total_bytes)})")
    smallest = predict_scoring_peak(adapter, method, setting["batch_size"], setting["tokens"],
                                    setting["num_batches"], memory_bounded)
    raise InfeasibleError(f"{method} scoring is predicted to need {_gib(peak.total_bytes)} ({_parts(peak)}), "
                          f"over the memory limit {_gib(max_memory)}, and still {_gib(smallest.total_bytes)} "
                          "with the smallest calibration; raise the limit to at least that, or load the "
                          "model in bf16")


def _parts(peak: ScoringPeak) -> str:
    return (f"weights {_gib(peak.weights_bytes)}, gradients {_gib(peak.gradient_bytes)}, activations "
            f"{_gib(peak.activation_bytes)}, cached block inputs {_gib(peak.cache_bytes)}, head "
            f"{_gib(peak.head_bytes)}")
