"""Memory knobs applied to any adapter's model: freezing, gradient checkpointing, micro-batching.

:func:`apply_plan` puts a :class:`~edgeadapt.memory.plan.MemoryPlan` on a model whose repeated
blocks are named by a :class:`BlockChain` (a transformer's ``layers.0 … layers.N-1``, a CNN's
stages) and returns a handle that undoes it:

* **freezing**: the stem (everything before the first block) and the leading blocks get
  ``requires_grad=False`` and run under ``torch.no_grad`` (they store no activations); build the
  optimizer over :meth:`KnobHandle.trainable_parameters` so they get no optimizer state either.
* **checkpointing**: the trainable blocks are split into contiguous segments; each runs inside one
  ``torch.utils.checkpoint`` region (``use_reentrant=False``), so only segment inputs are kept and
  a segment's activations are recomputed in backward (Chen et al. 2016, "Training deep nets with
  sublinear memory cost"). A segment of several blocks needs a chain where each block takes the
  previous block's output as its first argument and the same other arguments (true of Hugging
  Face layer stacks and CNN stages); anything else is refused when it is run. BatchNorm running
  statistics are restored after a recompute, so they are updated once per step, not twice; a
  Hugging Face model's KV cache (``config.use_cache``) is off while checkpointing, as the
  recompute would fill it twice.
* **BatchNorm at small micro-batches**: frozen to eval mode (or a warning), per the plan.

:func:`train_step` then runs one optimizer step over a batch in micro-batches, scaling each
micro-batch's loss by its share so the accumulated gradient equals the whole batch's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.hooks import RemovableHandle

from edgeadapt.errors import ConfigError
from edgeadapt.memory.plan import LossTraits, MemoryPlan, check_micro_batching, task_loss_traits
from edgeadapt.models.adapter import ModelAdapter

Batch = dict[str, torch.Tensor]
LossFn = Callable[[ModelAdapter, Batch], torch.Tensor]
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

__all__ = ["BlockChain", "KnobHandle", "apply_plan", "batch_size_of", "block_chain", "micro_batches",
           "split_batch", "train_step"]


@dataclass(frozen=True)
class BlockChain:
    """Where the knobs act: the model's repeated blocks in forward order, and the stem before them.

    ``blocks`` are dotted module paths from the model root (``"vit.layers.0"``, a CNN's stages);
    ``stem`` the modules that run before ``blocks[0]`` (embeddings, a CNN's first convolution),
    frozen together with any leading block."""

    blocks: tuple[str, ...]
    stem: tuple[str, ...] = ()


def block_chain(adapter: ModelAdapter) -> BlockChain:
    """The chain of an adapter. The stem is ``embeddings()``; the blocks are, in order of
    preference, ``block_paths()``, ``stages()`` (CNN adapters: their ordered top-level blocks,
    less the stem), or the children of ``layers_path()`` (transformers). Raises
    :class:`~edgeadapt.errors.ConfigError` when that leaves no block."""
    stem = tuple(adapter.embeddings())
    listed = getattr(adapter, "block_paths", None) or getattr(adapter, "stages", None)
    if callable(listed):
        blocks = tuple(p for p in listed() if p not in stem)
    else:
        layers = adapter.model.get_submodule(adapter.layers_path())
        blocks = tuple(f"{adapter.layers_path()}.{i}" for i in range(len(layers)))
    if not blocks:
        raise ConfigError("the model has no blocks for the memory knobs to act on")
    return BlockChain(blocks=blocks, stem=stem)


def split_batch(batch: Batch, micro_batch_size: int) -> list[Batch]:
    """Views of ``batch`` in micro-batches of ``micro_batch_size`` rows (the last may be smaller).
    Tensors whose first dimension is the batch size are sliced; anything else is shared."""
    size = batch_size_of(batch)
    return [{k: v[i:i + micro_batch_size] if isinstance(v, torch.Tensor) and v.dim() and len(v) == size
             else v for k, v in batch.items()} for i in range(0, size, micro_batch_size)]


def batch_size_of(batch: Batch) -> int:
    """Rows in a batch: the first dimension of its first tensor."""
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.dim():
            return int(v.shape[0])
    raise ConfigError("a batch must hold at least one tensor with a batch dimension")


def _share(micro: Batch, whole: Batch, traits: LossTraits) -> float:
    """The micro-batch's weight in the whole batch's mean loss: its rows, or its target tokens."""
    if traits.weight == "tokens":
        def tokens(b: Batch) -> int:
            labels = b.get("labels", b["input_ids"])
            keep = torch.ones_like(labels[:, 1:], dtype=torch.bool)
            if "attention_mask" in b:
                keep &= b["attention_mask"][:, 1:] != 0
            if "labels" in b:
                keep &= labels[:, 1:] != -100
            return int(keep.sum())
        total = tokens(whole)
        return tokens(micro) / total if total else 0.0
    return batch_size_of(micro) / batch_size_of(whole)


def micro_batches(batch: Batch, plan: MemoryPlan, traits: LossTraits) -> list[tuple[Batch, float]]:
    """``batch`` split as ``plan`` says, each micro-batch with its share of the batch's mean loss
    (rows, or target tokens for a causal LM); scale each micro-batch's loss by its share and the
    accumulated gradient is the whole batch's. Micro-batches with no share (no target tokens) are
    left out. What a training loop needs to honour a plan's micro-batching; raises
    :class:`~edgeadapt.errors.ConfigError` as :func:`~edgeadapt.memory.plan.check_micro_batching`."""
    mb = check_micro_batching(plan, batch_size_of(batch), traits)
    parts = [(micro, _share(micro, batch, traits)) for micro in split_batch(batch, mb)]
    return [(micro, share) for micro, share in parts if share > 0.0]


def train_step(adapter: ModelAdapter, batch: Batch, plan: MemoryPlan, optimizer: torch.optim.Optimizer, *,
               loss_fn: LossFn | None = None, traits: LossTraits | None = None) -> float:
    """One optimizer step on ``batch`` in ``plan.micro_batch_size`` micro-batches; returns the batch's
    mean loss. Apply the plan's other knobs first with :func:`apply_plan`.

    Each micro-batch's loss is multiplied by its share of the batch (rows, or target tokens for a
    causal LM) before ``backward``, so for a loss that is a mean over samples the accumulated
    gradient equals the whole batch's. ``traits`` (default: from the adapter's task) say whether
    the loss is one; a loss that is not (``per_sample=False``) is refused when the plan would
    split it (:func:`~edgeadapt.memory.plan.check_micro_batching` raises
    :class:`~edgeadapt.errors.ConfigError` naming it). Gradients are set to ``None`` after the step.
    """
    traits = traits or (task_loss_traits(adapter.task.name) if loss_fn is None else LossTraits("the loss"))
    loss_fn = loss_fn or (lambda a, b: a.task_loss(b))
    total = 0.0
    for micro, share in micro_batches(batch, plan, traits):
        loss = loss_fn(adapter, micro)
        (loss * share).backward()
        total += float(loss.detach()) * share
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


class _Segment:
    """One checkpointed run of consecutive blocks: the first block's call runs them all inside one
    ``checkpoint`` region; the later blocks' calls hand back the outputs computed there."""

    def __init__(self, blocks: list[nn.Module], names: list[str]) -> None:
        self.blocks, self.names = blocks, names
        self.forwards = [b.forward for b in blocks]  # the unpatched (bound) forwards
        self.pending: list[Any] = []
        self.expected: tuple[Any, tuple[Any, ...], dict[str, Any]] | None = None

    def run_first(self, *args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # evaluation: nothing to save, run plainly
            self.pending, self.expected = [], None
            return self.forwards[0](*args, **kwargs)
        calls = [0]

        def run(*a: Any, **kw: Any) -> tuple[Any, ...]:
            calls[0] += 1
            with _restored_batchnorm_stats(self.blocks) if calls[0] > 1 else _nothing():
                outs = [self.forwards[0](*a, **kw)]
                for fwd in self.forwards[1:]:
                    outs.append(fwd(_hidden(outs[-1]), *a[1:], **kw))
                return tuple(outs)

        outs = checkpoint(run, *args, use_reentrant=False, **kwargs)
        self.pending = list(outs[1:])
        self.expected = (_hidden(outs[0]), args[1:], kwargs) if self.pending else None
        return outs[0]

    def run_later(self, j: int, *args: Any, **kwargs: Any) -> Any:
        if self.expected is None:  # not inside a checkpointed pass (evaluation)
            return self.forwards[j](*args, **kwargs)
        hidden, rest, kw = self.expected
        given = args[0] if args else None
        same = len(args) == len(rest) + 1 and all(a is b for a, b in zip(args[1:], rest, strict=True)) \
            and kwargs.keys() == kw.keys() and all(kwargs[k] is kw[k] for k in kw)
        if given is not hidden or not same:
            self.pending, self.expected = [], None
            raise ConfigError(f"checkpoint_segments: block {self.names[j]} does not take the previous "
                              f"block's output and the same other arguments, so several blocks cannot "
                              f"share one checkpointed segment; set checkpoint_segments to the number of "
                              f"trainable blocks (one block per segment)")
        out = self.pending.pop(0)
        self.expected = (_hidden(out), rest, kw) if self.pending else None
        return out


def _hidden(out: Any) -> Any:
    """A block's main output: the tensor itself, or the first element of a tuple/ModelOutput."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    if hasattr(out, "to_tuple"):
        return out.to_tuple()[0]
    raise ConfigError(f"checkpoint_segments: a block returned {type(out).__name__}, not a tensor or tuple")


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def _restored_batchnorm_stats(blocks: list[nn.Module]) -> Iterator[None]:
    """Recomputing a segment runs its BatchNorm layers a second time; put their running statistics
    back afterwards so one step updates them once."""
    saved = [(m, {k: v.clone() for k, v in m.named_buffers(recurse=False)})
             for b in blocks for m in b.modules() if isinstance(m, BATCHNORMS)]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for k, v in buffers.items():
                    getattr(m, k).copy_(v)


def _no_grad_forward(forward: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return forward(*args, **kwargs)
    return run


class KnobHandle:
    """What :func:`apply_plan` changed on a model; :meth:`close` (or leaving the ``with``) undoes it."""

    def __init__(self, model: nn.Module, plan: MemoryPlan, chain: BlockChain) -> None:
        self.model, self.plan, self.chain = model, plan, chain
        self.num_frozen = plan.frozen_blocks(len(chain.blocks))
        self.frozen_parameters: list[nn.Parameter] = []
        self.segments: list[list[str]] = []
        self._requires_grad: list[tuple[nn.Parameter, bool]] = []
        self._forwards: list[tuple[nn.Module, Any]] = []  # module, its own earlier instance forward
        self._hooks: list[RemovableHandle] = []
        self._bn_modes: list[tuple[nn.Module, bool]] = []
        self._use_cache: bool | None = None

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that still train: build the optimizer over these, so frozen ones get no state."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def close(self) -> None:
        """Restore ``requires_grad``, the blocks' forwards and BatchNorm modes."""
        for p, flag in self._requires_grad:
            p.requires_grad_(flag)
        for m, earlier in reversed(self._forwards):
            if earlier is None:
                m.__dict__.pop("forward", None)
            else:  # another tool had patched it before us (accelerate hooks): keep theirs
                m.forward = earlier
        for h in self._hooks:
            h.remove()
        for m, mode in self._bn_modes:
            m.train(mode)
        if self._use_cache is not None:
            self.model.config.use_cache = self._use_cache
            self._use_cache = None
        self._requires_grad, self._forwards, self._hooks, self._bn_modes = [], [], [], []

    def __enter__(self) -> KnobHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _freeze_bn(module: nn.Module, args: Any) -> None:
    module.train(False)


def apply_plan(model: nn.Module, plan: MemoryPlan, chain: BlockChain) -> KnobHandle:
    """Apply ``plan``'s freezing, checkpointing and BatchNorm policy to ``model`` in place.

    Returns a :class:`KnobHandle` (a context manager) that undoes every change. Micro-batching is
    done by :func:`train_step`. Raises :class:`~edgeadapt.errors.ConfigError` for a block path
    that is not in the model, more frozen blocks than the chain has, or more checkpoint segments
    than trainable blocks.

    Example::

        with apply_plan(adapter.model, plan, block_chain(adapter)) as knobs:
            opt = torch.optim.AdamW(knobs.trainable_parameters(), lr=1e-4)
            for batch in batches:
                train_step(adapter, batch, plan, opt)
    """
    handle = KnobHandle(model, plan, chain)
    try:
        blocks = [model.get_submodule(p) for p in chain.blocks]
        stem = [model.get_submodule(p) for p in chain.stem]
    except AttributeError as exc:
        raise ConfigError(f"block chain: {exc}; name modules of this model") from None
    try:
        frozen = handle.num_frozen
        if frozen:
            for module in [*stem, *blocks[:frozen]]:
                for p in module.parameters():
                    handle._requires_grad.append((p, p.requires_grad))
                    p.requires_grad_(False)
                    handle.frozen_parameters.append(p)
            for module in blocks[:frozen]:
                handle._forwards.append((module, module.__dict__.get("forward")))
                module.forward = _no_grad_forward(module.forward)
        _checkpoint(handle, blocks[frozen:], list(chain.blocks[frozen:]), plan.checkpoint_segments)
        _batchnorm(handle, model, plan)
    except BaseException:
        handle.close()
        raise
    return handle


def _checkpoint(handle: KnobHandle, blocks: list[nn.Module], names: list[str], segments: int) -> None:
    if not segments:
        return
    config = getattr(handle.model, "config", None)
    if getattr(config, "use_cache", False):  # a KV cache filled again by the recompute breaks it
        handle._use_cache, config.use_cache = True, False
    if segments > len(blocks):
        raise ConfigError(f"checkpoint_segments: {segments} segments need at least {segments} trainable "
                          f"blocks, the plan leaves {len(blocks)}; use at most {len(blocks)}")
    size, extra = divmod(len(blocks), segments)
    start = 0
    for s in range(segments):
        end = start + size + (s < extra)
        seg = _Segment(blocks[start:end], names[start:end])
        handle._forwards.extend((b, b.__dict__.get("forward")) for b in blocks[start:end])
        blocks[start].forward = seg.run_first
        for j in range(1, end - start):
            blocks[start + j].forward = (lambda seg, j: lambda *a, **k: seg.run_later(j, *a, **k))(seg, j)
        handle.segments.append(names[start:end])
        start = end


def _batchnorm(handle: KnobHandle, model: nn.Module, plan: MemoryPlan) -> None:
    norms = [m for m in model.modules() if isinstance(m, BATCHNORMS)]
    small = plan.micro_batch_size is not None and plan.micro_batch_size < plan.batchnorm_min_micro_batch
    if not norms or not small or plan.batchnorm == "train":
        return
    if plan.batchnorm == "warn":
        warnings.warn(f"micro_batch_size {plan.micro_batch_size}: the model has {len(norms)} BatchNorm "
                      f"layers, which will normalise over micro-batches smaller than "
                      f"{plan.batchnorm_min_micro_batch} (noisy statistics, and gradients that differ from "
                      f"the whole batch's); use batchnorm: freeze, or a GroupNorm/LayerNorm model",
                      stacklevel=2)
        return
    for m in norms:
        handle._bn_modes.append((m, m.training))
        handle._hooks.append(m.register_forward_pre_hook(_freeze_bn))
