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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgeadapt.offload.placement import Placement, evaluate, solve
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
    that replaces it (module docstring). ``clock`` is seconds (monotonic)."""

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
    """(widths, devices) of the placement before the current one (a change back to it is a flap)."""
    resolves: int = 0
    """Re-solves of the integer program after the first plan (kept or changed)."""
    kept: int = field(default=0)
    """Re-solves that kept the placement (same solution, or not better by the margin)."""

    def start(self, bandwidth: float, rtt_s: float) -> Placement:
        """The first plan, for the link measured at start."""
        self.current, self.planned = plan(self.profile, self.floor, bandwidth, rtt_s), (bandwidth, rtt_s)
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
        problem = self.profile.problem(bandwidth, rtt_s, source=0)
        best = solve(problem, self.floor)
        now = evaluate(problem, self.current.choice, self.current.devices, self.current.backend)
        self.resolves += 1
        same = (best.widths, best.devices) == (now.widths, now.devices)
        if same or best.latency_s > now.latency_s * (1 - self.margin):
            self.current, self.planned = now, (bandwidth, rtt_s)  # re-costed on the new link
            self.kept += 1
            return Change(reason, changed=False)
        t = self.clock()
        back = (best.widths, best.devices) == self.left  # a flap waits the doubled interval, a new one not
        wait = self.interval_s if back else self.min_interval_s
        if self.last_change_s is not None and t - self.last_change_s < wait:
            return Change(reason, changed=False, held=True)  # planned stays: checked again next time
        self.interval_s = min(2 * self.interval_s, MAX_INTERVAL_S) if back else self.min_interval_s
        self.left = (now.widths, now.devices)
        self.current, self.planned, self.last_change_s = best, (bandwidth, rtt_s), t
        return Change(reason, changed=True)
