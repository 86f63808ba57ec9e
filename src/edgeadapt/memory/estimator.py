"""Predict the peak memory and step time of any memory plan from two profiled training steps.

MPOptimizer (Zhang et al., FGCS 2025) chooses micro-batching, freezing and checkpointing under a
memory budget, but its repository predicts nothing; this is the missing memory model. Two
training steps without knobs are traced (micro-batches ``b2 ≈ B/2`` then ``b1 = B``; the first
also creates the optimizer state, the second is a steady-state step) with the storage accounting
of :mod:`edgeadapt.memory.accounting`, split into *regions* in execution order: the stem (before
the first block), each block, the tail (head and loss) — forward and backward — and the
optimizer step. Per region the trace gives the bytes it leaves alive (saved activations and
outputs), its peak above its start (transients), and, through ``saved_tensors_hooks``, the
saved-activation bytes (unique storages), whether it saves its own input or output, and where
backward is. After each step one forward pass under ``torch.no_grad`` is traced the same way:
what frozen and checkpointed regions cost (tensors that Python code holds included). Every
per-region figure is fitted as a line in the micro-batch size from the two sizes.

A plan is then *replayed* over the regions (:func:`predict`):

* weights, plus optimizer state (measured per parameter: Adam 2×, SGD momentum 1× the trainable
  bytes) and gradients of the trainable parameters only;
* micro-batch ``b``: every activation figure at ``b``; from the second micro-batch on the
  gradients are alive throughout and accumulate in place, so a region's backward peak is the
  traced one less the gradients already added by each moment, with the one being added still
  alive beside ``.grad`` (traced as the peak of live bytes minus the gradients whose
  post-accumulate-grad hook has run);
* freezing ``m`` leading blocks: stem and those blocks replay the no_grad pass (they keep only
  what is alive after it, their output), have no backward, and the first trainable block
  computes no input gradient; their parameters have no gradient and no optimizer state;
* checkpointing with ``S`` segments: a segment keeps only its output (when the next region saves
  it or checkpoints from it) during forward, costs its no_grad peak then, and recomputes its
  blocks' activations just before their backward (Chen et al. 2016, "Training deep nets with
  sublinear memory cost": the peak holds the segment boundaries plus one segment's activations);
  a segment whose last block saves its own output recomputes that output as a new tensor, and
  the boundary copy it kept has died with the next region's backward;
* the optimizer step: weights, state, all gradients and the optimizer's transients (on CPU
  Adam's single-tensor loop needs a few copies of the largest trainable parameter; on CUDA the
  foreach kernels scale with all trainable bytes).

The peak of the replay is scaled by a per-device calibration factor, the ratio of measured to
replayed peak on the profiled steady-state step: exactly 1 on CPU (both from the same storage
accounting), and on CUDA it absorbs what the allocator counts beyond tensor storages. Step time
comes from one more, untraced step at the full batch, timed per region: each region's time is
split into a fixed cost per op (measured on a tiny op) and a part proportional to the micro-batch
size; frozen regions lose their backward, checkpointed blocks run their forward twice.

Example::

    est = estimate(adapter, MemoryPlan(micro_batch_size=4, checkpoint_segments=2), batch)
    print(format_bytes(est.predicted_bytes), est.breakdown, est.step_seconds)
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from edgeadapt.errors import ConfigError
from edgeadapt.memory.accounting import _storage, _StorageAccountant, bytes_of, measure_peak
from edgeadapt.memory.knobs import BlockChain, apply_plan, batch_size_of, block_chain, split_batch, train_step
from edgeadapt.memory.plan import LossTraits, MemoryPlan, check_micro_batching, task_loss_traits
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.training.device import to_device

Batch = dict[str, torch.Tensor]
LossFn = Callable[[ModelAdapter, Batch], torch.Tensor]
OptimizerName = Literal["adam", "adamw", "sgd"]
Line = tuple[float, float]  # (intercept, slope) of a figure as a function of the micro-batch size

__all__ = ["Estimate", "Measurement", "Profile", "estimate", "make_optimizer", "measure", "predict",
           "profile"]


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


@dataclass(frozen=True)
class Estimate:
    """A plan's predicted peak memory (bytes) and optimizer-step time (seconds).

    ``breakdown`` (bytes) splits ``predicted_bytes`` into what is alive at the predicted peak:
    ``weights`` (parameters and buffers), ``optimizer_state``, ``gradients`` (of trainable
    parameters, as many as exist at that moment), ``activations`` (saved for backward) and
    ``workspace`` (transients, gradients of activations, the calibration); they sum to
    ``predicted_bytes``. ``activations_end_of_forward`` (not part of the sum) is what one
    micro-batch's forward pass leaves for backward: the figure the knobs shrink."""

    predicted_bytes: int
    breakdown: dict[str, int]
    step_seconds: float
    plan: MemoryPlan


