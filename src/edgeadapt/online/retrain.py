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

A time budget (:class:`TimeBudget`: seconds of retraining per domain, or a fraction of the
unconstrained retraining that ``full`` runs) is planned with the memory budget by
:func:`plan_for_budget`: per plan it measures the step, and so how many of the configured steps fit
the time (``RetrainBudget.edge_steps``); it may also drop the distillation term, whose frozen-FM
teacher forward is a fixed cost of every step. Measured on the image benchmark (tiny ViT, width 0.75,
default stream, edgeadapt's mean accuracy): freezing 1 / 3 of 4 blocks cost 1.7 / 4.7 points (seed 0);
15 instead of 30 steps 1.2 (seed 0), 12 instead of 30 steps 2.6 (seed 2); dropping distillation at 15 /
12 steps a further 0.9 (seed 0) / 1.8 (seed 2) — hence the preference order in :func:`plan_for_budget`:
fewer steps first, then the loss without distillation, then frozen blocks. Dropping distillation
changes the loss, so a run records it (``memory_plan.loss``).
TODO: rank fitting plans by measured accuracy gain per second with :mod:`edgeadapt.memory.search`
(it needs labelled probes, which the edge does not have).
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from edgeadapt.errors import ConfigError, InfeasibleError
from edgeadapt.memory.accounting import format_bytes, measure_peak
from edgeadapt.memory.estimator import Estimate, measure, predict, profile
from edgeadapt.memory.knobs import batch_size_of
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


PREDICTION_SLACK = 1.25
"""Plans predicted up to this factor over the budget are still measured: the estimator misses some of
what our adaptation loss does (the replay batch's and the teacher's passes), by up to ±28% on tiny-vit,
so the measurement decides."""


CONFIGURED, WITHOUT_DISTILLATION = "as configured", "without distillation"
"""Names of the loss variants :func:`plan_for_budget` chooses between: the loss as configured, and the
same loss with ``distill: 0`` (no frozen-FM teacher forward per step)."""

TIME_SLACK = 1.5
"""Plans predicted up to this factor slower than the time allows are still measured (the estimator's
step time does not see the teacher's and the replay batch's passes as separate costs)."""

TIMING_REPEATS = 3
"""A timing is the fastest of this many runs: on a shared machine the minimum is the least disturbed."""

LOOP_STEPS = (2, 8)
"""The two short retraining runs (optimizer steps) :func:`loop_seconds` times."""

MIN_STEP_SHARE = 0.4
"""A time plan drops distillation, then freezes more blocks, only when fewer than this share of the
configured steps would fit otherwise (module docstring: the measurements behind the order)."""


@dataclass(frozen=True)
class PlannedMemory:
    """A memory (and time) plan chosen for a budget: the estimator's prediction (``estimate.plan`` is
    the plan) and the peak bytes of one steady-state step measured with it. With a time budget also:
    the step's measured seconds, the steps per domain that fit (``steps``), the loss variant
    (:data:`CONFIGURED` or :data:`WITHOUT_DISTILLATION`), the time budget in seconds per domain and,
    for a relative one, the unconstrained retraining's seconds it is a fraction of."""

    estimate: Estimate
    measured_bytes: int
    measured_step_seconds: float | None = None
    steps: int | None = None
    variant: str = CONFIGURED
    time_budget_seconds: float | None = None
    reference_seconds: float | None = None

    @property
    def plan(self) -> MemoryPlan:
        return self.estimate.plan


@dataclass(frozen=True)
class TimeBudget:
    """The edge methods' retraining time per domain: ``value`` seconds, or (``relative``) ``value`` times
    the unconstrained retraining — the whole model trainable, no memory knobs, the same loss, batch and
    steps, i.e. what ``full`` runs. Only the optimizer steps count (forward, backward(s), update), as
    measured on this device; data loading and evaluation do not. ``text`` is the budget as given."""

    value: float
    relative: bool
    text: str

    @classmethod
    def parse(cls, value: float | int | str, name: str = "time_budget") -> TimeBudget:
        """``1.5`` / ``"1.5s"`` / ``"1500ms"`` (seconds per domain) or ``"0.5x"`` (a fraction of the
        unconstrained retraining). Raises :class:`~edgeadapt.errors.ConfigError` naming ``name`` for
        anything else, zero or a negative value."""
        why = (f"{name}: {value!r} is not a time budget; give seconds of retraining per domain (e.g. 1.5, "
               "'1.5s' or '1500ms') or a fraction of the unconstrained retraining (e.g. '0.5x')")
        if isinstance(value, bool):
            raise ConfigError(why)
        if isinstance(value, (int, float)):
            number, unit = float(value), "s"
        else:
            match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|x)?\s*", str(value))
            if not match:
                raise ConfigError(why)
            number, unit = float(match.group(1)), match.group(2) or "s"
        if not math.isfinite(number) or number <= 0:
            raise ConfigError(f"{name}: {value!r} must be positive; give e.g. 1.5 (seconds per domain) or "
                              "'0.5x'")
        seconds = number / 1000 if unit == "ms" else number
        return cls(seconds, unit == "x", str(value))

    def seconds(self, reference_seconds: float | None) -> float:
        """The budget in seconds per domain; a relative one needs the unconstrained retraining's seconds."""
        if not self.relative:
            return self.value
        if reference_seconds is None:
            raise ConfigError(f"time_budget={self.text} is relative: it needs the unconstrained step's time")
        return self.value * reference_seconds

    def suggest(self, seconds: float, reference_seconds: float | None) -> str:
        """``seconds`` in the budget's own terms (``'0.62x'`` for a relative one, ``'1.24s'`` otherwise)."""
        if self.relative and reference_seconds:
            return f"{math.ceil(100 * seconds / reference_seconds) / 100:.2f}x"
        return f"{math.ceil(100 * seconds) / 100:.2f}s"


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


