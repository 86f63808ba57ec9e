"""Probe memory plans by training them: successive halving over the retraining horizon.

The accuracy-gain half of :func:`~edgeadapt.memory.search.search` (MPOptimizer's algorithm, Zhang
et al., FGCS 2025). :class:`Prober` trains each probed plan from the same starting weights on the
current data, each with its own weights, buffers and optimizer (:class:`Probe`, swapped into the
shared model per pull), and scores the gain it has reached on held-out batches: the rise in
accuracy (labelled classification) or the fall of the loss (language models, label-free data),
with the loss decrease as the tie-breaker. :func:`race` runs successive halving over the arms on
equal budgets of the retraining horizon (steps, or predicted training seconds), within a bound on
the probes' total cost; :func:`successive_halving` is the textbook rule on equal steps.
:func:`update_class` says which plans make the same updates (so only one of them needs a probe).

Everything but wall-clock time is seeded, and the schedule comes from predicted step times: the
same data, seed and profile give the same ranking.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from edgeadapt.errors import ConfigError
from edgeadapt.memory.knobs import LossFn, apply_plan, batch_size_of, block_chain, train_step
from edgeadapt.memory.plan import LossTraits, MemoryPlan
from edgeadapt.memory.profile import OptimizerName, make_optimizer
from edgeadapt.models.adapter import ModelAdapter

Batch = dict[str, torch.Tensor]
Arm = TypeVar("Arm")

MAX_PROBE_SECONDS = 20.0  # predicted training seconds of all probes together (planning stays <= 60 s)

__all__ = ["MAX_PROBE_SECONDS", "Probe", "Prober", "departure_of", "race", "successive_halving",
           "update_class"]


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


def race(step_seconds: Sequence[float], departures: Sequence[float],
         pull: Callable[[int, int], tuple[float, ...]], *, horizon_steps: int | None = None,
         horizon_seconds: float | None = None, max_probe_seconds: float = MAX_PROBE_SECONDS,
         min_steps: int = 1, noise: float | Callable[[tuple[float, ...]], float] = 0.0, eta: int = 2,
         step_scale: Sequence[float] | None = None) -> tuple[int, dict[int, int]]:
    """Which arm buys the most in the retraining horizon: successive halving on equal budgets.

    Arm ``k`` costs ``step_seconds[k]`` per optimizer step (predicted, so the schedule is
    deterministic) and departs ``departures[k]`` from the unconstrained training (its frozen
    blocks; :func:`~edgeadapt.memory.search.search` adds one per halving of the batch and one
    when BatchNorm no longer normalises over the whole batch). ``pull(k, steps)`` trains it on to ``steps``
    steps in all and returns its gain reached (a tuple, higher is better: the metric, then
    tie-breakers). The horizon is ``horizon_steps`` (a step-budgeted retraining: arms are compared
    at equal steps) or ``horizon_seconds`` (a time-budgeted one: at equal training seconds, so a
    cheap frozen arm gets more steps). Each arm's final probe is the whole horizon, or less so that
    all probes together cost at most ``max_probe_seconds`` when the slowest arms survive; earlier
    rounds get ``1/eta`` of the next one's budget (at least ``min_steps`` steps), and the best
    ``ceil(n / eta)`` survive each round. Ranking is by the gain *reached*, not per second: a
    frozen arm that rises fast in a few steps but plateaus lower loses over a long horizon. A
    more-departed arm (e.g. more frozen) must also beat a less-departed one by more than ``noise``
    (the probe's resolution; or ``noise(score)``, the resolution at the score an arm reached) per
    unit of departure: the first score is lowered by ``noise * departures[k]``.

    ``step_scale[k]`` (default 1): arm ``k``'s optimizer steps per step of the horizon, for arms
    at a smaller effective batch than the data's (``B / b``: a step-budgeted horizon then gives
    every arm the same samples); a time horizon needs none.

    Returns the chosen arm's index and the steps each arm reached. Raises
    :class:`~edgeadapt.errors.ConfigError` without arms or with an unusable horizon."""
    n = len(step_seconds)
    if n == 0 or len(departures) != n:
        raise ConfigError("race needs at least one arm, with a step time and a departure each")
    if (horizon_steps is None) == (horizon_seconds is None):
        raise ConfigError("race needs exactly one of horizon_steps and horizon_seconds")
    scale = [1.0] * n if step_scale is None else [float(v) for v in step_scale]
    if len(scale) != n or min(scale) <= 0:
        raise ConfigError(f"race needs a positive step_scale per arm, got {step_scale}")
    by_time = horizon_seconds is not None
    # seconds per clock unit
    unit = [max(s * c, 1e-9) if not by_time else 1.0 for s, c in zip(step_seconds, scale, strict=True)]
    horizon = float(horizon_seconds if by_time else horizon_steps)
    sizes = [n]
    while sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / eta))
    rounds = len(sizes) - 1  # the last survivor is not pulled again
    if n == 1:  # nothing to choose: one short probe reports its gain
        pull(0, min_steps)
        return 0, {0: min_steps}

    def steps_at(k: int, clock: float) -> int:
        return max(min_steps, round(clock / step_seconds[k] if by_time else clock * scale[k]))

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
            resolution = noise(score) if callable(noise) else noise
            scores[k] = (score[0] - resolution * departures[k],) + score[1:]
        ranked = sorted(alive, key=lambda k: (tuple(-v for v in scores[k]), departures[k], k))
        alive = sorted(ranked[:sizes[r + 1]])
    return alive[0], reached


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



def departure_of(plan: MemoryPlan, batch_size: int, data_batch: int, num_blocks: int, has_bn: bool) -> float:
    """How far ``plan`` at effective ``batch_size`` departs from the unconstrained training on the
    data's batch of ``data_batch``, in units of the probe noise (:func:`race`'s ``departures``):
    its frozen blocks, one per halving of the batch, one when BatchNorm stops normalising over the
    whole batch. Micro-batching (of a per-sample loss, no BatchNorm) and checkpointing alone depart
    not at all: they make the unconstrained run's updates."""
    frozen, norm, _ = update_class(plan, batch_size, num_blocks, has_bn)
    return frozen + math.log2(data_batch / batch_size) + (norm != "batch")