@dataclass(frozen=True)
class Region:
    """One region of the traced step (``stem``, a block path, ``tail``); figures are lines in b."""

    name: str
    retained: Line  # bytes left alive at the end of its forward part
    fwd_peak: Line  # peak above the live bytes at its forward start
    bwd_delta: Line  # net bytes its backward part leaves (gradients created − activations freed)
    bwd_peak: Line  # peak above the live bytes at its backward start
    bwd_peak_accum: Line  # peak above that start when its gradients add into existing ``.grad``
    input: Line  # bytes of its main input (a block's hidden states), when created in the step
    saved: Line  # saved-activation bytes (unique storages, saved_tensors_hooks)
    nograd_peak: Line  # peak above its start in a forward pass under no_grad (saving nothing)
    nograd_top: Line  # that peak above the no_grad pass's start (frozen leading regions replay it)
    nograd_end: Line  # live bytes after it in the no_grad pass, above the pass's start
    fwd_seconds: float  # at the profiled batch size, untraced
    bwd_seconds: float
    fwd_ops: int  # ATen ops in its forward / backward part
    bwd_ops: int
    saves_input: bool  # its backward needs its own main input (a LayerNorm or convolution does)
    saves_output: bool  # its backward needs its own main output (a final ReLU does)
    grad_bytes: int  # gradients of its parameters
    largest_param: int  # bytes of its largest trainable parameter
    state_bytes: int  # optimizer state of its parameters


@dataclass(frozen=True)
class Profile:
    """What the profiled steps told about a model, a batch and an optimizer; :func:`predict` turns
    it into an :class:`Estimate` for any plan without running it. Figures are bytes and seconds."""

    batch_size: int  # the effective batch (rows per optimizer step)
    timed_size: int  # the micro-batch the timing step ran
    chain: BlockChain
    regions: list[Region]  # stem, blocks..., tail
    weights_bytes: int
    opt_peak: int  # peak above the live bytes at the optimizer step's start (steady state)
    opt_seconds: float
    op_seconds: float  # fixed cost of one op on this device (seconds)
    scale: float  # per-device calibration: measured / replayed peak of the profiled step
    traits: LossTraits
    device: str
    method: str
    profiled: tuple[int, ...] = field(default=())  # the micro-batch sizes traced


def _at(line: Line, b: int) -> float:
    return line[0] + line[1] * b


def _fit(points: list[tuple[int, float]]) -> Line:
    """The line through two (b, value) points; through the origin for one point (or equal b)."""
    (b1, v1), (b2, v2) = points[0], points[-1]
    if b1 == b2:
        return (0.0, v1 / b1)
    slope = (v2 - v1) / (b2 - b1)
    return (v1 - slope * b1, slope)


