"""Choose a memory plan under a budget: predict every plan, keep the Pareto set, probe the survivors.

MPOptimizer (Zhang et al., FGCS 2025) intends a rule engine that strikes out configurations over
the memory budget or dominated in (memory, time), then an accuracy-gain search that trains each
survivor briefly and keeps the one whose accuracy rises fastest per second. Its repository's
search cannot run (it probes only configuration 0 and discards its own ranking); this is that
algorithm done right:

1. **Enumerate** plans (:func:`enumerate_plans`): micro-batch sizes that divide the batch (only
   the whole batch for a loss that is not per-sample), leading frozen blocks, and checkpoint
   segments ``0 … trainable blocks``; with ``batch_sizes``, also at smaller *effective* batches
   (the data's batches split into several optimizer steps): MPOptimizer's batch size as a knob
   that trades memory for more, cheaper updates. Unlike accumulation it changes the training
   (noisier steps, BatchNorm over fewer samples), so it is offered only when the caller asks and
   judged by the probes like freezing.
2. **Predict** each with one profile (:func:`~edgeadapt.memory.estimator.profile` once, then
   :func:`~edgeadapt.memory.estimator.predict` per plan: microseconds each). Plans predicted over
   the budget are dropped; when none is left, :class:`~edgeadapt.errors.InfeasibleError` names
   the smallest budget some plan fits and that plan.
3. **Pareto filter** (:func:`pareto`, per effective batch size) on (predicted bytes, predicted
   step seconds). Freezing
   changes *what* learns, not only its cost, so a plan is dominated only by one that freezes no
   more blocks (otherwise "freeze everything", the cheapest in both memory and time, would
   dominate every plan and the accuracy probes would have nothing to choose from).
4. **Probe** the survivors. Plans that freeze the same blocks and normalise alike (BatchNorm over
   the batch, frozen, or over micro-batches) make the same update per step: checkpointing and
   accumulating a per-sample loss change memory and time only. So each such class is probed
   once, by its fastest predicted plan, and the others are slower for the same gain; probe
   noise cannot pick a slower twin. At most ``max_probes`` classes (spread over the freezing
   levels) are probed: each representative is measured for real
   (:func:`~edgeadapt.memory.estimator.measure`; one measured over the budget is dropped and the
   next fastest of its class taken), then trained from the same starting weights on the current
   data by successive halving (:func:`~edgeadapt.memory.probes.race` with a
   :class:`~edgeadapt.memory.probes.Prober`) over the *retraining horizon* the caller names
   (``horizon_steps``, default the online stage's 30 steps per domain, or ``horizon_seconds``):
   arms are compared on the gain they have *reached* at equal steps (equal predicted training
   seconds for a time horizon), the final round at the whole horizon or at the share of it that
   ``max_probe_seconds`` affords.
   MPOptimizer ranks by gain per second over probes of a few steps instead; measured over 10 s of
   real retraining that favours freezing (cheap steps, quick early gains that plateau lower)
   where keeping every block trainable ends higher. The gain is the rise in accuracy on held-out
   batches (labelled classification) or the fall of the task loss (language models, label-free
   data) since the start; accuracy ties are broken by the loss decrease. An arm that changes the
   training must beat one that does not by more than the probe noise (the standard error of the
   held-out accuracy at the accuracy it reached, or 1% of the loss) per unit of departure: each
   frozen block, each halving of the batch, BatchNorm no longer over the whole batch
   (micro-batching and checkpointing alone make the unconstrained run's updates). On a few
   hundred held-out samples the arms' gains are often within a few samples of each other, and
   probes cut short of the horizon favour arms with quick early gains (freezing, small batches)
   that end lower (measured: tiny ViT frozen or at batch 8-16 ends 4-8 points below micro-batching
   after 15 s).

A bf16/fp16 model is profiled, measured and probed on float32 master weights, as ``train`` and
``adapt`` train it (:func:`~edgeadapt.memory.master.on_master_weights`); the plan's figures are for
that training. The model's weights, buffers and dtype are restored afterwards. Everything but
wall-clock time is seeded, and the probes' step counts come from the profile's predicted step
times: the same data, seed and profile give the same ranking.

Example::

    result = search(adapter, "512MiB", train_batches, eval_batches)
    print(format_result(result))
    result.chosen.plan  # a MemoryPlan; result.chosen.measured_bytes <= result.budget_bytes
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from edgeadapt.errors import ConfigError, InfeasibleError
from edgeadapt.memory.accounting import format_bytes, parse_bytes
from edgeadapt.memory.estimator import OptimizerName, Profile, measure, predict, profile
from edgeadapt.memory.knobs import BATCHNORMS, LossFn, batch_size_of, block_chain, split_batch
from edgeadapt.memory.master import on_master_weights
from edgeadapt.memory.plan import LossTraits, MemoryPlan, task_loss_traits
from edgeadapt.memory.probes import (
    MAX_PROBE_SECONDS,
    Probe,
    Prober,
    departure_of,
    race,
    successive_halving,
    update_class,
)
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.training.device import to_device

Batch = dict[str, torch.Tensor]

DEFAULT_HORIZON_STEPS = 30  # the online stage's retraining steps per domain (RetrainBudget.steps)

# race, successive_halving and update_class live in memory/probes.py and are re-exported here
__all__ = ["DEFAULT_HORIZON_STEPS", "Candidate", "SearchResult", "describe_plan", "enumerate_plans",
           "format_result", "pareto", "race", "search", "successive_halving", "update_class"]


@dataclass(frozen=True)
class Candidate:
    """One plan in the search and what is known of it.

    ``predicted_bytes`` / ``step_seconds``: the estimator's prediction (peak bytes of a steady-state
    step, seconds per optimizer step). ``measured_bytes`` / ``measured_step_seconds``: a real run
    (probed plans only, else ``None``). ``gain``: the metric's rise over the plan's probe
    (accuracy points as a fraction, or loss decrease), ``gain_per_second`` that per measured
    training second, ``loss_drop_per_second`` the tie-breaker, ``probe_steps`` the optimizer steps
    it was probed for. ``batch_size``: the effective batch (rows per optimizer step) when smaller
    than the data's (``search(..., batch_sizes=...)``; retrain on the data's batches split into
    parts of this size), ``None`` for the data's batch. ``status``: ``over budget`` (predicted),
    ``dominated``, ``not probed`` (Pareto but beyond ``max_probes``), ``measured over budget``,
    ``eliminated after N steps``, ``chosen``."""

    plan: MemoryPlan
    predicted_bytes: int
    step_seconds: float
    frozen_blocks: int
    status: str = ""
    measured_bytes: int | None = None
    measured_step_seconds: float | None = None
    gain: float | None = None
    gain_per_second: float | None = None
    loss_drop_per_second: float | None = None
    probe_steps: int = 0
    batch_size: int | None = None

    @property
    def describe(self) -> str:
        """The plan's short label, with its effective batch when that is not the data's."""
        return describe_plan(self.plan, self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the plan as its fields, the figures, the status."""
        return {"plan": self.plan.model_dump(), "describe": self.describe, "batch_size": self.batch_size,
                "predicted_bytes": self.predicted_bytes, "measured_bytes": self.measured_bytes,
                "step_seconds": self.step_seconds, "measured_step_seconds": self.measured_step_seconds,
                "gain": self.gain, "gain_per_second": self.gain_per_second,
                "loss_drop_per_second": self.loss_drop_per_second, "probe_steps": self.probe_steps,
                "frozen_blocks": self.frozen_blocks, "status": self.status}