def loop_seconds(adapter: HFAdapter, loss_fn: LossFn, batch: Batch, device: str = "auto",
                 plan: MemoryPlan | None = None, constrained: bool = True) -> tuple[float, float]:
    """``(fixed, per_step)``: seconds per domain and per optimizer step of :func:`retrain` on ``adapter``
    (its ``requires_grad`` parameters) with ``loss_fn`` on batches like ``batch`` under ``plan`` (an
    unconstrained method: ``constrained=False``, no plan). Timed as the real loop runs — data handling,
    float32 master weights, the plan's hooks, the optimizer — on copies, for :data:`LOOP_STEPS` steps,
    each the fastest of :data:`TIMING_REPEATS`; the line through the two gives both figures. A single
    step timed alone (:func:`~edgeadapt.memory.estimator.measure`) misses the loop's overhead, which
    differs between a proxy under a plan and the whole model (by ~15% of a step on the tiny ViT)."""
    size = batch_size_of(batch)
    times = []
    for n in LOOP_STEPS:
        budget = RetrainBudget(steps=n, batch_size=size, device=device, gradient_checkpointing=False,
                               memory=plan if constrained else None)
        times.append(min(retrain(copy.deepcopy(adapter), lambda _e: [batch], loss_fn, budget, measure=False,
                                 constrained=constrained).seconds for _ in range(TIMING_REPEATS)))
    (a, b), (ta, tb) = LOOP_STEPS, times
    per_step = max((tb - ta) / (b - a), 1e-9)
    return max(ta - a * per_step, 0.0), per_step