class _Trace(_StorageAccountant):
    """Storage accounting that also records, per region, live bytes at entry/exit, the peak, the
    number of ops and the wall time."""

    def __init__(self, device: torch.device, sync: bool = False) -> None:
        super().__init__(device)
        self.sync = sync  # synchronize CUDA at region boundaries (timing only)
        self.key: tuple[Any, ...] | None = None
        self.start = self.top = self.ops = 0
        self.grads_now = 0  # parameter gradients created in this region so far
        # the peak of live bytes minus those gradients: what the region peaks at when its gradients
        # are instead added in place into existing ``.grad`` tensors (every micro-batch but the first)
        self.top_accum = 0
        self.accum_tops: dict[tuple[Any, ...], int] = {}  # region -> that peak (absolute bytes)
        self.t0 = 0.0
        self.records: dict[tuple[Any, ...], tuple[int, int, int, int, float]] = {}
        self.fwd = 0
        self.bwd = 1 << 30
        self.saved: dict[int, int] = {}
        self.saved_region: dict[int, int] = {}
        self.inputs: dict[int, int] = {}
        self.input_ids: dict[int, int] = {}  # region -> storage id of its main input
        self.packed: dict[int, set[int]] = {}  # region -> storages it saved for backward

    def enter(self, key: tuple[Any, ...] | None) -> None:
        if self.sync:
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if self.key is not None:
            self.records[self.key] = (self.start, self.top, self.live, self.ops, now - self.t0)
            self.accum_tops[self.key] = self.top_accum
        self.key, self.start, self.top, self.ops, self.t0 = key, self.live, self.live, 0, now
        self.grads_now, self.top_accum = 0, self.live

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        out = super().__torch_dispatch__(func, types, args, kwargs)
        self.top = max(self.top, self.live)
        # a gradient just computed is counted until its post-accumulate hook has run: alive beside
        # the ``.grad`` it is being added into, as it is when accumulating
        self.top_accum = max(self.top_accum, self.live - self.grads_now)
        self.ops += 1
        return out

    def on_grad(self, p: torch.Tensor) -> None:
        """A parameter's gradient was accumulated (post-accumulate-grad hook)."""
        self.grads_now += p.numel() * p.element_size()

    def note_input(self, region: int, t: Any) -> None:
        """Record ``t`` as the main input of ``region`` (a block's hidden states)."""
        self.inputs[region] = self.tracked(t)
        if self.inputs[region]:
            self.input_ids[region] = id(t.untyped_storage())

    def tracked(self, t: Any) -> int:
        """Bytes of ``t``'s storage if it was created during the trace, else 0."""
        s = _storage(t) if isinstance(t, torch.Tensor) else None
        return self._sizes.get(id(s), 0) if s is not None else 0

    def pack(self, t: torch.Tensor) -> tuple[int, torch.Tensor]:
        nbytes = self.tracked(t)
        if nbytes:
            key = id(t.untyped_storage())
            self.packed.setdefault(self.fwd, set()).add(key)
            if key not in self.saved:
                self.saved[key], self.saved_region[key] = nbytes, self.fwd
        return self.fwd, t

    def unpack(self, packed: tuple[int, torch.Tensor]) -> torch.Tensor:
        region, t = packed
        if region < self.bwd:
            self.bwd = region
            self.enter(("bwd", region))
        return t