@dataclass(frozen=True)
class SearchResult:
    """What :func:`search` chose and why. ``candidates`` holds every enumerated plan (in
    enumeration order) with its status; ``chosen`` is one of them. ``metric``: ``"accuracy"`` or
    ``"loss decrease"``. ``planning_seconds``: profile + predictions + measurements + probes."""

    budget_bytes: int
    batch_size: int
    chosen: Candidate
    candidates: list[Candidate]
    metric: str
    planning_seconds: float
    num_blocks: int
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The ``memory plan --json`` object: ``budget_bytes``, ``plans``, ``chosen`` and context."""
        return {"budget_bytes": self.budget_bytes, "batch_size": self.batch_size, "metric": self.metric,
                "num_blocks": self.num_blocks, "device": self.device,
                "planning_seconds": self.planning_seconds,
                "plans": [c.to_dict() for c in self.candidates], "chosen": self.chosen.to_dict(),
                "notes": list(self.notes)}


def describe_plan(plan: MemoryPlan, batch_size: int | None = None) -> str:
    """A short label: ``"mb 4, freeze 2, ckpt 1"``; ``"no knobs"`` for the default plan; with an
    effective ``batch_size`` smaller than the data's, ``"batch 8, mb 4"``."""
    parts = [] if batch_size is None else [f"batch {batch_size}"]
    if plan.micro_batch_size is not None:
        parts.append(f"mb {plan.micro_batch_size}")
    if plan.freeze_fraction is not None:
        parts.append(f"freeze {plan.freeze_fraction:g}")
    elif plan.freeze_blocks:
        parts.append(f"freeze {plan.freeze_blocks}")
    if plan.checkpoint_segments:
        parts.append(f"ckpt {plan.checkpoint_segments}")
    return ", ".join(parts) or "no knobs"


