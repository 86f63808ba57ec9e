"""Retraining on the edge: a few hundred steps on the current window, within a step or time budget.

It is the shared training loop with an adaptation loss (:mod:`edgeadapt.online.losses`), a
choice of trainable parameters, and a peak-memory measurement of one representative step
(tensor accounting on CPU, ``max_memory_allocated`` on CUDA), so every method in the stream
runner is trained and measured the same way.

A method whose update is not "one loss, one backward, one optimizer step" (SAR's sharpness-aware
step takes two forward/backward passes; EATA skips the update when no sample passes its filters)
supplies a :data:`StepFn` instead of a loss: it gets the adapter, the batch and the optimizer and
does the whole update. :func:`retrain` then runs a plain step loop with the same budget, seed,
device, memory measures and memory/time measurement as the loss path (which stays on
:func:`~edgeadapt.training.loop.fit`).

The edge's memory measures are either the fixed ``gradient_checkpointing`` switch or a
:class:`~edgeadapt.memory.plan.MemoryPlan` (``RetrainBudget.memory``: frozen leading blocks and
checkpointed segments), chosen for a byte budget by
:func:`~edgeadapt.online.edge_plan.plan_for_memory`. Our adaptation loss is not a sum over samples
(MMD alignment, class diversity), so a plan that micro-batches it is refused up front
(:data:`~edgeadapt.memory.plan.ADAPTATION_LOSS`).

A time budget (:class:`~edgeadapt.online.edge_plan.TimeBudget`: seconds of retraining per domain,
or a fraction of the unconstrained retraining that ``full`` runs) is planned with the memory budget
by :func:`~edgeadapt.online.edge_plan.plan_for_budget`: per plan it measures the step, and so how
many of the configured steps fit the time (``RetrainBudget.edge_steps``); it may also drop the
distillation term, whose frozen-FM teacher forward is a fixed cost of every step. Measured on the
image benchmark (tiny ViT, width 0.75, default stream, edgeadapt's mean accuracy): freezing 1 / 3
of 4 blocks cost 1.7 / 4.7 points (seed 0); 15 instead of 30 steps 1.2 (seed 0), 12 instead of 30
steps 2.6 (seed 2); dropping distillation at 15 / 12 steps a further 0.9 (seed 0) / 1.8 (seed 2) —
hence the planner's preference order: fewer steps first, then the loss without distillation, then
frozen blocks. Dropping distillation changes the loss, so a run records it (``memory_plan.loss``).
TODO: rank fitting plans by measured accuracy gain per second with :mod:`edgeadapt.memory.search`
(it needs labelled probes, which the edge does not have).
"""

from __future__ import annotations

import copy
import itertools
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from edgeadapt.errors import ConfigError
from edgeadapt.memory.accounting import measure_peak
from edgeadapt.memory.plan import ADAPTATION_LOSS, MemoryPlan, check_micro_batching
from edgeadapt.models.adapter import HFAdapter
from edgeadapt.numerics import fp32_master, upcast
from edgeadapt.training.config import TrainConfig
from edgeadapt.training.device import resolve_device, to_device
from edgeadapt.training.loop import fit, memory_plan, own_rng, set_checkpointing

Batch = dict[str, torch.Tensor]
LossFn = Callable[[HFAdapter, Batch], torch.Tensor]
StepFn = Callable[[HFAdapter, Batch, torch.optim.Optimizer], torch.Tensor]
"""One whole update: ``step(adapter, batch, optimizer)`` runs the forward/backward pass(es), calls
``optimizer.step()`` (or decides not to), leaves the gradients zeroed and returns the (detached)
loss it minimised. A stateful step is an object; :func:`step_memory` probes a deep copy of it."""


