"""Peer baseline for the LLM pruning benchmark: torch-pruning on Llama-architecture causal LMs.

The LLM counterpart of ``peer_torch_pruning.py`` (read it for the fairness rules), for Hugging
Face ``LlamaForCausalLM`` (and the other families in edgeadapt's ``llama`` table: Mistral,
Qwen2), pruned with the published torch-pruning 1.6.1 library:

* Same units: ``"neurons"`` removes FFN intermediate channels (gate/up rows and down columns
  together); ``"heads"`` removes whole KV groups (one KV head with all of its query heads and
  their ``o_proj`` columns), keeping ``head_dim``. Embeddings, ``lm_head``, norms and the hidden
  size are never touched.
* Same budget: exactly ``round(sparsity * count)`` units per layer (local, uniform pruning),
  asserted afterwards.
* Same data and loss: ``"taylor"`` is ``GroupTaylorImportance`` on gradients of the caller's
  ``loss_fn`` summed over every calibration batch; ``"magnitude"`` is
  ``GroupMagnitudeImportance(p=2)``; ``"random"`` is ``RandomImportance``.

Neurons go through torch-pruning end to end: ``tp.pruner.BasePruner`` traces the model, builds the
gate/up/down group itself, scores and prunes it.

Heads: **limitation of torch-pruning 1.6.1 with grouped-query attention.** Its tracer cannot
build the attention groups of HF Llama with GQA (checked with transformers 5.23, SDPA and eager
attention): ``get_pruning_group`` on ``q_proj``/``k_proj`` never returns, because the attention
op is traced as element-wise, coupling e.g. 64 query channels 1:1 with 32 key channels, and the
out-of-range indices then grow forever round the RoPE slice/cat cycle; the ``v_proj`` group stops
at ``repeat_kv`` and never reaches ``o_proj``, so ``BasePruner`` with ``num_heads`` hangs. Even
by design, its GQA branch (as in its ``examples/LLMs/prune_llm.py``) only drops query heads
inside each KV group and keeps every KV head: it has no notion of removing a whole KV group.
Without GQA (``num_key_value_heads == num_attention_heads``) its traced groups are correct.

The closest faithful option, used with and without GQA: the coupling is declared by hand as a
``tp.Group`` (``q``/``k``/``v`` output channels and ``o_proj`` input channels, each k/v channel
repeated for every query head that reads it, exactly as ``repeat_kv`` does), scored by the same
``tp.importance`` classes with torch-pruning's own head averaging (channel scores -> mean per
query head), averaged once more per KV group, and pruned by torch-pruning's
``prune_linear_out_channels``/``prune_linear_in_channels``. Without GQA this selects exactly the
heads ``BasePruner`` selects (tested).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp

from edgeadapt.models.adapter import ArchSpec
from edgeadapt.models.families import family_for

__all__ = ["prune_llama_with_torch_pruning"]

# Only these batch keys go to the model when torch-pruning traces it.
_MODEL_INPUTS = ("input_ids", "attention_mask")
_TARGETS = ("neurons", "heads")
_IMPORTANCES = {
    "taylor": tp.importance.GroupTaylorImportance,
    "magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "random": tp.importance.RandomImportance,
}


@dataclass(frozen=True)
class _Block:
    """The prunable modules of one decoder layer, resolved from the family's ArchSpec table."""

    attention: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    mlp: nn.Module
    mlp_inputs: tuple[nn.Linear, ...]
    mlp_output: nn.Linear


def _blocks(model: nn.Module, spec: ArchSpec) -> list[_Block]:
    layers = model.base_model.get_submodule(spec.layers)
    return [_Block(b.get_submodule(spec.attention), b.get_submodule(spec.q), b.get_submodule(spec.k),
                   b.get_submodule(spec.v), b.get_submodule(spec.o),
                   b.get_submodule(spec.mlp_output.rpartition(".")[0]),
                   tuple(b.get_submodule(p) for p in spec.mlp_inputs), b.get_submodule(spec.mlp_output))
            for b in layers]


def _targets(target: str | Sequence[str]) -> set[str]:
    names = set(_TARGETS) if target == "both" else {target} if isinstance(target, str) else set(target)
    if not names or not names <= set(_TARGETS):
        raise ValueError(f"target must be 'neurons', 'heads', 'both' or a list of those, got {target!r}")
    return names


def _accumulate_gradients(model: nn.Module, calibration: list[dict],
                          loss_fn: Callable[[nn.Module, dict], torch.Tensor]) -> None:
    """Sum d(loss_fn)/dW over all calibration batches into ``.grad`` (for Taylor importance)."""
    model.zero_grad(set_to_none=True)
    for batch in calibration:
        loss_fn(model, batch).backward()


