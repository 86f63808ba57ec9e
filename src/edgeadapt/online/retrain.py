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
checkpointed segments). :func:`plan_for_memory` chooses one for a byte budget from the memory
estimator's prediction. Our adaptation loss is not a sum over samples (MMD alignment, class
diversity), so a plan that micro-batches it is refused up front
(:data:`~edgeadapt.memory.plan.ADAPTATION_LOSS`).
TODO: rank fitting plans by measured accuracy gain per second with :mod:`edgeadapt.memory.search`.
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

from edgeadapt.errors import ConfigError, InfeasibleError
from edgeadapt.memory.accounting import format_bytes, measure_peak
from edgeadapt.memory.estimator import Estimate, measure, predict, profile
from edgeadapt.memory.plan import ADAPTATION_LOSS, LossTraits, MemoryPlan, check_micro_batching
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

    @field_validator("memory")
    @classmethod
    def _memory(cls, plan: MemoryPlan | None, info: ValidationInfo) -> MemoryPlan | None:
        if plan is not None and "batch_size" in info.data:  # refused here, before any compute
            check_micro_batching(plan, info.data["batch_size"], ADAPTATION_LOSS)
        return plan

    def edge_plan(self, constrained: bool) -> MemoryPlan | None:
        """The memory plan a method runs under: ``memory`` for a constrained (edge) method, else none."""
        return self.memory if constrained else None


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
    ``budget.gradient_checkpointing``. With ``step`` (then ``loss_fn``
    may be ``None``) each update is the method's own (:data:`StepFn`), on an AdamW optimizer with
    the budget's learning rate and weight decay, no clipping; a step that skips its update still
    counts against the budget, as a batch the device spent time on."""
    if step is None and loss_fn is None:
        raise ConfigError("retrain needs a loss function or a step function")
    plan = budget.edge_plan(constrained)
    checkpointing = budget.gradient_checkpointing and constrained and plan is None
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


PREDICTION_SLACK = 1.25
"""Plans predicted up to this factor over the budget are still measured: the estimator misses some of
what our adaptation loss does (the replay batch's and the teacher's passes), by up to ±28% on tiny-vit,
so the measurement decides."""


@dataclass(frozen=True)
class PlannedMemory:
    """A memory plan chosen for a budget: the estimator's prediction (``estimate.plan`` is the plan)
    and the peak bytes of one steady-state step measured with it."""

    estimate: Estimate
    measured_bytes: int

    @property
    def plan(self) -> MemoryPlan:
        return self.estimate.plan


def plan_for_memory(adapter: HFAdapter, loss_fn: LossFn, batch: Batch, memory_bytes: int,
                    device: str = "auto", name: str = "memory_budget") -> PlannedMemory:
    """The memory plan for retraining ``adapter`` (its ``requires_grad`` parameters, AdamW) with
    ``loss_fn`` on batches like ``batch`` within ``memory_bytes`` of peak memory.

    A copy of the model is profiled once on ``device`` (:func:`~edgeadapt.memory.estimator.profile`,
    two traced steps at learning rate 0) and every plan of freezing (0 … all blocks) and checkpointing
    (0 … the trainable blocks in segments) is predicted (:func:`~edgeadapt.memory.estimator.predict`);
    micro-batching is left out, as the adaptation loss is not per-sample. Plans predicted to fit
    (within :data:`PREDICTION_SLACK`) are tried in order of preference — fewest frozen blocks first
    (freezing costs accuracy, which a prediction cannot see), then the fastest predicted step — and
    the first whose measured steady-state step (:func:`~edgeadapt.memory.estimator.measure`) fits
    wins: the estimator misses some of what our loss holds (the replay batch's and the teacher's
    passes), so the measurement decides. Raises :class:`~edgeadapt.errors.InfeasibleError` naming the
    smallest feasible budget (the measured peak of the plan with the smallest prediction) when no
    plan fits."""
    probe = copy.deepcopy(adapter)
    probe.model.to(resolve_device(device))
    upcast(probe.model)
    # Profiled as if per-sample: the estimator then traces a half batch first (creating the optimizer
    # state) and the whole batch second, a steady-state step. Given the loss's own traits it traces
    # only one, first step, and under-predicts the steady-state peak (by 21% on tiny-vit). Every
    # candidate runs the whole batch, the traced size, so the half-batch trace predicts nothing.
    steady = LossTraits(ADAPTATION_LOSS.name, per_sample=True, min_samples=ADAPTATION_LOSS.min_samples)
    prof = profile(probe, batch, "adamw", loss_fn=loss_fn, traits=steady)
    blocks = len(prof.chain.blocks)
    estimates = [predict(prof, MemoryPlan(freeze_blocks=k, checkpoint_segments=s))
                 for k in range(blocks + 1) for s in range(blocks - k + 1)]

    def measured(e: Estimate) -> int:
        return measure(probe, e.plan, batch, "adamw", loss_fn=loss_fn, traits=ADAPTATION_LOSS).total_bytes

    fits = sorted((e for e in estimates if e.predicted_bytes <= memory_bytes * PREDICTION_SLACK),
                  key=lambda e: (e.plan.freeze_blocks, e.step_seconds, e.predicted_bytes))
    tried: dict[MemoryPlan, int] = {}
    for e in fits:
        tried[e.plan] = measured(e)
        if tried[e.plan] <= memory_bytes:
            return PlannedMemory(e, tried[e.plan])
    smallest = min(estimates, key=lambda e: e.predicted_bytes)
    need = tried.get(smallest.plan) or measured(smallest)
    if need <= memory_bytes:  # over-predicted beyond the slack, but it fits
        return PlannedMemory(smallest, need)
    raise InfeasibleError(f"{name}={format_bytes(memory_bytes)} ({memory_bytes:,} bytes) is infeasible: "
                          f"the smallest plan (freeze {smallest.plan.freeze_blocks} of {blocks} blocks, "
                          f"{smallest.plan.checkpoint_segments} checkpoint segments) measures "
                          f"{format_bytes(need)}; set {name} >= {need:,} bytes, "
                          f"or a narrower proxy (width)")


def describe_plan(planned: PlannedMemory, memory_bytes: int) -> dict[str, Any]:
    """What a run records about its chosen plan: the plan's fields, the budget, the predicted and
    measured peak bytes and the predicted step seconds."""
    return {**planned.plan.model_dump(mode="json"), "budget_bytes": memory_bytes,
            "predicted_bytes": planned.estimate.predicted_bytes, "measured_bytes": planned.measured_bytes,
            "predicted_step_seconds": planned.estimate.step_seconds}


def unlabeled(batches: Iterable[Batch]) -> Iterable[Batch]:
    """The same batches without labels (what an edge device sees)."""
    for b in batches:
        yield {k: v for k, v in b.items() if k != "labels"}


def describe(result: RetrainResult) -> dict[str, Any]:
    return {"retrain_seconds": result.seconds, "steps": result.steps,
            "peak_memory_bytes": result.peak_memory_bytes,
            "trainable_params": result.trainable_params}
