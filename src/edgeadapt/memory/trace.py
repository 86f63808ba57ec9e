"""Trace one training step into regions, and the records a trace yields.

The estimator (:mod:`edgeadapt.memory.estimator`) splits a step into *regions* in execution order:
the stem (before the first block), each block, the tail (head and loss), forward and backward,
and the optimizer step. :class:`Trace` is storage accounting (:mod:`edgeadapt.memory.accounting`)
that records per region the live bytes at entry and exit, the peak, the ops and the wall time,
and, through ``saved_tensors_hooks``, the saved-activation bytes and whether a region saves its
own input or output. :func:`traced_step` runs one step (or a ``no_grad`` forward pass, or an
untraced timing step) under it. :class:`Region` and :class:`Profile` hold what
:func:`~edgeadapt.memory.profile.profile` makes of the traces: every per-region figure a line in
the micro-batch size (:func:`fit_line` through two traced sizes, :func:`line_at` to read it).
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

from edgeadapt.memory.accounting import _storage, _StorageAccountant, bytes_of
from edgeadapt.memory.knobs import BlockChain
from edgeadapt.memory.plan import LossTraits
from edgeadapt.models.adapter import ModelAdapter

Batch = dict[str, torch.Tensor]
LossFn = Callable[[ModelAdapter, Batch], torch.Tensor]
Line = tuple[float, float]  # (intercept, slope) of a figure as a function of the micro-batch size

__all__ = ["Line", "Profile", "Region", "Trace", "fit_line", "line_at", "optimizer_state", "probing",
           "region_params", "seconds_per_op", "tensor_bytes", "traced_step"]


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


def line_at(line: Line, b: int) -> float:
    """The value of ``line`` at micro-batch size ``b``."""
    return line[0] + line[1] * b


def fit_line(points: list[tuple[int, float]]) -> Line:
    """The line through two (b, value) points; through the origin for one point (or equal b)."""
    (b1, v1), (b2, v2) = points[0], points[-1]
    if b1 == b2:
        return (0.0, v1 / b1)
    slope = (v2 - v1) / (b2 - b1)
    return (v1 - slope * b1, slope)


class Trace(_StorageAccountant):
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


def seconds_per_op(device: torch.device) -> float:
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


def traced_step(model: nn.Module, chain: BlockChain, adapter: ModelAdapter, batch: Batch, loss_fn: LossFn,
                 opt: torch.optim.Optimizer, device: torch.device,
                 mode: Literal["step", "time", "forward"] = "step") -> tuple[Trace, int]:
    """One step without knobs, split into regions; returns the trace and the measured peak (bytes,
    the device's own method) of the step. ``"time"`` only times the regions (no storage
    accounting, so the times are those of a plain step); ``"forward"`` traces only a forward pass
    under ``torch.no_grad`` (what frozen and checkpointed regions do)."""
    account = mode != "time"
    blocks = [model.get_submodule(p) for p in chain.blocks]
    n = len(blocks)
    trace = Trace(device, sync=not account and device.type == "cuda")
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


def region_params(model: nn.Module, chain: BlockChain) -> list[list[nn.Parameter]]:
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


def tensor_bytes(tensors: list[torch.Tensor], device: torch.device) -> int:
    """Bytes of the distinct storages behind ``tensors`` that live on ``device``'s type."""
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


def optimizer_state(opt: torch.optim.Optimizer, p: nn.Parameter) -> list[torch.Tensor]:
    """The optimizer's state tensors for ``p`` (Adam: exp_avg, exp_avg_sq, step; SGD: momentum)."""
    return [v for v in opt.state.get(p, {}).values() if isinstance(v, torch.Tensor)]
