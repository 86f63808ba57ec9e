"""When a placement-driven edge (``offload run --floor``) changes its placement: re-plan on a moved
link, with hysteresis.

The link figures (:class:`~edgeadapt.offload.client.LinkEstimate`) are noisy — on loopback one
call's bandwidth can read 230 or 7000 Mbit/s — so a plan is not replaced on every wobble:

1. :func:`replan_reason`: the integer program is re-solved only when the bandwidth or RTT has
   moved by more than a factor (default 1.5) from the figures the plan in force was checked at;
2. :meth:`Replanner.check`: the new solution replaces the plan only when it differs *and* its
   predicted latency on the new link beats the current placement's (re-costed on the same link)
   by :data:`REPLAN_MARGIN`; otherwise the placement stays and only the reference figures move;
3. two placement changes are at least ``min_interval_s`` apart (the first is never held back), and
   a change back to the placement just left (A → B → A: a link hovering at a break-even point — on
   a tbf-shaped link small frames ride the burst and large ones do not) waits an interval doubled
   on each such flap (up to :data:`MAX_INTERVAL_S`); a change to a third placement resets it, so a
   real change of link after a flapping spell is not held back.

A real change (a drop from loopback to 10 Mbit/s) passes all three on the first sample that shows
it; see ``benchmarks/offload_runtime.py`` for the measured time from the change to the new plan.

With exit profiles (:class:`~edgeadapt.offload.exits.ExitProfile`) the plan may end the chain at an
early exit: every solve is :func:`~edgeadapt.offload.exits.solve_with_exits` (the fastest end of
the chain meeting the floor), and a placement is its widths, devices *and* exit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edgeadapt.offload.exits import ExitPlacement, ExitProfile, exit_problem, solve_with_exits
from edgeadapt.offload.placement import Placement, PlacementProblem, evaluate, solve
from edgeadapt.offload.profile import ChainProfile

REPLAN_FACTOR = 1.5
"""A placement is re-solved when the bandwidth or RTT moves by more than this factor from its figures."""

MIN_RTT_CHANGE_S = 1e-3
"""An RTT change smaller than this (seconds) never triggers a re-plan, whatever its factor."""

REPLAN_MARGIN = 0.1
"""A new placement replaces the current one only when predicted at least this share faster on the
new link (0.1: 10%): a tie, or a gain inside the profile's timing noise, keeps the placement."""

REPLAN_INTERVAL_S = 0.5
"""Least time (seconds) between two placement changes."""

MAX_INTERVAL_S = 8.0
"""The longest the interval grows to while the placement flaps between two placements."""


def replan_reason(planned_bandwidth: float, planned_rtt_s: float, bandwidth: float | None,
                  rtt_s: float | None, factor: float = REPLAN_FACTOR,
                  min_rtt_change_s: float = MIN_RTT_CHANGE_S) -> str | None:
    """Why the link has moved far enough from what a plan used (bandwidth in bytes/s, RTT in
    seconds) to re-solve it, or ``None``: the bandwidth changed by more than ``factor`` either way,
    or the RTT did and by more than ``min_rtt_change_s`` (a loopback RTT of 0.2 vs 0.4 ms is noise,
    not a new link). Unmeasured figures (``None``) never trigger."""
    if bandwidth is not None and planned_bandwidth > 0 and bandwidth > 0:
        ratio = max(bandwidth / planned_bandwidth, planned_bandwidth / bandwidth)
        if ratio > factor:
            return (f"bandwidth {planned_bandwidth * 8 / 1e6:.2f} -> {bandwidth * 8 / 1e6:.2f} Mbit/s "
                    f"(x{ratio:.2f} > {factor})")
    moved = rtt_s is not None and abs(rtt_s - planned_rtt_s) > min_rtt_change_s
    if moved and planned_rtt_s > 0 and rtt_s > 0:
        ratio = max(rtt_s / planned_rtt_s, planned_rtt_s / rtt_s)
        if ratio > factor:
            return f"rtt {planned_rtt_s * 1e3:.2f} -> {rtt_s * 1e3:.2f} ms (x{ratio:.2f} > {factor})"
    return None


def plan(profile: ChainProfile, floor: float, bandwidth: float, rtt_s: float) -> Placement:
    """The placement of least predicted latency meeting ``floor`` over the profile's devices (device 0,
    the edge, is the source) with a link of ``bandwidth`` bytes/s and ``rtt_s`` seconds. Raises
    :class:`~edgeadapt.errors.InfeasibleError` naming the best reachable accuracy."""
    return solve(profile.problem(bandwidth, rtt_s, source=0), floor)


