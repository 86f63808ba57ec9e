"""Profile retraining a model: two traced steps turned into a :class:`~edgeadapt.memory.trace.Profile`.

:func:`profile` traces a step without knobs at two micro-batch sizes (each followed by a traced
``no_grad`` forward pass) and one untimed-accounting step for the regions' wall times, fits every
per-region figure as a line in the micro-batch size, and calibrates the replayed peak against the
measured one (exactly 1 on CPU; on CUDA what the allocator counts beyond tensor storages). The
estimator (:mod:`edgeadapt.memory.estimator`) predicts any plan from it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from edgeadapt.errors import ConfigError
from edgeadapt.memory.accounting import bytes_of
from edgeadapt.memory.knobs import BlockChain, batch_size_of, block_chain, split_batch
from edgeadapt.memory.master import on_master_weights
from edgeadapt.memory.plan import LossTraits, MemoryPlan, check_micro_batching, task_loss_traits
from edgeadapt.memory.replay import replay_peak
from edgeadapt.memory.trace import (
    Batch,
    Line,
    LossFn,
    Profile,
    Region,
    Trace,
    fit_line,
    optimizer_state,
    probing,
    region_params,
    seconds_per_op,
    tensor_bytes,
    traced_step,
)
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.training.device import to_device

OptimizerName = Literal["adam", "adamw", "sgd"]

__all__ = ["OptimizerName", "make_optimizer", "profile"]


def make_optimizer(params: list[nn.Parameter], name: OptimizerName = "adam",
                   lr: float = 1e-3) -> torch.optim.Optimizer:
    """The optimizer the estimator models: Adam / AdamW (two state tensors per parameter) or SGD
    with momentum 0.9 (one). Raises :class:`~edgeadapt.errors.ConfigError` for another name."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ConfigError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {name!r}")


