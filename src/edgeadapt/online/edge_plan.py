"""Planning the edge methods' retraining for a memory and a time budget.

:func:`plan_for_memory` chooses the frozen leading blocks and checkpointed segments
(:class:`~edgeadapt.memory.plan.MemoryPlan`) that fit a byte budget, from the memory estimator's
prediction confirmed by measurement. :func:`plan_for_budget` plans a time budget
(:class:`TimeBudget`: seconds of retraining per domain, or a fraction of the unconstrained retraining
that ``full`` runs) with the memory budget: per plan it times the real retraining loop
(:func:`loop_seconds`), and so how many of the configured steps fit the time
(``RetrainBudget.edge_steps``); it may also drop the distillation term, whose frozen-FM teacher forward
is a fixed cost of every step. The measurements behind its preference order (fewer steps first, then
the loss without distillation, then frozen blocks) are in :mod:`edgeadapt.online.retrain`'s docstring.
Micro-batching is never planned: the adaptation loss is not a sum over samples
(:data:`~edgeadapt.memory.plan.ADAPTATION_LOSS`).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgeadapt.errors import ConfigError, InfeasibleError
from edgeadapt.memory.accounting import format_bytes
from edgeadapt.memory.estimator import Estimate, measure, predict, profile
from edgeadapt.memory.knobs import batch_size_of
from edgeadapt.memory.plan import ADAPTATION_LOSS, LossTraits, MemoryPlan
from edgeadapt.models.adapter import HFAdapter
from edgeadapt.numerics import upcast
from edgeadapt.online.retrain import Batch, LossFn, RetrainBudget, retrain
from edgeadapt.training.device import resolve_device

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
        unconstrained retraining, in (0, 1]). Raises :class:`~edgeadapt.errors.ConfigError` naming
        ``name`` for anything else, zero or a negative value, and a multiplier above 1: a time budget
        above the unconstrained run (``full``) is a request that would do nothing."""
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
        if unit == "x" and number > 1:
            raise ConfigError(f"{name}: {value!r} asks for more than the unconstrained retraining (1x, what "
                              "full runs), a request that would do nothing; give a fraction in (0, 1], e.g. "
                              "'0.5x', or leave the time budget out")
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