def _seconds_per_op(device: torch.device) -> float:
    """The fixed cost of one tiny op on ``device`` (dispatch and launch), in seconds."""
    x = torch.zeros(4, device=device)

    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        for _ in range(200):
            x.add(1.0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t
    return min(run() for _ in range(3)) / 200


def _traced_step(model: nn.Module, chain: BlockChain, adapter: ModelAdapter, batch: Batch, loss_fn: LossFn,
                 opt: torch.optim.Optimizer, device: torch.device,
                 mode: Literal["step", "time", "forward"] = "step") -> tuple[_Trace, int]:
    """One step without knobs, split into regions; returns the trace and the measured peak (bytes,
    the device's own method) of the step. ``"time"`` only times the regions (no storage
    accounting, so the times are those of a plain step); ``"forward"`` traces only a forward pass
    under ``torch.no_grad`` (what frozen and checkpointed regions do)."""
    account = mode != "time"
    blocks = [model.get_submodule(p) for p in chain.blocks]
    n = len(blocks)
    trace = _Trace(device, sync=not account and device.type == "cuda")
    hooks = []
    for j, block in enumerate(blocks):
        def pre(m: nn.Module, args: tuple[Any, ...], j: int = j) -> None:
            trace.fwd = j + 1
            trace.enter(("fwd", j + 1))
            if args:
                trace.note_input(j + 1, args[0])
        hooks.append(block.register_forward_pre_hook(pre))
    def post(m: nn.Module, args: Any, out: Any) -> None:
        trace.fwd = n + 1
        trace.enter(("fwd", n + 1))
        hidden = out if isinstance(out, torch.Tensor) else out[0] if isinstance(out, (tuple, list)) else None
        trace.note_input(n + 1, hidden)
    hooks.append(blocks[-1].register_forward_hook(post))
    hooks += [p.register_post_accumulate_grad_hook(trace.on_grad)
              for p in model.parameters() if p.requires_grad]
    cuda = device.type == "cuda"
    baseline = bytes_of(model, opt)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        with trace if account else nullcontext():
            trace.fwd, trace.bwd = 0, 1 << 30
            trace.enter(("fwd", 0))
            if mode == "forward":
                with torch.no_grad():
                    loss_fn(adapter, batch)
            else:
                with torch.autograd.graph.saved_tensors_hooks(trace.pack, trace.unpack):
                    loss = loss_fn(adapter, batch)
                trace.enter(("bwd", n + 1))
                trace.bwd = n + 1
                (loss * 1.0).backward()
                del loss
                trace.enter(("post",))
                opt.step()
                opt.zero_grad(set_to_none=True)
                trace.enter(("end",))
            trace.enter(None)
        if cuda:
            torch.cuda.synchronize(device)
            measured = baseline + torch.cuda.max_memory_allocated(device) - before
        else:
            measured = baseline + trace.peak
    finally:
        trace.close()
        for h in hooks:
            h.remove()
        if was_enabled:
            gc.enable()
    return trace, measured


def _region_params(model: nn.Module, chain: BlockChain) -> list[list[nn.Parameter]]:
    """Parameters per region: stem modules, each block, and everything else (the tail)."""
    owner: dict[int, int] = {}
    for i, path in enumerate(chain.stem):
        for p in model.get_submodule(path).parameters():
            owner.setdefault(id(p), 0)
    for j, path in enumerate(chain.blocks):
        for p in model.get_submodule(path).parameters():
            owner[id(p)] = j + 1
    out: list[list[nn.Parameter]] = [[] for _ in range(len(chain.blocks) + 2)]
    for p in model.parameters():
        out[owner.get(id(p), len(chain.blocks) + 1)].append(p)
    return out


def _tensor_bytes(tensors: list[torch.Tensor], device: torch.device) -> int:
    seen = {id(s): s.nbytes() for t in tensors
            if t.device.type == device.type and (s := _storage(t)) is not None}
    return sum(seen.values())


@contextmanager
def probing(model: nn.Module) -> Iterator[None]:
    """Run probe steps on ``model`` in train mode and leave it as it was: its train/eval mode and
    buffers (BatchNorm statistics) restored and its gradients dropped. The steps run at learning
    rate 0, so the weights do not move."""
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        model.zero_grad(set_to_none=True)


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
            _traced_step(model, chain, adapter, split_batch(batch, small)[0], loss_fn, opt, device)
        for b in dict.fromkeys((small, size_traced)):
            part = split_batch(batch, b)[0]
            trace, measured = _traced_step(model, chain, adapter, part, loss_fn, opt, device)
            forward = _traced_step(model, chain, adapter, part, loss_fn, opt, device, "forward")[0]
            steps.append((b, trace, measured))
            passes.append((b, forward))
        clock = _traced_step(model, chain, adapter, split_batch(batch, size_traced)[0], loss_fn, opt, device,
                             "time")[0] if timed else None
    per_region = _region_params(model, chain)
    state = {id(p): _tensor_bytes(_state(opt, p), device) for p in params}
    n = len(chain.blocks)
    last = steps[-1][1]

    def line(key: tuple[Any, ...], what: str) -> Line:
        def value(t: _Trace) -> float:
            if what == "input":
                return float(t.inputs.get(key[1], 0))
            if what == "saved":
                return float(sum(v for k, v in t.saved.items() if t.saved_region[k] == key[1]))
            if what == "peak_accum":
                return float(t.accum_tops.get(key, 0) - t.records.get(key, (0,))[0])
            start, top, end, _, _ = t.records.get(key, (0, 0, 0, 0, 0.0))
            return float(end - start if what == "retained" else top - start)
        return _fit([(b, value(t)) for b, t, _ in steps])

    def nograd(key: tuple[Any, ...], what: str) -> Line:
        def value(t: _Trace) -> float:
            start, top, end, _, _ = t.records.get(key, (0, 0, 0, 0, 0.0))
            return float({"peak": top - start, "top": top, "end": end}[what])
        return _fit([(b, value(t)) for b, t in passes])

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
            grad_bytes=_tensor_bytes(grads, device), state_bytes=sum(state[id(p)] for p in grads),
            largest_param=max((p.numel() * p.element_size() for p in grads), default=0)))
    start, top, _, _, _ = last.records[("post",)]
    prof = Profile(batch_size=size, timed_size=size_traced, chain=chain, regions=regions,
                   weights_bytes=bytes_of(model),
                   opt_peak=top - start, opt_seconds=seconds(("post",)),
                   op_seconds=_seconds_per_op(device) if timed else 0.0, scale=1.0, traits=traits,
                   device=str(device), method="cuda" if device.type == "cuda" else "dispatch",
                   profiled=tuple(b for b, _, _ in steps))
    replayed = _replay(prof, MemoryPlan(), size_traced)[0]
    return Profile(**{**prof.__dict__, "scale": steps[-1][2] / replayed if replayed else 1.0})


