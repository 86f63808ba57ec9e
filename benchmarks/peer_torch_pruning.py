"""Peer baseline for the pruning-fidelity benchmark: structured pruning with torch-pruning.

This module prunes a plain Hugging Face ``BertModel`` (all-MiniLM-L6-v2) with the
published torch-pruning 1.6.1 library (DepGraph, ``tp.pruner.BasePruner``), so that
edgeadapt's own pruner can be compared against an independent, widely used peer.

Configuration chosen to make the comparison fair:

* Same units: ``"ffn"`` removes FFN intermediate neurons only, ``"heads"`` removes whole
  attention heads only (``prune_num_heads=True, prune_head_dims=False``); the residual
  width (hidden size 384), embeddings, LayerNorms and pooler are never touched.
* Same budget: exactly ``round(sparsity * count)`` units are removed in every layer
  (local, uniform pruning; no global ranking across layers). torch-pruning rounds head
  counts up (``ceil``) and channel counts via ``int``, so ratios are derived from the
  exact target count and the result is asserted afterwards.
* Same data and loss: Taylor importance (``GroupTaylorImportance``, |w * dL/dw| summed
  over the coupled group) uses gradients of the caller's ``loss_fn`` accumulated over
  every calibration batch, i.e. the same calibration set and objective edgeadapt uses.
* Same importance family: ``"taylor"`` -> group first-order Taylor, ``"magnitude"`` ->
  group L2 magnitude (``GroupMagnitudeImportance(p=2)``).
* Same iteration: ``iterative_steps=k`` removes the units in ``k`` steps on the linear schedule
  ``round(sparsity * i / k * count)`` (edgeadapt's and torch-pruning's ``linear_scheduler``),
  re-accumulating the Taylor gradients on the shrunken model before every step. Each step is one
  one-shot ``BasePruner`` on the current model: torch-pruning's own ``iterative_steps`` counts local
  head removal as ``ceil(cumulative ratio * current heads)`` (``base_pruner.py``), which overshoots the
  budget (12 heads, 4 steps to 6: 2 + 3 + 3 + 2 = 10 removed), so its channel-exact
  ``linear_scheduler`` is applied here step by step instead.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch_pruning as tp
from transformers import BertModel
from transformers.models.bert.modeling_bert import BertSelfAttention

__all__ = ["prune_with_torch_pruning"]

# Batches may carry extra views (e.g. ``pair_input_ids`` for a contrastive loss); only these
# keys go to the model when tracing the dependency graph.
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _ignored_layers(model: BertModel, target: str) -> list[nn.Module]:
    """Modules torch-pruning must leave untouched so only the chosen units are removed."""
    ignored: list[nn.Module] = [model.embeddings]
    if model.pooler is not None:
        ignored.append(model.pooler)
    ignored += [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    for layer in model.encoder.layer:
        if target == "ffn":
            att = layer.attention
            ignored += [att.self.query, att.self.key, att.self.value, att.output.dense]
        else:
            ignored += [layer.intermediate.dense, layer.output.dense]
    return ignored


def _accumulate_gradients(
    model: BertModel, calibration: list[dict], loss_fn: Callable[[nn.Module, dict], torch.Tensor]
) -> None:
    """Sum d(loss_fn)/dW over all calibration batches into ``.grad`` (for Taylor importance)."""
    model.zero_grad(set_to_none=True)
    for batch in calibration:
        loss = loss_fn(model, batch)
        loss.backward()


def prune_with_torch_pruning(
    model: BertModel,
    target: str,
    sparsity: float,
    importance: str,
    calibration: list[dict],
    loss_fn: Callable[[nn.Module, dict], torch.Tensor],
    iterative_steps: int = 1,
) -> BertModel:
    """Prune ``model`` in place with torch-pruning and return it.

    Args:
        model: a plain HF ``BertModel``; pruned in place.
        target: ``"ffn"`` (FFN intermediate neurons) or ``"heads"`` (whole attention heads).
        sparsity: fraction of FFN neurons / heads removed in each layer, in [0, 1).
        importance: ``"taylor"`` (group Taylor, gradients from ``loss_fn``) or
            ``"magnitude"`` (group L2 magnitude).
        calibration: batches of tensors for ``model(**batch)``; the first one is also
            the example input for dependency-graph tracing.
        loss_fn: ``loss_fn(model, batch) -> scalar`` used for Taylor gradients.
        iterative_steps: prune in this many steps (linear schedule), re-scoring in between.

    Returns:
        The same ``model`` object, with forward-consistent attention attributes.
    """
    if target not in ("ffn", "heads"):
        raise ValueError(f"target must be 'ffn' or 'heads', got {target!r}")
    if importance not in ("taylor", "magnitude"):
        raise ValueError(f"importance must be 'taylor' or 'magnitude', got {importance!r}")
    if not 0.0 <= sparsity < 1.0 or not calibration:
        raise ValueError("need 0 <= sparsity < 1 and at least one calibration batch")
    if iterative_steps < 1:
        raise ValueError(f"iterative_steps must be >= 1, got {iterative_steps}")

    layers = model.encoder.layer
    attns: list[BertSelfAttention] = [layer.attention.self for layer in layers]
    head_dim = attns[0].attention_head_size
    if target == "ffn":
        count = layers[0].intermediate.dense.out_features
        before = [layer.intermediate.dense.out_features for layer in layers]
    else:
        count = attns[0].query.out_features // head_dim
        before = [a.query.out_features // head_dim for a in attns]
    n_remove = round(sparsity * count)
    done = 0
    for i in range(1, iterative_steps + 1):
        upto = n_remove if i == iterative_steps else round(sparsity * i / iterative_steps * count)
        if upto > done:
            _prune_step(model, target, upto - done, importance, calibration, loss_fn)
        done = max(done, upto)

    if target == "ffn":
        after = [layer.intermediate.dense.out_features for layer in layers]
        assert all(layer.output.dense.in_features == w for layer, w in zip(layers, after))
    else:
        after = [a.num_attention_heads for a in attns]
        assert all(layer.attention.output.dense.in_features == h * head_dim for layer, h in zip(layers, after))
    assert after == [b - n_remove for b in before], f"expected {n_remove} removed per layer: {before} -> {after}"
    assert all(a.query.in_features == model.config.hidden_size for a in attns), "hidden size was pruned"
    return model


def _prune_step(model: BertModel, target: str, n_remove: int, importance: str, calibration: list[dict],
                loss_fn: Callable[[nn.Module, dict], torch.Tensor]) -> None:
    """One one-shot torch-pruning pass removing ``n_remove`` more units per layer of the current
    model, scored on it (Taylor: gradients accumulated afresh)."""
    layers = model.encoder.layer
    attns: list[BertSelfAttention] = [layer.attention.self for layer in layers]
    head_dim = attns[0].attention_head_size
    count = layers[0].intermediate.dense.out_features if target == "ffn" else attns[0].num_attention_heads
    # torch-pruning removes ceil(r*count) heads and count - int(count*(1-r)) channels;
    # a ratio half a unit below the exact target makes both yield exactly n_remove.
    ratio = (n_remove - 0.5) / count

    was_training = model.training
    model.eval()  # deterministic trace for the dependency graph
    kwargs: dict = {}
    if target == "heads":
        kwargs = dict(
            num_heads={lin: a.num_attention_heads for a in attns for lin in (a.query, a.key, a.value)},
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=ratio,
        )
    imp = tp.importance.GroupTaylorImportance() if importance == "taylor" else tp.importance.GroupMagnitudeImportance(p=2)
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs={k: v for k, v in calibration[0].items() if k in _MODEL_INPUTS},
        importance=imp,
        global_pruning=False,
        # For "heads" this only has to be > 0: the head branch runs inside the width loop,
        # while prune_head_dims=False keeps every remaining head at its full width.
        pruning_ratio=ratio,
        ignored_layers=_ignored_layers(model, target),
        **kwargs,
    )

    if importance == "taylor":
        saved_flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(True)
        _accumulate_gradients(model, calibration, loss_fn)
        for p, flag in zip(model.parameters(), saved_flags):
            p.requires_grad_(flag)
    pruner.step()
    model.zero_grad(set_to_none=True)
    model.train(was_training)

    # Keep BertSelfAttention's bookkeeping consistent with the pruned Linear widths.
    for a in attns:
        assert a.query.out_features == a.key.out_features == a.value.out_features
        assert a.query.out_features % head_dim == 0 and a.attention_head_size == head_dim
        a.num_attention_heads = a.query.out_features // head_dim
        a.all_head_size = a.num_attention_heads * head_dim