def _prune_neurons(model: nn.Module, spec: ArchSpec, blocks: list[_Block], n_remove: int,
                   imp: tp.importance.Importance, example: dict) -> None:
    """torch-pruning end to end: BasePruner traces the MLP groups and removes ``n_remove`` each."""
    count = blocks[0].mlp_output.in_features
    ignored: list[nn.Module] = [model.base_model.get_submodule(e) for e in spec.embeddings]
    ignored.append(model.get_output_embeddings())
    ignored += [m for b in blocks for m in (b.q, b.k, b.v, b.o)]
    with warnings.catch_warnings():
        # The norm weights are untraced parameters of the hidden-size group, which is never
        # pruned here (the embeddings are ignored), so the warning about them does not apply.
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        pruner = tp.pruner.BasePruner(
            model, example_inputs=example, importance=imp, global_pruning=False,
            # torch-pruning keeps int(count * (1 - ratio)) channels; half a unit below the exact
            # target makes that count - n_remove.
            pruning_ratio=(n_remove - 0.5) / count, ignored_layers=ignored,
            output_transform=lambda out: out.logits,
        )
    pruner.step()


def _kv_group(b: _Block, n_heads: int, n_kv: int, head_dim: int, remove: list[int] | None = None) -> tp.Group:
    """A ``tp.Group`` coupling whole KV groups; root index space = ``o_proj`` input channels.

    With ``remove=None`` it holds every channel (for scoring), otherwise only those of the KV
    groups ``remove`` (for pruning). k/v channel ``(g, r)`` is read by every query head of group
    ``g``, so it appears once per such head, like ``repeat_kv`` expands it.
    """
    n_rep = n_heads // n_kv
    kv = list(range(n_kv)) if remove is None else sorted(remove)
    q_idx = [(g * n_rep + t) * head_dim + r for g in kv for t in range(n_rep) for r in range(head_dim)]
    # Sorted k/v indices (GroupTaylorImportance sorts them in place) with the matching root indices.
    pairs = sorted(((i // (n_rep * head_dim)) * head_dim + i % head_dim, i) for i in q_idx)
    kv_idx, kv_root = [p[0] for p in pairs], [p[1] for p in pairs]
    if remove is not None:  # pruning functions take each channel once
        kv_idx = sorted(set(kv_idx))
    out, inp = tp.prune_linear_out_channels, tp.prune_linear_in_channels
    group = tp.Group()
    for module, fn, idxs, root in ((b.o, inp, q_idx, q_idx), (b.q, out, q_idx, q_idx),
                                   (b.k, out, kv_idx, kv_root), (b.v, out, kv_idx, kv_root)):
        node = tp.Node(module, grad_fn=None)
        group.add_dep(tp.Dependency(fn, fn, source=node, target=node), idxs)
        group[len(group) - 1].root_idxs = root
    return group


def _prune_kv_groups(blocks: list[_Block], n_heads: int, n_kv: int, head_dim: int, n_remove: int,
                     imp: tp.importance.Importance) -> None:
    """Score every KV group with ``imp`` (torch-pruning's head averaging) and drop the lowest."""
    for b in blocks:
        scores = imp(_kv_group(b, n_heads, n_kv, head_dim))
        per_head = scores.view(n_heads, -1).mean(1)  # as BasePruner ranks heads
        per_kv_group = per_head.view(n_kv, -1).mean(1)
        remove = torch.topk(per_kv_group, k=n_remove, largest=False).indices.tolist()
        _kv_group(b, n_heads, n_kv, head_dim, remove).prune(record_history=False)


def prune_llama_with_torch_pruning(
    model: nn.Module,
    target: str | Sequence[str],
    sparsity: float,
    importance: str,
    calibration: list[dict],
    loss_fn: Callable[[nn.Module, dict], torch.Tensor],
) -> nn.Module:
    """Prune a Llama-architecture causal LM in place with torch-pruning and return it.

    Args:
        model: e.g. a ``LlamaForCausalLM`` (grouped-query attention allowed); pruned in place.
        target: ``"neurons"`` (FFN channels), ``"heads"`` (whole KV groups), ``"both"`` or a list.
        sparsity: fraction of FFN channels / KV heads removed in every layer, in [0, 1).
        importance: ``"taylor"``, ``"magnitude"`` (group L2) or ``"random"``.
        calibration: batches with ``input_ids`` (and ``attention_mask``); the first is also the
            example input for tracing.
        loss_fn: ``loss_fn(model, batch) -> scalar``, the Taylor objective.

    Returns:
        The same ``model``, with ``model.config`` and the attention modules matching the new
        widths, so forward and ``generate`` run.

    >>> prune_llama_with_torch_pruning(model, "both", 0.25, "taylor", batches, task.loss)  # doctest: +SKIP
    """
    targets = _targets(target)
    if importance not in _IMPORTANCES:
        raise ValueError(f"importance must be one of {sorted(_IMPORTANCES)}, got {importance!r}")
    if not 0.0 <= sparsity < 1.0 or not calibration:
        raise ValueError("need 0 <= sparsity < 1 and at least one calibration batch")
    spec = family_for(model.config.model_type)
    config, blocks = model.config, _blocks(model, spec)
    hidden, head_dim = getattr(config, spec.hidden_key), blocks[0].attention.head_dim
    n_heads, n_kv = blocks[0].q.out_features // head_dim, blocks[0].k.out_features // head_dim
    width = blocks[0].mlp_output.in_features
    n_neurons = round(sparsity * width) if "neurons" in targets else 0
    n_groups = round(sparsity * n_kv) if "heads" in targets else 0
    if n_neurons >= width or n_groups >= n_kv:
        raise ValueError(f"sparsity {sparsity} would remove every FFN channel or KV head")
    if n_neurons == n_groups == 0:
        return model
    expected = {"width": width - n_neurons, "kv": n_kv - n_groups,
                "heads": n_heads - n_groups * (n_heads // n_kv)}

    was_training = model.training
    model.eval()  # deterministic trace
    imp = _IMPORTANCES[importance]()
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    if importance == "taylor":
        # Scored once on the dense model; torch-pruning's pruning functions slice .grad with the
        # weights, so the second target sees the same gradients.
        for p in model.parameters():
            p.requires_grad_(True)
        _accumulate_gradients(model, calibration, loss_fn)
    if n_neurons:
        example = {k: v for k, v in calibration[0].items() if k in _MODEL_INPUTS}
        _prune_neurons(model, spec, blocks, n_neurons, imp, {**example, "use_cache": False})
    if n_groups:
        _prune_kv_groups(blocks, n_heads, n_kv, head_dim, n_groups, imp)
    model.zero_grad(set_to_none=True)
    for name, p in model.named_parameters():  # pruned weights are fresh Parameters
        p.requires_grad_(flags[name])
    model.train(was_training)

    _check(blocks, expected, hidden, head_dim)
    _update_config(model, spec, blocks, expected, head_dim)
    return model


def _update_config(model: nn.Module, spec: ArchSpec, blocks: list[_Block], expected: dict[str, int],
                   head_dim: int) -> None:
    """Make the config and module attributes describe the pruned widths (uniform over layers)."""
    config = model.config
    setattr(config, spec.ffn_key, expected["width"])
    setattr(config, spec.heads_key, expected["heads"])
    if spec.kv_heads_key:
        setattr(config, spec.kv_heads_key, expected["kv"])
    config.head_dim = head_dim  # otherwise derived as hidden_size // num_attention_heads
    for b in blocks:
        # transformers 5 reads only head_dim and num_key_value_groups (unchanged: whole KV groups
        # go); older releases also keep the counts on the modules.
        for attr, value in (("num_heads", expected["heads"]), ("num_key_value_heads", expected["kv"]),
                            ("num_key_value_groups", expected["heads"] // expected["kv"])):
            if hasattr(b.attention, attr):
                setattr(b.attention, attr, value)
        if hasattr(b.mlp, "intermediate_size"):
            b.mlp.intermediate_size = expected["width"]


def _check(blocks: list[_Block], expected: dict[str, int], hidden: int, head_dim: int) -> None:
    """Raise unless every layer has exactly the target counts and the hidden size is intact."""
    for i, b in enumerate(blocks):
        got = {"width": b.mlp_output.in_features, "kv": b.k.out_features // head_dim,
               "heads": b.q.out_features // head_dim}
        consistent = (all(m.out_features == got["width"] for m in b.mlp_inputs)
                      and b.v.out_features == b.k.out_features and b.o.in_features == b.q.out_features)
        widths = [m.in_features for m in (b.q, b.k, b.v, *b.mlp_inputs)]
        widths += [b.o.out_features, b.mlp_output.out_features]
        if got != expected or not consistent or any(w != hidden for w in widths):
            raise RuntimeError(f"torch-pruning left layer {i} with {got} (consistent={consistent}, "
                               f"hidden widths {widths}); expected {expected} and hidden {hidden}")