def _state(opt: torch.optim.Optimizer, p: nn.Parameter) -> list[torch.Tensor]:
    """The optimizer's state tensors for ``p`` (Adam: exp_avg, exp_avg_sq, step; SGD: momentum)."""
    return [v for v in opt.state.get(p, {}).values() if isinstance(v, torch.Tensor)]


def _replay(prof: Profile, plan: MemoryPlan, batch_size: int) -> tuple[float, dict[str, float]]:
    """The plan's peak total bytes before calibration, and what is alive at that moment: weights,
    optimizer state, gradients, activations (kept for backward) and workspace (transients)."""
    regions = prof.regions
    n = len(regions) - 2
    mb = min(plan.micro_batch_size or batch_size, batch_size)
    m = plan.frozen_blocks(n)
    first = m + 1 if m else 0  # regions 0..m (stem, blocks 0..m-1) are frozen when m > 0
    grads = sum(r.grad_bytes for r in regions[first:])
    states = sum(r.state_bytes for r in regions[first:])
    segments = _segments(list(range(m + 1, n + 1)), plan.checkpoint_segments)
    last_of = {seg[-1]: seg for seg in segments}
    in_segment = {r for seg in segments for r in seg}
    base = float(prof.weights_bytes + states)

    def q(line: Line) -> float:  # a size: never negative
        return max(0.0, _at(line, mb))

    def output_of(r: int) -> float:  # a region's main output = the next region's input
        return q(regions[r + 1].input)

    def output_kept(r: int) -> float:  # kept when the next region saves it or checkpoints from it
        return output_of(r) if regions[r + 1].saves_input or r + 1 in in_segment else 0.0

    best = [0.0, 0.0, 0.0, 0.0]  # peak, gradients, activations, workspace at the peak

    def seen(grad: float, acts: float, extra: float) -> None:
        if base + grad + acts + extra > best[0]:
            best[:] = [base + grad + acts + extra, grad, acts, extra]

    def micro(fresh: bool) -> float:
        grad, acts = (0.0 if fresh else float(grads)), 0.0
        seen(grad, acts, 0.0)
        held = pyheld = 0.0  # an output alive but kept by nobody; what only Python holds
        for r in range(n + 1):  # forward through the stem and the blocks
            reg = regions[r]
            if m and r <= m:  # the frozen stem and blocks replay the no_grad pass exactly
                seen(grad, acts, q(reg.nograd_top))
                if r == m:  # what is still alive after them (their output, what Python holds)
                    acts = q(reg.nograd_end)
                    # tensors only Python holds (a model's embedding output) die when its forward
                    # returns, by the head
                    pyheld = max(0.0, acts - output_kept(r))
                continue
            if r in in_segment:  # checkpointed: saves nothing, keeps only the segment's output
                keep = output_kept(r) if r in last_of else 0.0
                seen(grad, acts, held + q(reg.nograd_peak))
            else:
                keep = q(reg.retained)
                seen(grad, acts, held + q(reg.fwd_peak))
            held = output_of(r) if keep == 0.0 else 0.0
            acts += keep
        end_of_forward = acts + q(regions[n + 1].retained) - pyheld
        seen(grad, acts, held + q(regions[n + 1].fwd_peak))
        acts = end_of_forward
        for r in range(n + 1, first - 1, -1):  # backward: tail, trainable blocks (stem if none frozen)
            reg = regions[r]
            if r in last_of:  # recompute the segment's activations just before its backward
                if regions[r].saves_output:  # the output kept as a boundary died with the next
                    # region's backward (it held it); the recompute makes a new one, counted below
                    acts -= output_kept(r)
                for s in last_of[r]:
                    seen(grad, acts, q(regions[s].fwd_peak))
                    # the segment's own output is recomputed only when its last block saves it
                    mine = s == r and not regions[s].saves_output
                    acts += q(regions[s].retained) - (output_kept(s) if mine else 0.0)
            # after the first micro-batch each new parameter gradient is added into ``.grad`` and
            # freed, not kept: the peak without the gradients made before it, with the one being added
            delta = _at(reg.bwd_delta, mb)  # a delta may be negative
            top = q(reg.bwd_peak if fresh else reg.bwd_peak_accum)
            if r == first and m:  # the first trainable block computes no gradient for its input
                delta -= q(reg.input)
                top = max(0.0, top - q(reg.input))
            seen(grad, acts, top)
            if fresh:  # its parameters' gradients appear; otherwise they accumulate in place
                grad += reg.grad_bytes
            acts += delta - reg.grad_bytes
        return end_of_forward

    kept = micro(fresh=True)
    if plan.micro_batches(batch_size) > 1:
        micro(fresh=False)
    # the optimizer's transients: per parameter on CPU (single-tensor loop: the largest one counts),
    # over all of them on CUDA (foreach kernels)
    if prof.method == "cuda":
        share = grads / max(1, sum(r.grad_bytes for r in regions))
    else:
        share = max((r.largest_param for r in regions[first:]), default=0) / max(
            1, max(r.largest_param for r in regions))
    seen(float(grads), 0.0, prof.opt_peak * share)
    peak, grad, acts, extra = best
    return peak, {"weights": float(prof.weights_bytes), "optimizer_state": float(states), "gradients": grad,
                  "activations": acts, "workspace": extra, "activations_end_of_forward": kept}