@on_master_weights
def profile(adapter: ModelAdapter, batch: Batch, optimizer: OptimizerName = "adam", *,
            loss_fn: LossFn | None = None, traits: LossTraits | None = None,
            chain: BlockChain | None = None, timed: bool = True,
            sizes: tuple[int, int] | None = None) -> Profile:
    """Profile retraining ``adapter.model`` (on its device, without knobs) on ``batch`` of ``B`` rows
    and return the :class:`Profile` that :func:`predict` needs.

    Two traced steps measure memory, on the batch's first ``max(B // 2, min_samples)`` rows and
    on all of it (one step at ``B`` when the loss is not per-sample), each followed by a traced
    forward pass under ``no_grad``; with ``timed`` one more, untraced step at ``B`` times the
    regions. On a CUDA model the steady-state step's ``max_memory_allocated`` calibrates the
    prediction (:attr:`Profile.scale`). ``sizes`` picks the two micro-batch sizes to trace instead
    (e.g. ``(1, 2)`` when the whole batch without knobs would not fit the device; the figures
    are then extrapolated to larger micro-batches, and the timing step runs at the larger size).

    A bf16/fp16 model is profiled on float32 master weights, as ``train`` and ``adapt`` train it
    (:func:`~edgeadapt.memory.master.on_master_weights`), and left in its own dtype afterwards.
    The model's weights and buffers are left as they were (the steps run at learning rate 0;
    BatchNorm statistics are restored). Raises :class:`~edgeadapt.errors.ConfigError` when the
    model has no trainable parameters, the batch is smaller than the loss accepts, or ``sizes``
    are out of range."""
    traits = traits or (task_loss_traits(adapter.task.name) if loss_fn is None else LossTraits("the loss"))
    loss_fn = loss_fn or (lambda a, b: a.task_loss(b))
    chain = chain or block_chain(adapter)
    model = adapter.model
    device = next(model.parameters()).device
    batch = to_device(batch, device)
    size = batch_size_of(batch)
    check_micro_batching(MemoryPlan(), size, traits)
    small = size if not traits.per_sample else max(size // 2, traits.min_samples, 1)
    if sizes is not None:
        if not traits.per_sample and set(sizes) != {size}:
            raise ConfigError(f"sizes: {traits.name} is not per-sample, so it is profiled on the whole "
                              f"batch of {size}; leave sizes unset")
        if not all(max(1, traits.min_samples) <= b <= size for b in sizes):
            raise ConfigError(f"sizes: each profiled micro-batch must hold {max(1, traits.min_samples)} to "
                              f"{size} rows, got {sizes}")
        small, size_traced = min(sizes), max(sizes)
    else:
        size_traced = size
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters (all requires_grad=False)")
    opt = make_optimizer(params, optimizer, lr=0.0)
    steps, passes = [], []
    with probing(model):
        if small == size_traced:  # one size (a loss that is not per-sample): trace a second step, so
            # the kept trace is a steady-state one with the optimizer's state already allocated
            traced_step(model, chain, adapter, split_batch(batch, small)[0], loss_fn, opt, device)
        for b in dict.fromkeys((small, size_traced)):
            part = split_batch(batch, b)[0]
            trace, measured = traced_step(model, chain, adapter, part, loss_fn, opt, device)
            forward = traced_step(model, chain, adapter, part, loss_fn, opt, device, "forward")[0]
            steps.append((b, trace, measured))
            passes.append((b, forward))
        clock = traced_step(model, chain, adapter, split_batch(batch, size_traced)[0], loss_fn, opt, device,
                             "time")[0] if timed else None
    per_region = region_params(model, chain)
    state = {id(p): tensor_bytes(optimizer_state(opt, p), device) for p in params}
    n = len(chain.blocks)
    last = steps[-1][1]

    def line(key: tuple[Any, ...], what: str) -> Line:
        def value(t: Trace) -> float:
            if what == "input":
                return float(t.inputs.get(key[1], 0))
            if what == "saved":
                return float(sum(v for k, v in t.saved.items() if t.saved_region[k] == key[1]))
            if what == "peak_accum":
                return float(t.accum_tops.get(key, 0) - t.records.get(key, (0,))[0])
            start, top, end, _, _ = t.records.get(key, (0, 0, 0, 0, 0.0))
            return float(end - start if what == "retained" else top - start)
        return fit_line([(b, value(t)) for b, t, _ in steps])

    def nograd(key: tuple[Any, ...], what: str) -> Line:
        def value(t: Trace) -> float:
            start, top, end, _, _ = t.records.get(key, (0, 0, 0, 0, 0.0))
            return float({"peak": top - start, "top": top, "end": end}[what])
        return fit_line([(b, value(t)) for b, t in passes])

    def ops(key: tuple[Any, ...]) -> int:
        return last.records.get(key, (0, 0, 0, 0, 0.0))[3]

    def seconds(key: tuple[Any, ...]) -> float:
        return clock.records.get(key, (0, 0, 0, 0, 0.0))[4] if clock is not None else 0.0

    regions = []
    for r in range(n + 2):
        grads = [p for p in per_region[r] if p.requires_grad]
        fwd, bwd = ("fwd", r), ("bwd", r)
        regions.append(Region(
            name="stem" if r == 0 else "tail" if r == n + 1 else chain.blocks[r - 1],
            retained=line(fwd, "retained"), fwd_peak=line(fwd, "peak"), bwd_delta=line(bwd, "retained"),
            bwd_peak=line(bwd, "peak"), bwd_peak_accum=line(bwd, "peak_accum"),
            input=line(("input", r), "input"), saved=line(("saved", r), "saved"),
            nograd_peak=nograd(fwd, "peak"), nograd_top=nograd(fwd, "top"), nograd_end=nograd(fwd, "end"),
            fwd_seconds=seconds(fwd), bwd_seconds=seconds(bwd), fwd_ops=ops(fwd), bwd_ops=ops(bwd),
            saves_input=last.input_ids.get(r, -1) in last.packed.get(r, ()),
            saves_output=last.input_ids.get(r + 1, -1) in last.packed.get(r, ()),
            grad_bytes=tensor_bytes(grads, device), state_bytes=sum(state[id(p)] for p in grads),
            largest_param=max((p.numel() * p.element_size() for p in grads), default=0)))
    start, top, _, _, _ = last.records[("post",)]
    prof = Profile(batch_size=size, timed_size=size_traced, chain=chain, regions=regions,
                   weights_bytes=bytes_of(model),
                   opt_peak=top - start, opt_seconds=seconds(("post",)),
                   op_seconds=seconds_per_op(device) if timed else 0.0, scale=1.0, traits=traits,
                   device=str(device), method="cuda" if device.type == "cuda" else "dispatch",
                   profiled=tuple(b for b, _, _ in steps))
    replayed = replay_peak(prof, MemoryPlan(), size_traced)[0]
    return Profile(**{**prof.__dict__, "scale": steps[-1][2] / replayed if replayed else 1.0})