def enumerate_plans(num_blocks: int, batch_size: int, traits: LossTraits = LossTraits(), *,
                    freeze: Sequence[int] | None = None) -> list[MemoryPlan]:
    """Every plan of the configuration space, in a fixed order (whole batch first, no freezing
    first, fewer segments first).

    Micro-batch sizes: the divisors of ``batch_size`` of at least ``traits.min_samples`` (the whole
    batch is ``micro_batch_size=None``); a loss that is not per-sample gets only the whole batch.
    Frozen leading blocks: ``freeze`` (default every count ``0 … num_blocks`` for up to 12 blocks,
    else tenths of the blocks). Checkpoint segments: ``0 …`` the trainable blocks. Raises
    :class:`~edgeadapt.errors.ConfigError` for a batch smaller than the loss accepts."""
    if batch_size < max(1, traits.min_samples):
        raise ConfigError(f"batch size {batch_size}: {traits.name} needs at least "
                          f"{max(1, traits.min_samples)} samples per batch; raise --batch-size")
    sizes: list[int | None] = [None]
    if traits.per_sample:
        sizes += [d for d in range(batch_size - 1, 0, -1) if batch_size % d == 0 and d >= traits.min_samples]
    if freeze is None:
        freeze = range(num_blocks + 1) if num_blocks <= 12 else \
            sorted({int(f * num_blocks / 10) for f in range(11)})
    levels = sorted({m for m in freeze if 0 <= m <= num_blocks})
    return [MemoryPlan(micro_batch_size=mb, freeze_blocks=m, checkpoint_segments=s)
            for mb in sizes for m in levels for s in range(num_blocks - m + 1)]


def pareto(points: Sequence[tuple[float, float, int]]) -> list[bool]:
    """Which of ``points`` = (bytes, seconds, frozen blocks) are on the Pareto set: no other point
    has bytes and seconds no higher, freezes no more blocks, and is strictly better in one of
    bytes or seconds. Of identical points the first is kept."""
    keep = []
    for i, (b, s, f) in enumerate(points):
        dominated = False
        for j, (b2, s2, f2) in enumerate(points):
            if j == i or f2 > f or b2 > b or s2 > s:
                continue
            if b2 < b or s2 < s or j < i:  # strictly better, or an identical earlier one
                dominated = True
                break
        keep.append(not dominated)
    return keep