def _segments(blocks: list[int], segments: int) -> list[list[int]]:
    """The contiguous segments :func:`~edgeadapt.memory.knobs.apply_plan` makes (same split)."""
    if not segments:
        return []
    if segments > len(blocks):
        raise ConfigError(f"checkpoint_segments: {segments} segments need at least {segments} trainable "
                          f"blocks, the plan leaves {len(blocks)}; use at most {len(blocks)}")
    size, extra = divmod(len(blocks), segments)
    out, start = [], 0
    for s in range(segments):
        end = start + size + (s < extra)
        out.append(blocks[start:end])
        start = end
    return out


def predict(prof: Profile, plan: MemoryPlan, batch_size: int | None = None) -> Estimate:
    """A plan's :class:`Estimate` from a :class:`Profile`, without running it (microseconds).

    ``batch_size`` (default: the profiled batch) is the effective batch per optimizer step.
    Raises :class:`~edgeadapt.errors.ConfigError` for a plan the model or the loss refuses (more
    frozen blocks or segments than blocks, micro-batching a loss that is not per-sample)."""
    size = batch_size or prof.batch_size
    mb = check_micro_batching(plan, size, prof.traits)
    peak, parts = _replay(prof, plan, size)
    total = int(round(peak * prof.scale))
    breakdown = {k: int(round(v)) for k, v in parts.items()}
    # the calibration's share goes to the workspace, so the five parts sum to the prediction
    parts_sum = sum(v for k, v in breakdown.items() if k != "activations_end_of_forward")
    breakdown["workspace"] += total - parts_sum
    return Estimate(predicted_bytes=total, breakdown=breakdown, step_seconds=_seconds(prof, plan, size, mb),
                    plan=plan)