class Probe:
    """The persistent state of probing one plan at one effective batch size: its batches, its own
    weights, buffers and optimizer (swapped into the shared model for each pull), the steps it
    has had and their wall-clock seconds, and its last score."""

    def __init__(self, plan: MemoryPlan, batches: Sequence[Batch], start: dict[str, torch.Tensor]) -> None:
        self.plan = plan
        self.batches = list(batches)
        self.state = {k: v.clone() for k, v in start.items()}
        self.optimizer: torch.optim.Optimizer | None = None
        self.steps = 0
        self.seconds = 0.0
        self.step_times: list[float] = []
        self.metric: tuple[float, float] = (0.0, 0.0)


class Prober:
    """Trains :class:`Probe` s on one model and scores them on ``eval_batches``.

    ``accuracy``: the gain is the accuracy's rise (labelled classification), else the loss's fall.
    :attr:`base` is the starting (accuracy, loss); :meth:`noise` the probe's resolution at a score:
    the standard error of an accuracy on the held-out samples (binomial, at the accuracy reached;
    at least one sample's worth), or 1% of the starting loss. Call inside
    ``torch.random.fork_rng`` to leave the caller's RNG alone; :meth:`pull` leaves the model
    holding the probe's weights (the caller restores its own)."""

    def __init__(self, adapter: ModelAdapter, eval_batches: Sequence[Batch], *, optimizer: OptimizerName,
                 lr: float, seed: int, loss_fn: LossFn | None, traits: LossTraits) -> None:
        self.adapter, self.eval_batches = adapter, list(eval_batches)
        self.optimizer, self.lr, self.seed, self.loss_fn, self.traits = optimizer, lr, seed, loss_fn, traits
        self.chain = block_chain(adapter)
        self.device = next(adapter.model.parameters()).device
        self.accuracy = adapter.task.name == "classification" and all("labels" in b for b in eval_batches)
        self.base = self.evaluate()
        self.held = max(1, sum(batch_size_of(b) for b in self.eval_batches))

    def noise(self, score: tuple[float, ...] = (0.0,)) -> float:
        """The resolution of a probe's ``score`` (as :meth:`pull` returns it): the binomial standard
        error of the accuracy it reached on the held-out samples (at least one sample's worth), or
        1% of the starting loss."""
        if not self.accuracy:
            return 0.01 * abs(self.base[1])
        acc = min(1.0, max(0.0, self.base[0] + score[0]))
        return max(1.0 / self.held, math.sqrt(acc * (1 - acc) / self.held))

    def evaluate(self) -> tuple[float, float]:
        """(accuracy or 0, mean loss: ``loss_fn``'s, else the task's) of the model on the held-out
        batches in eval mode, seeded."""
        adapter, model = self.adapter, self.adapter.model
        torch.manual_seed(self.seed)
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                if self.accuracy:
                    scores = adapter.task.evaluate(model, self.eval_batches)
                    return float(scores["accuracy"]), float(scores["loss"])
                losses = [float(self.loss_fn(adapter, b) if self.loss_fn else adapter.task.loss(model, b))
                          for b in self.eval_batches]
                return 0.0, sum(losses) / len(losses)
        finally:
            model.train(was)

    def _sync(self) -> None:
        if self.device.type == "cuda":  # CUDA runs asynchronously: time the step, not its launch
            torch.cuda.synchronize(self.device)

    def pull(self, p: Probe, steps: int) -> tuple[float, ...]:
        """Train ``p`` on to ``steps`` optimizer steps in all (cycling through its batches, one
        seed per step) and return its score: (accuracy gain, loss decrease), or (loss decrease,)."""
        model = self.adapter.model
        model.load_state_dict(p.state)
        model.train()
        with apply_plan(model, p.plan, self.chain) as knobs:
            if p.optimizer is None:
                torch.manual_seed(self.seed)
                p.optimizer = make_optimizer(knobs.trainable_parameters(), self.optimizer, lr=self.lr)
            while p.steps < steps:
                b = p.batches[p.steps % len(p.batches)]
                torch.manual_seed(self.seed + p.steps)
                self._sync()
                t = time.perf_counter()
                train_step(self.adapter, b, p.plan, p.optimizer, loss_fn=self.loss_fn, traits=self.traits)
                self._sync()
                p.step_times.append(time.perf_counter() - t)
                p.steps += 1
        p.seconds = sum(p.step_times)
        acc, loss = self.evaluate()
        p.metric = (acc - self.base[0], self.base[1] - loss)
        p.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return p.metric if self.accuracy else (p.metric[1],)