def plan_with_exits(profile: ChainProfile, exits: Sequence[ExitProfile], floor: float, bandwidth: float,
                    rtt_s: float) -> ExitPlacement:
    """As :func:`plan`, over every end of the chain: the whole chain and each exit of ``exits``
    (:func:`~edgeadapt.offload.exits.solve_with_exits`); with no exits exactly :func:`plan`. Raises
    :class:`~edgeadapt.errors.InfeasibleError` naming the best reachable accuracy."""
    if not exits:
        whole = profile.problem(bandwidth, rtt_s, source=0)
        return ExitPlacement(plan(profile, floor, bandwidth, rtt_s), whole, None)
    return solve_with_exits(profile, exits, bandwidth, rtt_s, floor, source=0)


def end_problem(profile: ChainProfile, exits: Sequence[ExitProfile], exit_block: int | None, bandwidth: float,
                rtt_s: float) -> PlacementProblem:
    """The placement problem of the chain ending at exit ``exit_block`` (``None``: the whole chain) on
    a link of ``bandwidth`` bytes/s and ``rtt_s`` seconds: what a placement of that end is re-costed on."""
    whole = profile.problem(bandwidth, rtt_s, source=0)
    if exit_block is None:
        return whole
    return exit_problem(whole, profile, next(ex for ex in exits if ex.block == exit_block))


@dataclass
class Change:
    """The outcome of one :meth:`Replanner.check` that re-solved: ``reason`` (the link move),
    whether the placement ``changed``, and ``held`` when a better one was held back by the interval."""

    reason: str
    changed: bool
    held: bool = False


@dataclass
class Replanner:
    """The placement in force for ``profile`` (two devices, edge first) at ``floor``, and the policy
    that replaces it (module docstring). ``clock`` is seconds (monotonic). With ``exits`` the
    placement may end at an exit: :attr:`exit_block` (``None``: the whole chain), and then
    :attr:`current` places blocks ``0..exit_block`` and the exit head as one more block."""

    profile: ChainProfile
    floor: float
    factor: float = REPLAN_FACTOR
    min_interval_s: float = REPLAN_INTERVAL_S
    margin: float = REPLAN_MARGIN
    clock: Callable[[], float] = time.perf_counter
    current: Placement | None = None
    planned: tuple[float, float] | None = None
    """(bandwidth bytes/s, RTT s) the placement in force was last checked against."""
    last_change_s: float | None = None
    interval_s: float | None = None
    """The interval in force (``min_interval_s``, doubled on each flap back); set by :meth:`start`."""
    left: tuple | None = None
    """(widths, devices, exit) of the placement before the current one (a change back to it is a flap)."""
    resolves: int = 0
    """Re-solves of the integer program after the first plan (kept or changed)."""
    kept: int = field(default=0)
    """Re-solves that kept the placement (same solution, or not better by the margin)."""
    exits: Sequence[ExitProfile] = ()
    """Exit profiles the plan may end at (none: the whole chain always)."""
    exit_block: int | None = None
    """The exit the placement in force ends at (``None``: the whole chain)."""

    def start(self, bandwidth: float, rtt_s: float) -> Placement:
        """The first plan, for the link measured at start."""
        first = plan_with_exits(self.profile, self.exits, self.floor, bandwidth, rtt_s)
        self.current, self.exit_block, self.planned = first.placement, first.exit_block, (bandwidth, rtt_s)
        self.interval_s, self.left = self.min_interval_s, None
        return self.current

    def check(self, bandwidth: float | None, rtt_s: float | None) -> Change | None:
        """Re-solve when the link moved (:func:`replan_reason`) and replace the placement when the
        new one is different and better by the margin and the interval since the last change has
        passed; ``None`` when the link has not moved."""
        reason = replan_reason(*self.planned, bandwidth, rtt_s, self.factor)
        if reason is None:
            return None
        bandwidth = bandwidth if bandwidth is not None else self.planned[0]
        rtt_s = rtt_s if rtt_s is not None else self.planned[1]
        solved = plan_with_exits(self.profile, self.exits, self.floor, bandwidth, rtt_s)
        best, end = solved.placement, solved.exit_block
        problem = end_problem(self.profile, self.exits, self.exit_block, bandwidth, rtt_s)
        now = evaluate(problem, self.current.choice, self.current.devices, self.current.backend)
        self.resolves += 1
        same = (best.widths, best.devices, end) == (now.widths, now.devices, self.exit_block)
        if same or best.latency_s > now.latency_s * (1 - self.margin):
            self.current, self.planned = now, (bandwidth, rtt_s)  # re-costed on the new link
            self.kept += 1
            return Change(reason, changed=False)
        t = self.clock()
        back = (best.widths, best.devices, end) == self.left  # a flap waits the doubled interval, a new not
        wait = self.interval_s if back else self.min_interval_s
        if self.last_change_s is not None and t - self.last_change_s < wait:
            return Change(reason, changed=False, held=True)  # planned stays: checked again next time
        self.interval_s = min(2 * self.interval_s, MAX_INTERVAL_S) if back else self.min_interval_s
        self.left = (now.widths, now.devices, self.exit_block)
        self.current, self.exit_block, self.planned, self.last_change_s = best, end, (bandwidth, rtt_s), t
        return Change(reason, changed=True)
