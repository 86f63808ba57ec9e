"""Choose a memory plan under a budget: predict every plan, keep the Pareto set, probe the survivors.

MPOptimizer (Zhang et al., FGCS 2025) intends a rule engine that strikes out configurations over
the memory budget or dominated in (memory, time), then an accuracy-gain search that trains each
survivor briefly and keeps the one whose accuracy rises fastest per second. Its repository's
search cannot run (it probes only configuration 0 and discards its own ranking); this is that
algorithm done right:

1. **Enumerate** plans (:func:`enumerate_plans`): micro-batch sizes that divide the batch (only
   the whole batch for a loss that is not per-sample), leading frozen blocks, and checkpoint
   segments ``0 … trainable blocks``.
2. **Predict** each with one profile (:func:`~edgeadapt.memory.estimator.profile` once, then
   :func:`~edgeadapt.memory.estimator.predict` per plan: microseconds each). Plans predicted over
   the budget are dropped; when none is left, :class:`~edgeadapt.errors.InfeasibleError` names
   the smallest budget some plan fits and that plan.
3. **Pareto filter** (:func:`pareto`) on (predicted bytes, predicted step seconds). Freezing
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
   next fastest of its class taken), then
   trained from the same starting weights on the current data by successive halving
   (:func:`race`) over the *retraining horizon* the caller names (``horizon_steps``, default the
   online stage's 30 steps per domain, or ``horizon_seconds``): arms are compared on the gain
   they have *reached* at equal steps (equal predicted training seconds for a time horizon), the
   final round at the whole horizon or at the share of it that ``max_probe_seconds`` affords.
   MPOptimizer ranks by gain per second over probes of a few steps instead; measured over 10 s of
   real retraining that favours freezing (cheap steps, quick early gains that plateau lower)
   where keeping every block trainable ends higher. The gain is the rise in accuracy on held-out
   batches (labelled classification) or the fall of the task loss (language models, label-free
   data) since the start; accuracy ties are broken by the loss decrease. A more-frozen arm must
   beat a less-frozen one by more than the probe noise (the standard error of the held-out
   accuracy, or 1% of the loss) per extra frozen block: on a few hundred held-out samples the
   arms' gains are often within a few samples of each other, and over a long retraining keeping
   every block trainable ends higher almost always.

The model's weights and buffers are restored afterwards. Everything but wall-clock time is
seeded, and the probes' step counts come from the profile's predicted step times: the same
data, seed and profile give the same ranking.

Example::

    result = search(adapter, "512MiB", train_batches, eval_batches)
    print(format_result(result))
    result.chosen.plan  # a MemoryPlan; result.chosen.measured_bytes <= result.budget_bytes
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch

from edgeadapt.errors import ConfigError, InfeasibleError
from edgeadapt.memory.accounting import format_bytes, parse_bytes
from edgeadapt.memory.estimator import OptimizerName, Profile, make_optimizer, measure, predict, profile
from edgeadapt.memory.knobs import BATCHNORMS, LossFn, apply_plan, batch_size_of, block_chain, train_step
from edgeadapt.memory.plan import LossTraits, MemoryPlan, task_loss_traits
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.training.device import to_device

Batch = dict[str, torch.Tensor]
Arm = TypeVar("Arm")

DEFAULT_HORIZON_STEPS = 30  # the online stage's retraining steps per domain (RetrainBudget.steps)
MAX_PROBE_SECONDS = 20.0  # predicted training seconds of all probes together (planning stays <= 60 s)

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
    it was probed for. ``status``: ``over budget`` (predicted), ``dominated``, ``not probed``
    (Pareto but beyond ``max_probes``), ``measured over budget``, ``eliminated after N steps``,
    ``chosen``."""

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the plan as its fields, the figures, the status."""
        return {"plan": self.plan.model_dump(), "describe": describe_plan(self.plan),
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


def describe_plan(plan: MemoryPlan) -> str:
    """A short label: ``"mb 4, freeze 2, ckpt 1"``; ``"no knobs"`` for the default plan."""
    parts = []
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


def successive_halving(arms: Sequence[Arm], pull: Callable[[Arm, int], tuple[float, ...]],
                       first_steps: int = 2,
                       eta: int = 2) -> tuple[Arm, dict[int, tuple[int, tuple[float, ...]]]]:
    """Successive halving (Jamieson & Talwalkar 2016) over ``arms``.

    ``pull(arm, steps)`` trains ``arm`` until it has had ``steps`` optimizer steps in all (it
    continues from where its last pull stopped) and returns its score (a tuple, higher is
    better). Round ``r`` brings every surviving arm to ``first_steps * eta**r`` steps; the best
    ``ceil(n / eta)`` by score survive (ties: the earlier arm), until one is left (it is not
    pulled again). A single arm is pulled once. Returns the last arm left and, per arm index, the
    steps it reached and its last score."""
    if not arms:
        raise ConfigError("successive halving needs at least one arm")
    if first_steps < 1 or eta < 2:
        raise ConfigError(f"successive halving needs first_steps >= 1 and eta >= 2, got {first_steps}, {eta}")
    alive = list(range(len(arms)))
    seen: dict[int, tuple[int, tuple[float, ...]]] = {}
    steps = first_steps
    while True:
        for i in alive:
            seen[i] = (steps, tuple(pull(arms[i], steps)))
        ranked = sorted(alive, key=lambda i: (tuple(-v for v in seen[i][1]), i))
        alive = sorted(ranked[:math.ceil(len(alive) / eta)])
        if len(alive) == 1:
            return arms[alive[0]], seen
        steps *= eta


def race(step_seconds: Sequence[float], frozen: Sequence[int],
         pull: Callable[[int, int], tuple[float, ...]], *, horizon_steps: int | None = None,
         horizon_seconds: float | None = None, max_probe_seconds: float = MAX_PROBE_SECONDS,
         min_steps: int = 1, noise: float = 0.0, eta: int = 2) -> tuple[int, dict[int, int]]:
    """Which arm buys the most in the retraining horizon: successive halving on equal budgets.

    Arm ``k`` costs ``step_seconds[k]`` per optimizer step (predicted, so the schedule is
    deterministic) and freezes ``frozen[k]`` blocks. ``pull(k, steps)`` trains it on to ``steps``
    steps in all and returns its gain reached (a tuple, higher is better: the metric, then
    tie-breakers). The horizon is ``horizon_steps`` (a step-budgeted retraining: arms are compared
    at equal steps) or ``horizon_seconds`` (a time-budgeted one: at equal training seconds, so a
    cheap frozen arm gets more steps). Each arm's final probe is the whole horizon, or less so that
    all probes together cost at most ``max_probe_seconds`` when the slowest arms survive; earlier
    rounds get ``1/eta`` of the next one's budget (at least ``min_steps`` steps), and the best
    ``ceil(n / eta)`` survive each round. Ranking is by the gain *reached*, not per second: a
    frozen arm that rises fast in a few steps but plateaus lower loses over a long horizon. A
    more-frozen arm must also beat a less-frozen one by more than ``noise`` (the probe's
    resolution) per extra frozen block: the first score is lowered by ``noise * frozen[k]``.

    Returns the chosen arm's index and the steps each arm reached. Raises
    :class:`~edgeadapt.errors.ConfigError` without arms or with an unusable horizon."""
    n = len(step_seconds)
    if n == 0 or len(frozen) != n:
        raise ConfigError("race needs at least one arm, with a step time and a frozen count each")
    if (horizon_steps is None) == (horizon_seconds is None):
        raise ConfigError("race needs exactly one of horizon_steps and horizon_seconds")
    by_time = horizon_seconds is not None
    unit = [max(s, 1e-9) if not by_time else 1.0 for s in step_seconds]  # seconds per clock unit
    horizon = float(horizon_seconds if by_time else horizon_steps)
    sizes = [n]
    while sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / eta))
    rounds = len(sizes) - 1  # the last survivor is not pulled again
    if n == 1:  # nothing to choose: one short probe reports its gain
        pull(0, min_steps)
        return 0, {0: min_steps}

    def steps_at(k: int, clock: float) -> int:
        return max(min_steps, round(clock / step_seconds[k])) if by_time else max(min_steps, round(clock))

    # worst-case cost of all rounds per clock unit of the final probe: the slowest arms survive
    slowest = sorted(unit, reverse=True)
    per_unit = sum(sum(slowest[:sizes[r]]) / eta ** (rounds - 1 - r) for r in range(rounds))
    final = min(horizon, max_probe_seconds / per_unit)
    alive = list(range(n))
    reached: dict[int, int] = {}
    for r in range(rounds):
        clock = final / eta ** (rounds - 1 - r)
        scores = {}
        for k in alive:
            reached[k] = max(reached.get(k, 0), steps_at(k, clock))
            score = tuple(pull(k, reached[k]))
            scores[k] = (score[0] - noise * frozen[k],) + score[1:]
        ranked = sorted(alive, key=lambda k: (tuple(-v for v in scores[k]), frozen[k], k))
        alive = sorted(ranked[:sizes[r + 1]])
    return alive[0], reached


class _Probe:
    """The persistent state of probing one plan: its own weights, buffers and optimizer, swapped
    into the shared model for each pull."""

    def __init__(self, plan: MemoryPlan, start: dict[str, torch.Tensor]) -> None:
        self.plan = plan
        self.state = {k: v.clone() for k, v in start.items()}
        self.optimizer: torch.optim.Optimizer | None = None
        self.steps = 0
        self.seconds = 0.0
        self.step_times: list[float] = []
        self.metric: tuple[float, float] | None = None


def _evaluate(adapter: ModelAdapter, batches: Sequence[Batch], accuracy: bool,
              loss_fn: LossFn | None = None) -> tuple[float, float]:
    """(accuracy or 0, mean loss: ``loss_fn``'s, else the task's) of the model on ``batches`` in
    eval mode."""
    model = adapter.model
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            if accuracy:
                scores = adapter.task.evaluate(model, batches)
                return float(scores["accuracy"]), float(scores["loss"])
            losses = [float(loss_fn(adapter, b) if loss_fn else adapter.task.loss(model, b)) for b in batches]
            return 0.0, sum(losses) / len(losses)
    finally:
        model.train(was)


def _labelled(adapter: ModelAdapter, batches: Sequence[Batch]) -> bool:
    return adapter.task.name == "classification" and all("labels" in b for b in batches)


def search(adapter: ModelAdapter, budget: int | str, batches: Sequence[Batch],
           eval_batches: Sequence[Batch] | None = None, *, optimizer: OptimizerName = "adam",
           lr: float = 1e-3, seed: int = 0, probe_steps: int = 2, max_probes: int = 8,
           freeze: Sequence[int] | None = None, traits: LossTraits | None = None,
           loss_fn: LossFn | None = None,
           measure_probes: bool = True, prof: Profile | None = None,
           horizon_steps: int | None = None, horizon_seconds: float | None = None,
           max_probe_seconds: float = MAX_PROBE_SECONDS) -> SearchResult:
    """Choose the plan to retrain ``adapter`` with under ``budget`` (bytes, or ``"512MiB"``).

    ``batches``: the current data, each one optimizer step's batch (the effective batch; the
    first is profiled and measured, all are cycled through by the probes). ``eval_batches``
    (default ``batches``): held-out batches the gain is measured on. ``horizon_steps`` /
    ``horizon_seconds``: the retraining the plan is for (optimizer steps, or training seconds; at
    most one; default :data:`DEFAULT_HORIZON_STEPS`, the online stage's steps per domain): arms
    are compared on the gain reached at equal steps, or at equal predicted training seconds, over
    up to that horizon (:func:`race`), within ``max_probe_seconds`` of predicted training in all.
    ``probe_steps``: the fewest steps an arm has in the first round; ``max_probes``: classes of
    plans with the same updates probed at most (spread evenly over the freezing levels), each by its fastest
    predicted Pareto plan. ``measure_probes``: measure every probed plan (else only the chosen
    one). ``prof``: a profile to reuse. ``loss_fn(adapter, batch)`` (default the task loss) is
    what retraining minimises (e.g. an adaptation loss, with its ``traits``); without labels its
    decrease on ``eval_batches`` is the gain.

    Returns a :class:`SearchResult`. Raises :class:`~edgeadapt.errors.InfeasibleError` naming the
    smallest feasible budget and its plan when no plan is predicted (or measured) within the
    budget, :class:`~edgeadapt.errors.ConfigError` for a bad budget, no batches or bad counts."""
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
    chain = block_chain(adapter)
    n = len(chain.blocks)
    prof = prof or profile(adapter, batch, optimizer, loss_fn=loss_fn, traits=traits, chain=chain)
    plans = enumerate_plans(n, size, traits, freeze=freeze)
    cands = []
    for plan in plans:
        est = predict(prof, plan, size)
        cands.append(Candidate(plan, est.predicted_bytes, est.step_seconds, plan.frozen_blocks(n)))
    fits = [i for i, c in enumerate(cands) if c.predicted_bytes <= budget_bytes]
    if not fits:
        _infeasible(budget_bytes, cands, "predicted")
    front = pareto([(cands[i].predicted_bytes, cands[i].step_seconds, cands[i].frozen_blocks) for i in fits])
    on_front = [i for i, keep in zip(fits, front, strict=True) if keep]
    for i, c in enumerate(cands):
        status = "over budget" if i not in fits else "not probed" if i in on_front else "dominated"
        cands[i] = replace(c, status=status)
    # plans with the same updates (same frozen blocks, same normalisation) train identically per
    # step: probe one per class, the fastest predicted one that measures within the budget
    model = adapter.model
    has_bn = any(isinstance(m, BATCHNORMS) for m in model.modules())
    classes: dict[tuple[int, str, int], list[int]] = {}
    for i in on_front:
        classes.setdefault(update_class(cands[i].plan, size, n, has_bn), []).append(i)
    keys = sorted(classes)
    if len(keys) > max_probes:
        picks = sorted({round(k * (len(keys) - 1) / (max_probes - 1)) for k in range(max_probes)}) \
            if max_probes > 1 else [0]
        keys = [keys[k] for k in picks]

    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    notes: list[str] = []
    probed: list[int] = []
    for key in keys:
        members = sorted(classes[key], key=lambda i: (cands[i].step_seconds, cands[i].predicted_bytes, i))
        rep = None
        for i in members:
            if rep is not None:
                cands[i] = replace(cands[i], status=f"same updates as {describe_plan(cands[rep].plan)}, "
                                   "predicted slower")
                continue
            if measure_probes:
                real = measure(adapter, cands[i].plan, batch, optimizer, loss_fn=loss_fn, traits=traits,
                               chain=chain)
                cands[i] = replace(cands[i], measured_bytes=real.total_bytes)
                if real.total_bytes > budget_bytes:
                    cands[i] = replace(cands[i], status="measured over budget")
                    notes.append(f"{describe_plan(cands[i].plan)}: predicted "
                                 f"{format_bytes(cands[i].predicted_bytes)} but measured "
                                 f"{format_bytes(real.total_bytes)}, over the budget; dropped")
                    continue
            rep = i
            probed.append(i)
    if not probed:
        _infeasible(budget_bytes, cands, "measured")

    accuracy = _labelled(adapter, eval_batches)
    with torch.random.fork_rng(devices=[prof.device] if prof.device.startswith("cuda") else []):
        base = _eval_seeded(adapter, eval_batches, accuracy, seed, loss_fn)
    probes = {i: _Probe(cands[i].plan, start) for i in probed}
    was_training = model.training

    def sync() -> None:
        if where.type == "cuda":
            torch.cuda.synchronize(where)

    def pull(i: int, steps: int) -> tuple[float, float]:
        p = probes[i]
        model.load_state_dict(p.state)
        model.train()
        with apply_plan(model, p.plan, chain) as knobs:
            if p.optimizer is None:
                torch.manual_seed(seed)
                p.optimizer = make_optimizer(knobs.trainable_parameters(), optimizer, lr=lr)
            while p.steps < steps:
                b = batches[p.steps % len(batches)]
                torch.manual_seed(seed + p.steps)
                sync()
                t = time.perf_counter()
                train_step(adapter, b, p.plan, p.optimizer, loss_fn=loss_fn, traits=traits)
                sync()  # CUDA runs asynchronously: time the step, not its launch
                p.step_times.append(time.perf_counter() - t)
                p.steps += 1
        p.seconds = sum(p.step_times)
        acc, loss = _eval_seeded(adapter, eval_batches, accuracy, seed, loss_fn)
        p.metric = (acc - base[0], base[1] - loss)
        p.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return p.metric if accuracy else (p.metric[1],)

    # probe noise: the standard error of an accuracy on the held-out samples (binomial, at the
    # starting accuracy; at least one sample's worth), or 1% of the starting loss
    held = max(1, sum(batch_size_of(b) for b in eval_batches))
    noise = max(1.0 / held, math.sqrt(base[0] * (1 - base[0]) / held)) if accuracy else 0.01 * abs(base[1])
    devices = [prof.device] if prof.device.startswith("cuda") else []
    try:
        with torch.random.fork_rng(devices=devices):  # the seeds set here leave the caller's RNG alone
            k_best, _ = race([cands[i].step_seconds for i in probed],
                             [cands[i].frozen_blocks for i in probed],
                             lambda k, steps: pull(probed[k], steps), horizon_steps=horizon_steps,
                             horizon_seconds=horizon_seconds, max_probe_seconds=max_probe_seconds,
                             min_steps=probe_steps, noise=noise)
            best = probed[k_best]
    finally:
        model.load_state_dict(start)
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    for i in probed:
        p = probes[i]
        steps = p.steps
        times = sorted(p.step_times)
        gain = p.metric[0] if accuracy else p.metric[1]
        cands[i] = replace(cands[i], gain=gain, gain_per_second=gain / max(p.seconds, 1e-9),
                           loss_drop_per_second=p.metric[1] / max(p.seconds, 1e-9), probe_steps=steps,
                           measured_step_seconds=times[len(times) // 2],
                           status="chosen" if i == best else f"eliminated after {steps} steps")
    if cands[best].measured_bytes is None:
        real = measure(adapter, cands[best].plan, batch, optimizer, loss_fn=loss_fn, traits=traits,
                       chain=chain)
        cands[best] = replace(cands[best], measured_bytes=real.total_bytes)
        if real.total_bytes > budget_bytes:
            notes.append(f"the chosen plan measured {format_bytes(real.total_bytes)}, over the budget "
                         f"(predicted {format_bytes(cands[best].predicted_bytes)})")
    return SearchResult(budget_bytes=budget_bytes, batch_size=size, chosen=cands[best], candidates=cands,
                        metric="accuracy" if accuracy else "loss decrease",
                        planning_seconds=time.perf_counter() - started, num_blocks=n, device=prof.device,
                        notes=notes)


def update_class(plan: MemoryPlan, batch_size: int, num_blocks: int, has_bn: bool) -> tuple[int, str, int]:
    """What decides a plan's parameter updates: its frozen blocks and how BatchNorm normalises
    (``"batch"``: over the whole batch, ``"frozen"``: running statistics, ``"micro"``: over
    micro-batches of the given size). Checkpointing and accumulation of a per-sample loss leave
    the updates unchanged, so plans with equal keys differ only in memory and time."""
    frozen = plan.frozen_blocks(num_blocks)
    mb = min(plan.micro_batch_size or batch_size, batch_size)
    if not has_bn or mb == batch_size:
        return frozen, "batch", 0
    if plan.micro_batch_size is not None and plan.micro_batch_size < plan.batchnorm_min_micro_batch \
            and plan.batchnorm == "freeze":
        return frozen, "frozen", 0
    return frozen, "micro", mb


def _eval_seeded(adapter: ModelAdapter, batches: Sequence[Batch], accuracy: bool, seed: int,
                 loss_fn: LossFn | None = None) -> tuple[float, float]:
    torch.manual_seed(seed)
    return _evaluate(adapter, batches, accuracy, loss_fn)


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
        f"{describe_plan(smallest.plan)} ({smallest.plan.model_dump_json(exclude_defaults=True)}); raise the "
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
        rows.append(f"{mark}{describe_plan(c.plan):<25} {format_bytes(c.predicted_bytes):>10} "
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
    rows.append(f"chosen: {describe_plan(ch.plan)}: predicted {format_bytes(ch.predicted_bytes)}, measured "
                f"{format_bytes(ch.measured_bytes or 0)} of the {format_bytes(result.budget_bytes)} budget; "
                f"step {ch.measured_step_seconds or ch.step_seconds:.4f} s; {result.metric} gain/s "
                f"{ch.gain_per_second:.4g}; planning took {result.planning_seconds:.1f} s")
    rows.append(f"plan: {ch.plan.model_dump_json(exclude_defaults=True)}")
    return "\n".join(rows)