def _seconds(prof: Profile, plan: MemoryPlan, size: int, mb: int) -> float:
    """Step time: per region a fixed cost per op plus a part proportional to the micro-batch."""
    regions = prof.regions
    n = len(regions) - 2
    m = plan.frozen_blocks(n)
    first = m + 1 if m else 0
    recomputed = {r for seg in _segments(list(range(m + 1, n + 1)), plan.checkpoint_segments) for r in seg}

    def cost(seconds: float, ops: int, b: int) -> float:
        fixed = min(seconds, ops * prof.op_seconds)
        return fixed + (seconds - fixed) * b / prof.timed_size

    total = 0.0
    for b in [min(mb, size - i) for i in range(0, size, mb)]:
        for r, reg in enumerate(regions):
            fwd = cost(reg.fwd_seconds, reg.fwd_ops, b)
            total += fwd * (2 if r in recomputed else 1)
            total += cost(reg.bwd_seconds, reg.bwd_ops, b) if r >= first else 0.0
    all_grads = sum(r.grad_bytes for r in regions)
    return total + prof.opt_seconds * sum(r.grad_bytes for r in regions[first:]) / max(1, all_grads)


def estimate(adapter: ModelAdapter, plan: MemoryPlan, batch: Batch, optimizer: OptimizerName = "adam", *,
             loss_fn: LossFn | None = None, traits: LossTraits | None = None) -> Estimate:
    """Predict the peak memory (bytes, what the device must hold during a steady-state optimizer
    step: weights, optimizer state, gradients, activations, transients) and step time (seconds) of
    retraining ``adapter`` with ``plan`` on batches like ``batch`` (the effective batch) and
    ``optimizer``. Profiles two steps (:func:`profile`), then :func:`predict`; to compare many plans,
    profile once and call :func:`predict` for each. Errors: see :func:`profile` and :func:`predict`.
    """
    return predict(profile(adapter, batch, optimizer, loss_fn=loss_fn, traits=traits), plan,
                   batch_size_of(batch))


@dataclass(frozen=True)
class Measurement:
    """A plan's measured steady-state step: peak bytes (baseline + peak, :func:`measure_peak`) and
    wall-clock seconds of one untraced step."""

    total_bytes: int
    step_seconds: float
    method: str


def measure(adapter: ModelAdapter, plan: MemoryPlan, batch: Batch, optimizer: OptimizerName = "adam", *,
            loss_fn: LossFn | None = None, traits: LossTraits | None = None,
            chain: BlockChain | None = None) -> Measurement:
    """Run ``plan`` for real (three steps at learning rate 0, weights and buffers restored) and
    measure the steady-state step: what :func:`estimate` predicts. Tensor accounting on CPU,
    ``max_memory_allocated`` on CUDA."""
    model = adapter.model
    device = next(model.parameters()).device
    batch = to_device(batch, device)
    with probing(model), apply_plan(model, plan, chain or block_chain(adapter)) as knobs:
        opt = make_optimizer(knobs.trainable_parameters(), optimizer, lr=0.0)

        def step() -> float:
            return train_step(adapter, batch, plan, opt, loss_fn=loss_fn, traits=traits)
        step()
        _, report = measure_peak(step, device=device, modules=[model], optimizer=opt)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t
    return Measurement(total_bytes=report.total_bytes, step_seconds=seconds, method=report.method)