@on_master_weights
def search(adapter: ModelAdapter, budget: int | str, batches: Sequence[Batch],
           eval_batches: Sequence[Batch] | None = None, *, optimizer: OptimizerName = "adam",
           lr: float = 1e-3, seed: int = 0, probe_steps: int = 2, max_probes: int = 8,
           freeze: Sequence[int] | None = None, traits: LossTraits | None = None,
           loss_fn: LossFn | None = None,
           measure_probes: bool = True, prof: Profile | None = None,
           horizon_steps: int | None = None, horizon_seconds: float | None = None,
           max_probe_seconds: float = MAX_PROBE_SECONDS,
           batch_sizes: Sequence[int] | None = None) -> SearchResult:
    """Choose the plan to retrain ``adapter`` with under ``budget`` (bytes, or ``"512MiB"``).

    ``batches``: the current data, each one optimizer step's batch (the effective batch; the
    first is profiled and measured, all are cycled through by the probes). ``eval_batches``
    (default ``batches``): held-out batches the gain is measured on. ``horizon_steps`` /
    ``horizon_seconds``: the retraining the plan is for (optimizer steps at the data's batch, or
    training seconds; at most one; default :data:`DEFAULT_HORIZON_STEPS`, the online stage's
    steps per domain): arms are compared on the gain reached at equal steps (equal samples, for
    arms at a smaller batch), or at equal predicted training seconds, over up to that horizon
    (:func:`~edgeadapt.memory.probes.race`), within ``max_probe_seconds`` of predicted training in
    all. ``batch_sizes``: effective batch sizes to consider besides the data's (divisors of it;
    default none): a plan at batch ``b`` splits each data batch into ``B / b`` optimizer steps
    (:attr:`Candidate.batch_size`).
    ``probe_steps``: the fewest steps an arm has in the first round; ``max_probes``: classes of
    plans with the same updates probed at most (spread evenly over the freezing levels), each by
    its fastest predicted Pareto plan. ``measure_probes``: measure every probed plan (else only the
    chosen one). ``prof``: a profile to reuse. ``loss_fn(adapter, batch)`` (default the task loss)
    is what retraining minimises (e.g. an adaptation loss, with its ``traits``); without labels
    its decrease on ``eval_batches`` is the gain.

    Returns a :class:`SearchResult`. Raises :class:`~edgeadapt.errors.InfeasibleError` naming the
    smallest feasible budget and its plan when no plan is predicted (or measured) within the
    budget, :class:`~edgeadapt.errors.ConfigError` for a bad budget, no batches, bad counts or a
    batch size that does not divide the data's batch."""
    started = time.perf_counter()
    budget_bytes = parse_bytes(budget)
    if budget_bytes <= 0:
        raise ConfigError(f"--budget must be a positive size like '512MiB', got {budget!r}")
    if not batches:
        raise ConfigError("search needs at least one batch of the current data")
    if probe_steps < 1 or max_probes < 1:
        raise ConfigError(f"probe_steps and max_probes must be >= 1, got {probe_steps}, {max_probes}")
    if horizon_steps is not None and horizon_seconds is not None:
        raise ConfigError("give the retraining horizon as horizon_steps or horizon_seconds, not both")
    if (horizon_steps is not None and horizon_steps < 1) or max_probe_seconds <= 0 \
            or (horizon_seconds is not None and horizon_seconds <= 0):
        raise ConfigError(f"horizon_steps must be >= 1 and horizon_seconds, max_probe_seconds > 0, got "
                          f"{horizon_steps}, {horizon_seconds}, {max_probe_seconds}")
    if horizon_seconds is None and horizon_steps is None:
        horizon_steps = DEFAULT_HORIZON_STEPS
    traits = traits or (task_loss_traits(adapter.task.name) if loss_fn is None else LossTraits("the loss"))
    where = next(adapter.model.parameters()).device
    batches = [to_device(b, where) for b in batches]  # the probes train on the model's device
    eval_batches = [to_device(b, where) for b in (eval_batches or batches)]
    batch = batches[0]
    size = batch_size_of(batch)
    sizes = sorted({size, *(batch_sizes or ())}, reverse=True)
    if any(b < 1 or size % b for b in sizes):
        raise ConfigError(f"batch_sizes: each must divide the data's batch of {size}, got "
                          f"{list(batch_sizes or ())}")
    sizes = [b for b in sizes if b == size or b >= max(1, traits.min_samples)]
    chain = block_chain(adapter)
    n = len(chain.blocks)
    prof = prof or profile(adapter, batch, optimizer, loss_fn=loss_fn, traits=traits, chain=chain)
    cands = []
    for b in sizes:
        for plan in enumerate_plans(n, b, traits, freeze=freeze):
            est = predict(prof, plan, b)
            cands.append(Candidate(plan, est.predicted_bytes, est.step_seconds, plan.frozen_blocks(n),
                                   batch_size=None if b == size else b))

    def rows(c: Candidate) -> int:
        return c.batch_size or size

    fits = [i for i, c in enumerate(cands) if c.predicted_bytes <= budget_bytes]
    if not fits:
        _infeasible(budget_bytes, cands, "predicted")
    on_front = []
    for b in sizes:  # a smaller batch trains differently: plans compete within their batch size
        same = [i for i in fits if rows(cands[i]) == b]
        front = pareto([(cands[i].predicted_bytes, cands[i].step_seconds, cands[i].frozen_blocks)
                        for i in same])
        on_front += [i for i, keep in zip(same, front, strict=True) if keep]
    for i, c in enumerate(cands):
        status = "over budget" if i not in fits else "not probed" if i in on_front else "dominated"
        cands[i] = replace(c, status=status)
    # plans with the same updates (same batch, frozen blocks and normalisation) train identically
    # per step: probe one per class, the fastest predicted one that measures within the budget
    model = adapter.model
    has_bn = any(isinstance(m, BATCHNORMS) for m in model.modules())
    classes: dict[tuple[int, int, str, int], list[int]] = {}
    for i in on_front:
        b = rows(cands[i])
        frozen, norm, mb = update_class(cands[i].plan, b, n, has_bn)
        classes.setdefault((frozen, -b, norm, mb), []).append(i)
    keys = sorted(classes)
    if len(keys) > max_probes:
        picks = sorted({round(k * (len(keys) - 1) / (max_probes - 1)) for k in range(max_probes)}) \
            if max_probes > 1 else [0]
        keys = [keys[k] for k in picks]

    def first_rows(c: Candidate) -> Batch:
        return split_batch(batch, rows(c))[0]

    notes: list[str] = []
    probed: list[int] = []
    for key in keys:
        members = sorted(classes[key], key=lambda i: (cands[i].step_seconds, cands[i].predicted_bytes, i))
        rep = None
        for i in members:
            if rep is not None:
                cands[i] = replace(cands[i],
                                   status=f"same updates as {cands[rep].describe}, predicted slower")
                continue
            if measure_probes:
                real = measure(adapter, cands[i].plan, first_rows(cands[i]), optimizer, loss_fn=loss_fn,
                               traits=traits, chain=chain)
                cands[i] = replace(cands[i], measured_bytes=real.total_bytes)
                if real.total_bytes > budget_bytes:
                    cands[i] = replace(cands[i], status="measured over budget")
                    notes.append(f"{cands[i].describe}: predicted "
                                 f"{format_bytes(cands[i].predicted_bytes)} but measured "
                                 f"{format_bytes(real.total_bytes)}, over the budget; dropped")
                    continue
            rep = i
            probed.append(i)
    if not probed:
        _infeasible(budget_bytes, cands, "measured")

    def departure(i: int) -> float:
        return departure_of(cands[i].plan, rows(cands[i]), size, n, has_bn)

    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    split = {b: [part for whole in batches for part in split_batch(whole, b)] for b in sizes}
    probes = {i: Probe(cands[i].plan, split[rows(cands[i])], start) for i in probed}
    was_training = model.training
    devices = [prof.device] if prof.device.startswith("cuda") else []
    try:
        with torch.random.fork_rng(devices=devices):  # the seeds set here leave the caller's RNG alone
            prober = Prober(adapter, eval_batches, optimizer=optimizer, lr=lr, seed=seed, loss_fn=loss_fn,
                            traits=traits)
            k_best, _ = race([cands[i].step_seconds for i in probed],
                             [departure(i) for i in probed],
                             lambda k, steps: prober.pull(probes[probed[k]], steps),
                             horizon_steps=horizon_steps, horizon_seconds=horizon_seconds,
                             max_probe_seconds=max_probe_seconds,
                             min_steps=probe_steps, noise=prober.noise,
                             step_scale=[size / rows(cands[i]) for i in probed])
            best = probed[k_best]
    finally:
        model.load_state_dict(start)
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    for i in probed:
        p = probes[i]
        times = sorted(p.step_times)
        gain = p.metric[0] if prober.accuracy else p.metric[1]
        cands[i] = replace(cands[i], gain=gain, gain_per_second=gain / max(p.seconds, 1e-9),
                           loss_drop_per_second=p.metric[1] / max(p.seconds, 1e-9), probe_steps=p.steps,
                           measured_step_seconds=times[len(times) // 2] if times else None,
                           status="chosen" if i == best else f"eliminated after {p.steps} steps")
    if cands[best].measured_bytes is None:
        real = measure(adapter, cands[best].plan, first_rows(cands[best]), optimizer, loss_fn=loss_fn,
                       traits=traits, chain=chain)
        cands[best] = replace(cands[best], measured_bytes=real.total_bytes)
        if real.total_bytes > budget_bytes:
            notes.append(f"the chosen plan measured {format_bytes(real.total_bytes)}, over the budget "
                         f"(predicted {format_bytes(cands[best].predicted_bytes)})")
    return SearchResult(budget_bytes=budget_bytes, batch_size=size, chosen=cands[best], candidates=cands,
                        metric="accuracy" if prober.accuracy else "loss decrease",
                        planning_seconds=time.perf_counter() - started, num_blocks=n, device=prof.device,
                        notes=notes)


def _infeasible(budget: int, cands: list[Candidate], how: str) -> None:
    """Raise :class:`InfeasibleError` naming the smallest budget a plan reaches (measured where
    measured, else predicted) and that plan."""
    def need(c: Candidate) -> int:
        return max(c.predicted_bytes, c.measured_bytes or 0)
    smallest = min(cands, key=lambda c: (need(c), c.step_seconds))
    raise InfeasibleError(
        f"--budget {format_bytes(budget)} ({budget} bytes): no plan is {how} to fit among {len(cands)} "
        f"(micro-batching, freezing, checkpointing); the smallest feasible budget is "
        f"{format_bytes(need(smallest))} ({need(smallest)} bytes), reached by plan "
        f"{smallest.describe} ({smallest.plan.model_dump_json(exclude_defaults=True)}); raise the "
        f"budget to at least that, or use a smaller batch or model")


def format_result(result: SearchResult, all_plans: bool = False) -> str:
    """The plan table (Pareto plans within budget; every plan with ``all_plans``) and the choice.
    Columns: predicted and measured peak bytes, predicted step seconds, measured seconds per probe
    step, gain per second of the metric (and of the loss decrease, the tie-breaker, when the
    metric is accuracy), status."""
    accuracy = result.metric == "accuracy"  # then the loss decrease, the tie-breaker, is shown too
    rate = "acc gain/s" if accuracy else "loss drop/s"
    head = f"{'plan':<26} {'predicted':>10} {'measured':>10} {'step s':>8} {'probe s':>8} {rate:>11}" + \
        (f" {'loss drop/s':>11}" if accuracy else "") + "  status"
    rows = [head, "-" * len(head)]
    shown = [c for c in result.candidates
             if all_plans or c.status not in ("over budget", "dominated")]

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)
    for c in shown:
        mark = "*" if c is result.chosen else " "
        rows.append(f"{mark}{c.describe:<25} {format_bytes(c.predicted_bytes):>10} "
                    f"{format_bytes(c.measured_bytes) if c.measured_bytes is not None else '-':>10} "
                    f"{c.step_seconds:>8.4f} {num(c.measured_step_seconds, '>8.4f'):>8} "
                    f"{num(c.gain_per_second, '>11.4g'):>11}"
                    + (f" {num(c.loss_drop_per_second, '>11.4g'):>11}" if accuracy else "") + f"  {c.status}")
    over = sum(c.status == "over budget" for c in result.candidates)
    dominated = sum(c.status == "dominated" for c in result.candidates)
    ch = result.chosen
    rows += ["", f"{len(result.candidates)} plans: {over} predicted over the budget, {dominated} dominated "
             f"in (memory, time) at no more freezing; {len(shown)} shown"]
    rows += [f"note: {n}" for n in result.notes]
    rows.append(f"chosen: {ch.describe}: predicted {format_bytes(ch.predicted_bytes)}, measured "
                f"{format_bytes(ch.measured_bytes or 0)} of the {format_bytes(result.budget_bytes)} budget; "
                f"step {ch.measured_step_seconds or ch.step_seconds:.4f} s; {result.metric} gain/s "
                f"{ch.gain_per_second:.4g}; planning took {result.planning_seconds:.1f} s")
    # the effective batch belongs to the choice: a plan at a smaller batch trains differently
    batch = f"batch {result.batch_size}"
    if ch.batch_size:
        batch = f"batch {ch.batch_size} (each batch of {result.batch_size} split into " \
            f"{result.batch_size // ch.batch_size} optimizer steps)"
    rows.append(f"plan: {ch.plan.model_dump_json(exclude_defaults=True)}, {batch}")
    return "\n".join(rows)