class RetrainBudget(BaseModel):
    """How much retraining one domain gets."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(30, ge=1, description="Optimizer steps per domain.")
    seconds: float | None = Field(None, gt=0, description="Optional wall-clock cap per domain.")
    batch_size: int = Field(64, ge=1, description="Samples per step.")
    learning_rate: float = Field(3e-4, gt=0, description="AdamW learning rate (constant after warmup).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:N]'.")
    gradient_checkpointing: bool = Field(True, description="Recompute block activations in backward on "
                                         "the edge (static and edgeadapt): less memory, more time. The "
                                         "unconstrained baselines (full, tent) never use it. Ignored when "
                                         "memory is given.")
    memory: MemoryPlan | None = Field(None, description="The edge methods' memory plan (freeze_blocks / "
                                      "freeze_fraction, checkpoint_segments), replacing the "
                                      "gradient_checkpointing switch; micro_batch_size must stay null, "
                                      "since the adaptation loss (MMD, class diversity) is not a sum over "
                                      "samples. `adapt --memory-budget` chooses one.")
    edge_steps: int | None = Field(None, ge=1, description="Optimizer steps per domain of the edge methods "
                                   "(static, edgeadapt) instead of steps, e.g. fewer to fit a time budget "
                                   "(`adapt --time-budget` chooses them); null: steps.")

    @field_validator("memory")
    @classmethod
    def _memory(cls, plan: MemoryPlan | None, info: ValidationInfo) -> MemoryPlan | None:
        if plan is not None and "batch_size" in info.data:  # refused here, before any compute
            check_micro_batching(plan, info.data["batch_size"], ADAPTATION_LOSS)
        return plan

    def edge_plan(self, constrained: bool) -> MemoryPlan | None:
        """The memory plan a method runs under: ``memory`` for a constrained (edge) method, else none."""
        return self.memory if constrained else None

    def steps_for(self, constrained: bool) -> int:
        """The optimizer steps per domain a method runs: ``edge_steps`` (when set) for a constrained
        (edge) method, else ``steps``."""
        return self.edge_steps if constrained and self.edge_steps is not None else self.steps


@dataclass
class RetrainResult:
    seconds: float
    steps: int
    peak_memory_bytes: int
    trainable_params: int


def loss_step(loss_fn: LossFn) -> StepFn:
    """The ordinary update as a :data:`StepFn`: one forward through ``loss_fn``, one backward, one
    optimizer step."""

    def step(adapter: HFAdapter, batch: Batch, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(adapter, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def step_memory(adapter: HFAdapter, loss_fn: LossFn | None, batch: Batch, lr: float, device: torch.device,
                checkpointing: bool = False, *, step: StepFn | None = None,
                plan: MemoryPlan | None = None) -> int:
    """Peak bytes of one steady-state retraining step (forward, backward(s), AdamW update)
    including parameters, gradients and optimizer state, measured on a throwaway copy so training
    is unaffected. One unmeasured step runs first, so AdamW's moments already exist during the
    measured backward, as on every step after the first (measuring the first step under-reported
    the peak by about 13% on the tiny ViT). A
    bf16/fp16 model is measured on float32 master weights, as :func:`fit` trains it. With ``step``
    the method's own update is measured (on a deep copy of it, so a stateful step keeps its state)
    instead of ``loss_fn``'s. With ``plan`` the step runs under its frozen blocks and checkpointed
    segments (and ``checkpointing`` is ignored)."""
    if step is None and loss_fn is None:
        raise ConfigError("step_memory needs a loss function or a step function")
    update = copy.deepcopy(step) if step is not None else loss_step(loss_fn)  # type: ignore[arg-type]
    probe = copy.deepcopy(adapter)
    probe.model.to(device).train()
    upcast(probe.model)
    set_checkpointing(probe.model, checkpointing and plan is None)
    batch = to_device(batch, device)
    with memory_plan(probe, plan):
        params = [p for p in probe.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr)
        update(probe, batch, opt)  # the optimizer's state now exists, as in every later step
        _, report = measure_peak(lambda: update(probe, batch, opt), device=device, modules=[probe.model],
                                 optimizer=opt)
    return report.total_bytes


def retrain(adapter: HFAdapter, batches: Callable[[int], Iterable[Batch]], loss_fn: LossFn | None,
            budget: RetrainBudget, seed: int = 0, measure: bool = True, constrained: bool = True, *,
            step: StepFn | None = None) -> RetrainResult:
    """Train ``adapter`` (its ``requires_grad`` parameters) on ``batches(epoch)`` with ``loss_fn``
    for ``budget.steps`` optimizer steps (or ``budget.seconds``). ``constrained`` methods run under
    the edge's memory measures: ``budget.memory``'s plan when given, else
    ``budget.gradient_checkpointing``, for ``budget.edge_steps`` steps when given. With ``step``
    (then ``loss_fn`` may be ``None``) each update is the method's own (:data:`StepFn`), on an AdamW
    optimizer with the budget's learning rate and weight decay, no clipping; a step that skips its
    update still counts against the budget, as a batch the device spent time on."""
    if step is None and loss_fn is None:
        raise ConfigError("retrain needs a loss function or a step function")
    plan = budget.edge_plan(constrained)
    checkpointing = budget.gradient_checkpointing and constrained and plan is None
    budget = budget.model_copy(update={"steps": budget.steps_for(constrained)})
    device = resolve_device(budget.device)
    trainable = sum(p.numel() for p in adapter.model.parameters() if p.requires_grad)
    if trainable == 0:
        raise ConfigError("trainable: no parameter of the model is trainable; choose another 'trainable' set")
    peak = step_memory(adapter, loss_fn, next(iter(batches(0))), budget.learning_rate, device,
                       checkpointing, step=step, plan=plan) if measure else 0
    if step is not None:
        start = time.perf_counter()
        steps = _step_loop(adapter, batches, step, budget, seed, device, checkpointing, plan)
        adapter.model.eval()
        return RetrainResult(time.perf_counter() - start, steps, peak, trainable)
    per_epoch = sum(1 for _ in batches(0))
    cfg = TrainConfig(epochs=max(1, -(-budget.steps // per_epoch)), max_steps=budget.steps,
                      max_seconds=budget.seconds, learning_rate=budget.learning_rate,
                      weight_decay=budget.weight_decay, schedule="constant", warmup_fraction=0.0,
                      seed=seed, device=budget.device, progress=False, gradient_checkpointing=checkpointing,
                      memory=plan)
    start = time.perf_counter()
    result = fit(adapter, batches, cfg, loss_fn=loss_fn, loss_traits=ADAPTATION_LOSS)
    adapter.model.eval()
    return RetrainResult(time.perf_counter() - start, result.steps, peak, trainable)


def _step_loop(adapter: HFAdapter, batches: Callable[[int], Iterable[Batch]], step: StepFn,
               budget: RetrainBudget, seed: int, device: torch.device, checkpointing: bool,
               plan: MemoryPlan | None = None) -> int:
    """Run ``step`` over ``batches(0), batches(1), ...`` until ``budget.steps`` (or ``budget.seconds``);
    seeded on private RNG streams and on float32 master weights, like :func:`fit`. Returns the steps run."""
    model = adapter.model
    with own_rng(device), fp32_master(model), memory_plan(adapter, plan):
        torch.manual_seed(seed)
        random.seed(seed)
        model.to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=budget.learning_rate, weight_decay=budget.weight_decay)
        set_checkpointing(model, checkpointing)
        done, start = 0, time.perf_counter()
        try:
            for epoch in itertools.count():
                seen = 0
                for batch in batches(epoch):
                    seen += 1
                    loss = step(adapter, to_device(batch, device), opt)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"loss is {loss.item()} at step {done}; lower learning_rate")
                    done += 1
                    out_of_time = budget.seconds is not None and time.perf_counter() - start >= budget.seconds
                    if done >= budget.steps or out_of_time:
                        return done
                if seen == 0:
                    raise ConfigError("train data is empty: an epoch yielded no batches")
        finally:
            set_checkpointing(model, False)
            model.eval()
    return done  # pragma: no cover - the loop above only exits by returning


def unlabeled(batches: Iterable[Batch]) -> Iterable[Batch]:
    """The same batches without labels (what an edge device sees)."""
    for b in batches:
        yield {k: v for k, v in b.items() if k != "labels"}


def describe(result: RetrainResult) -> dict[str, Any]:
    return {"retrain_seconds": result.seconds, "steps": result.steps,
            "peak_memory_bytes": result.peak_memory_bytes,
            "trainable_params": result.trainable_params}