def plan_for_budget(adapter: HFAdapter, losses: Sequence[tuple[str, LossFn]], batch: Batch,
                    memory_bytes: int | None, time_budget: TimeBudget, steps: int, device: str = "auto",
                    reference: tuple[float, float] | None = None) -> PlannedMemory:
    """The plan for retraining ``adapter`` within ``memory_bytes`` (``None``: any) and ``time_budget``
    per domain: a memory plan (frozen leading blocks, checkpoint segments), one of ``losses`` (name, loss
    function; in order of preference, e.g. ``[(CONFIGURED, ours), (WITHOUT_DISTILLATION, lighter)]``)
    and the steps per domain (at most ``steps``) that fit the time as the plan's loop measures
    (:func:`loop_seconds`: ``fixed + steps × per_step`` seconds).

    For each number of frozen blocks, fewest first, and each loss, the plans predicted to fit the
    memory (within :data:`PREDICTION_SLACK`) are measured fastest-predicted first until one fits when
    measured (bytes: one steady-state step; seconds: :func:`loop_seconds`). The earliest loss whose
    plan keeps at least :data:`MIN_STEP_SHARE` of ``steps`` is taken (with as many steps as fit); when
    none does, the next frozen count is tried, and at the end the plan affording the most steps (fewest
    frozen blocks, then the earlier loss, among equals). Cutting steps comes first and freezing last
    because that is the order of their accuracy cost in our measurements (module docstring). A relative
    ``time_budget`` is resolved against ``reference`` (``(fixed, per_step)`` of the unconstrained
    retraining, :func:`loop_seconds` with ``constrained=False``) for ``steps`` steps.

    Raises :class:`~edgeadapt.errors.InfeasibleError` when no plan fits the memory (naming the smallest
    memory budget, as :func:`plan_for_memory`) or when not even one step of the fastest plan that fits
    the memory fits the time (naming the smallest time budget that does)."""
    if not losses:
        raise ConfigError("plan_for_budget needs at least one loss")
    whole = None if reference is None else reference[0] + steps * reference[1]
    seconds = time_budget.seconds(whole)
    probe = copy.deepcopy(adapter)
    probe.model.to(resolve_device(device))
    upcast(probe.model)
    steady = LossTraits(ADAPTATION_LOSS.name, per_sample=True, min_samples=ADAPTATION_LOSS.min_samples)
    profiles = [profile(probe, batch, "adamw", loss_fn=fn, traits=steady) for _, fn in losses]
    blocks = len(profiles[0].chain.blocks)
    done: dict[tuple[int, MemoryPlan], tuple[int, float, float]] = {}

    def measured(i: int, plan: MemoryPlan) -> tuple[int, float, float]:
        """(peak bytes, fixed seconds, seconds per step); timed only when the bytes fit."""
        if (i, plan) not in done:
            fn = losses[i][1]
            nbytes = measure(probe, plan, batch, "adamw", loss_fn=fn, traits=ADAPTATION_LOSS).total_bytes
            fixed, per_step = loop_seconds(probe, fn, batch, device, plan) if fits(nbytes) else (0.0, 0.0)
            done[i, plan] = nbytes, fixed, per_step
        return done[i, plan]

    def fits(nbytes: int) -> bool:
        return memory_bytes is None or nbytes <= memory_bytes

    def refuse(i: int, plan: MemoryPlan, fixed: float, step: float) -> None:
        within = "" if memory_bytes is None else f" within memory_budget={format_bytes(memory_bytes)}"
        raise InfeasibleError(
            f"time_budget={time_budget.text} ({seconds:.3f} s of retraining per domain) is infeasible"
            f"{within}: the fastest plan (freeze {plan.freeze_blocks} of {blocks} blocks, "
            f"{plan.checkpoint_segments} checkpoint segments, loss {losses[i][0]}) measures {fixed:.3f} s "
            f"per domain + {step:.4f} s per step, so not one step fits; set time_budget >= "
            f"{time_budget.suggest(fixed + step, whole)}, or a narrower proxy (width)")

    # the fastest plan first (every block frozen, the last loss): when not one of its steps fits, none does
    nbytes, fixed, step = measured(len(losses) - 1, MemoryPlan(freeze_blocks=blocks))
    if fits(nbytes) and fixed + step > seconds:
        refuse(len(losses) - 1, MemoryPlan(freeze_blocks=blocks), fixed, step)
    best: tuple[tuple[int, int, int, float], PlannedMemory] | None = None
    for k in range(blocks + 1):
        options = []
        for i, prof in enumerate(profiles):
            estimates = sorted((predict(prof, MemoryPlan(freeze_blocks=k, checkpoint_segments=s))
                                for s in range(blocks - k + 1)), key=lambda e: e.step_seconds)
            for e in estimates:
                if memory_bytes is not None and e.predicted_bytes > memory_bytes * PREDICTION_SLACK:
                    continue
                nbytes, fixed, step = measured(i, e.plan)
                if fits(nbytes):
                    n = min(steps, max(0, int((seconds - fixed) / step)))
                    planned = PlannedMemory(e, nbytes, step, n, losses[i][0], seconds, whole)
                    options.append(((n, -k, -i, -step), planned))
                    break
        enough = [o for o in options if o[0][0] >= max(1, math.ceil(MIN_STEP_SHARE * steps))]
        if enough:  # the earliest loss that keeps enough steps
            return max(enough, key=lambda o: (o[0][2], o[0][0], o[0][3]))[1]
        for key, chosen in options:
            if best is None or key > best[0]:
                best = key, chosen
    if best is not None and best[0][0] >= 1:
        return best[1]
    if best is None:  # nothing fits the memory: the memory planner's error names the smallest budget
        plan_for_memory(adapter, losses[-1][1], batch, memory_bytes or 0, device)
    (i, plan), (_, fixed, step) = min((v for v in done.items() if fits(v[1][0])),
                                      key=lambda v: v[1][1] + v[1][2])
    refuse(i, plan, fixed, step)
    raise AssertionError("unreachable")  # pragma: no cover - refuse() raises


def describe_plan(planned: PlannedMemory, memory_bytes: int | None) -> dict[str, Any]:
    """What a run records about its chosen plan: the plan's fields, the budget, the predicted and
    measured peak bytes and the predicted step seconds; with a time budget also the measured step
    seconds, the budget and reference in seconds per domain, the edge steps and the loss variant."""
    out = {**planned.plan.model_dump(mode="json"), "budget_bytes": memory_bytes,
           "predicted_bytes": planned.estimate.predicted_bytes, "measured_bytes": planned.measured_bytes,
           "predicted_step_seconds": planned.estimate.step_seconds}
    if planned.steps is not None:
        out.update(measured_step_seconds=planned.measured_step_seconds, steps=planned.steps,
                   loss=planned.variant, time_budget_seconds=planned.time_budget_seconds,
                   reference_seconds=planned.reference_seconds)
    return out


def unlabeled(batches: Iterable[Batch]) -> Iterable[Batch]:
    """The same batches without labels (what an edge device sees)."""
    for b in batches:
        yield {k: v for k, v in b.items() if k != "labels"}


def describe(result: RetrainResult) -> dict[str, Any]:
    return {"retrain_seconds": result.seconds, "steps": result.steps,
            "peak_memory_bytes": result.peak_memory_bytes,
            "trainable_params": result.trainable_params}
