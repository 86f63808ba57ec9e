"""Placement: one width and one device per block of a chain, by an integer program.

Given per (block, width) profiles (accuracy drop, latency on each device, weight bytes) and per
block output bytes (a descendant keeps its block's output shape, so they do not depend on the
width), choose ``x[b, w, d] ∈ {0, 1}`` — block ``b`` runs at width ``w`` on device ``d`` — to
minimise the predicted end-to-end latency of one request (seconds)::

    Σ x[b,w,d]·t[b,w,d]                                  compute
  + Σ_d Σ_w x[0,w,d]·hop(src, d, input_bytes)             input upload (0 when block 0 is on src)
  + Σ_b Σ_{d≠d'} y[b,d,d']·hop(d, d', out_bytes[b])       hand-off between consecutive blocks
  + Σ_d Σ_w x[B-1,w,d]·hop(d, src, out_bytes[B-1])        result return (0 when the last is on src)

with ``hop(d, d', n) = rtt[d][d'] / 2 + n / bandwidth[d][d']`` (one way: half a round trip plus the
bytes at the link's rate). ``y[b,d,d'] = x[b,·,d] ∧ x[b+1,·,d']`` (continuous, ``d = d'`` included at
no cost) is linearised by its marginals: ``Σ_d' y[b,d,d'] = Σ_w x[b,w,d]`` and
``Σ_d y[b,d,d'] = Σ_w x[b+1,w,d']``; with binary ``x`` each side has a single 1, so ``y`` is exactly the
product. (The textbook ``y ≥ x + x' − 1`` is also exact but its LP relaxation is so weak that HiGHS
did not prove 48 blocks × 5 widths × 4 devices optimal in 10 s; with the marginals it takes well
under a second.) Subject to: one (width, device) per block; the additive accuracy model
``base − Σ x·drop ≥ floor``; per device ``Σ x·mem ≤ memory``. Any number of devices.

Solved with :func:`scipy.optimize.milp` (HiGHS) by default, or PuLP/CBC (``backend="pulp"``) when
PuLP is installed (it is not a dependency). Variables are decoded by index. A floor no placement
reaches is an :class:`~edgeadapt.errors.InfeasibleError` naming the best reachable accuracy.

>>> placement = solve(problem, floor=0.9)                 # doctest: +SKIP
>>> placement.widths, placement.devices, placement.latency_s  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from edgeadapt.errors import ConfigError, InfeasibleError, MissingDependencyError

BACKENDS = ("highs", "pulp")


@dataclass(frozen=True)
class Option:
    """One descendant of a block: its width, accuracy drop (fraction, additive model), latency on
    each device (seconds, one entry per device of the problem) and memory it occupies on a device
    (bytes: weights, plus whatever the profile chose to add)."""

    width: float
    acc_drop: float
    latency_s: tuple[float, ...]
    mem_bytes: int


@dataclass(frozen=True)
class PlacementProblem:
    """A chain of blocks, their options, devices and the network between them.

    ``options[b]`` lists block ``b``'s descendants; ``out_bytes[b]`` is block ``b``'s output size;
    ``input_bytes`` the request's input size. ``devices`` names the devices; ``memory_bytes[d]``
    is what device ``d`` may hold. ``bandwidth[d][d']`` (bytes/s) and ``rtt_s[d][d']`` (seconds) describe
    each directed link (the diagonal is unused). ``source`` is the device where a request starts and
    its result must return (the edge). ``base_accuracy`` is the full-width model's accuracy."""

    options: tuple[tuple[Option, ...], ...]
    out_bytes: tuple[int, ...]
    input_bytes: int
    devices: tuple[str, ...]
    memory_bytes: tuple[int, ...]
    bandwidth: tuple[tuple[float, ...], ...]
    rtt_s: tuple[tuple[float, ...], ...]
    base_accuracy: float
    source: int = 0

    def __post_init__(self) -> None:
        n_b, n_d = len(self.options), len(self.devices)
        if n_b == 0 or n_d == 0:
            raise ConfigError("a placement problem needs at least one block and one device")
        if len(self.out_bytes) != n_b:
            raise ConfigError(f"out_bytes has {len(self.out_bytes)} entries for {n_b} blocks")
        if len(self.memory_bytes) != n_d:
            raise ConfigError(f"memory_bytes has {len(self.memory_bytes)} entries for {n_d} devices")
        for name, m in (("bandwidth", self.bandwidth), ("rtt_s", self.rtt_s)):
            if len(m) != n_d or any(len(row) != n_d for row in m):
                raise ConfigError(f"{name} must be a {n_d}×{n_d} matrix (one row and column per device)")
        if any(self.bandwidth[i][j] <= 0 for i in range(n_d) for j in range(n_d) if i != j):
            raise ConfigError("every link's bandwidth must be positive (bytes/s)")
        if any(not self.rtt_s[i][j] >= 0 for i in range(n_d) for j in range(n_d) if i != j):
            raise ConfigError(f"every link's round trip must be >= 0 seconds; got rtt_s={self.rtt_s}")
        if not 0 <= self.source < n_d:
            raise ConfigError(f"source device {self.source} is not one of the {n_d} devices")
        for b, opts in enumerate(self.options):
            if not opts:
                raise ConfigError(f"block {b} has no options")
            for o in opts:
                if len(o.latency_s) != n_d:
                    raise ConfigError(f"block {b} width {o.width}: {len(o.latency_s)} latencies for "
                                      f"{n_d} devices")

    def hop_s(self, src: int, dst: int, n_bytes: int) -> float:
        """One-way transfer time of ``n_bytes`` from device ``src`` to ``dst`` (0 on the same device)."""
        if src == dst:
            return 0.0
        return self.rtt_s[src][dst] / 2 + n_bytes / self.bandwidth[src][dst]


@dataclass(frozen=True)
class Placement:
    """A decoded solution: per block the chosen option index, width and device, and its predicted
    latency (seconds; compute and transfer parts), accuracy and bytes held per device."""

    choice: tuple[int, ...]
    widths: tuple[float, ...]
    devices: tuple[int, ...]
    latency_s: float
    compute_s: float
    transfer_s: float
    accuracy: float
    mem_bytes: tuple[int, ...]
    backend: str = "exhaustive"
    device_names: tuple[str, ...] = field(default=())
    optimal: bool = True

    def to_dict(self) -> dict:
        return {"widths": list(self.widths), "devices": [self.device_names[d] if self.device_names else d
                                                         for d in self.devices],
                "latency_s": self.latency_s, "compute_s": self.compute_s, "transfer_s": self.transfer_s,
                "accuracy": self.accuracy, "mem_bytes": list(self.mem_bytes), "backend": self.backend,
                "optimal": self.optimal}


def evaluate(problem: PlacementProblem, choice: tuple[int, ...], devices: tuple[int, ...],
             backend: str = "exhaustive") -> Placement:
    """The :class:`Placement` of option ``choice[b]`` on device ``devices[b]`` for every block, by the
    same cost model the integer program minimises (no feasibility check; see :func:`feasible`)."""
    p = problem
    opts = [p.options[b][w] for b, w in enumerate(choice)]
    compute = sum(o.latency_s[d] for o, d in zip(opts, devices))
    transfer = p.hop_s(p.source, devices[0], p.input_bytes)
    transfer += sum(p.hop_s(devices[b], devices[b + 1], p.out_bytes[b]) for b in range(len(opts) - 1))
    transfer += p.hop_s(devices[-1], p.source, p.out_bytes[-1])
    mem = [0] * len(p.devices)
    for o, d in zip(opts, devices):
        mem[d] += o.mem_bytes
    acc = p.base_accuracy - sum(o.acc_drop for o in opts)
    return Placement(tuple(choice), tuple(o.width for o in opts), tuple(devices), compute + transfer, compute,
                     transfer, acc, tuple(mem), backend, p.devices)


def feasible(problem: PlacementProblem, placement: Placement, floor: float, tol: float = 1e-9) -> bool:
    """Whether ``placement`` meets the accuracy floor and every device's memory."""
    return placement.accuracy >= floor - tol and all(
        m <= cap for m, cap in zip(placement.mem_bytes, problem.memory_bytes))


def solve_exhaustive(problem: PlacementProblem, floor: float) -> Placement | None:
    """The best feasible placement by trying every (width, device) per block — for checking the
    integer program on small instances (cost grows as (widths × devices) ** blocks). ``None`` when
    nothing meets the floor and memory."""
    best = None
    per_block = [list(itertools.product(range(len(opts)), range(len(problem.devices))))
                 for opts in problem.options]
    for combo in itertools.product(*per_block):
        pl = evaluate(problem, tuple(c[0] for c in combo), tuple(c[1] for c in combo))
        if feasible(problem, pl, floor) and (best is None or pl.latency_s < best.latency_s - 1e-12):
            best = pl
    return best


@dataclass
class _Program:
    """The integer program in matrix form: ``min c·z`` s.t. ``lb ≤ A z ≤ ub``, integrality, bounds."""

    c: np.ndarray
    rows: list[tuple[dict[int, float], float, float]]
    integral: np.ndarray
    upper: np.ndarray
    x_index: dict[tuple[int, int, int], int]


def _build(problem: PlacementProblem, floor: float | None, objective: str) -> _Program:
    p = problem
    n_d = len(p.devices)
    n_b = len(p.options)
    x_index: dict[tuple[int, int, int], int] = {}
    cost: list[float] = []
    for b, opts in enumerate(p.options):
        for w, o in enumerate(opts):
            for d in range(n_d):
                x_index[b, w, d] = len(cost)
                if objective == "latency":
                    c = o.latency_s[d]
                    if b == 0:
                        c += p.hop_s(p.source, d, p.input_bytes)
                    if b == n_b - 1:
                        c += p.hop_s(d, p.source, p.out_bytes[-1])
                else:  # maximise accuracy = minimise the summed drop
                    c = o.acc_drop
                cost.append(c)
    n_x = len(cost)
    y_index: dict[tuple[int, int, int], int] = {}
    if objective == "latency":
        for b in range(n_b - 1):
            for d, e in itertools.product(range(n_d), repeat=2):
                y_index[b, d, e] = len(cost)
                cost.append(p.hop_s(d, e, p.out_bytes[b]))
    rows: list[tuple[dict[int, float], float, float]] = []
    for b, opts in enumerate(p.options):  # one (width, device) per block
        rows.append(({x_index[b, w, d]: 1.0 for w in range(len(opts)) for d in range(n_d)}, 1.0, 1.0))
    for b in range(n_b - 1 if y_index else 0):  # y's marginals are the placements of b and b + 1
        for d in range(n_d):
            row = {y_index[b, d, e]: 1.0 for e in range(n_d)}
            row.update({x_index[b, w, d]: -1.0 for w in range(len(p.options[b]))})
            rows.append((row, 0.0, 0.0))
            row = {y_index[b, e, d]: 1.0 for e in range(n_d)}
            row.update({x_index[b + 1, w, d]: -1.0 for w in range(len(p.options[b + 1]))})
            rows.append((row, 0.0, 0.0))
    if floor is not None:  # Σ drop <= base - floor
        rows.append(({x_index[b, w, d]: o.acc_drop for b, opts in enumerate(p.options)
                      for w, o in enumerate(opts) for d in range(n_d)}, -np.inf, p.base_accuracy - floor))
    for d in range(n_d):
        rows.append(({x_index[b, w, d]: float(o.mem_bytes) for b, opts in enumerate(p.options)
                      for w, o in enumerate(opts)}, -np.inf, float(p.memory_bytes[d])))
    integral = np.array([1] * n_x + [0] * len(y_index))
    upper = np.array([1.0] * n_x + [np.inf] * len(y_index))
    return _Program(np.array(cost), rows, integral, upper, x_index)


# what a backend reports: the solution vector (or None) and whether it is proven optimal; a
# solution that is not comes from a time limit (the best found so far)
Solved = tuple[np.ndarray | None, bool]


def _solve_highs(prog: _Program, time_limit_s: float) -> Solved:
    entries = [(i, j, v) for i, (row, _, _) in enumerate(prog.rows) for j, v in row.items()]
    rows, cols, vals = zip(*entries)
    a = coo_array((vals, (rows, cols)), shape=(len(prog.rows), len(prog.c))).tocsr()
    lb = np.array([r[1] for r in prog.rows])
    ub = np.array([r[2] for r in prog.rows])
    res = milp(prog.c, constraints=LinearConstraint(a, lb, ub), integrality=prog.integral,
               bounds=Bounds(np.zeros(len(prog.c)), prog.upper), options={"time_limit": time_limit_s})
    if res.status == 1 and res.x is None:  # time limit, nothing found yet
        raise _NotSolved(time_limit_s)
    return (res.x, res.status == 0) if res.status in (0, 1) else (None, False)


def _solve_pulp(prog: _Program, time_limit_s: float) -> Solved:
    try:
        import pulp  # optional backend, not a dependency
    except ImportError:
        raise MissingDependencyError("backend 'pulp' needs PuLP (`pip install 'pulp<4'`); the default "
                                     "backend 'highs' needs only SciPy") from None
    lp = pulp.LpProblem("placement", pulp.LpMinimize)
    z = [pulp.LpVariable(f"z{j:06d}", lowBound=0, upBound=None if np.isinf(u) else u,
                         cat="Binary" if i else "Continuous")
         for j, (i, u) in enumerate(zip(prog.integral, prog.upper))]
    lp += pulp.lpSum(float(c) * v for c, v in zip(prog.c, z))
    for row, lo, hi in prog.rows:
        expr = pulp.lpSum(v * z[j] for j, v in row.items())
        if lo == hi:
            lp += expr == lo
        else:
            if np.isfinite(lo):
                lp += expr >= lo
            if np.isfinite(hi):
                lp += expr <= hi
    lp.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s))
    if lp.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        # by index, not by PuLP's name order
        return np.array([v.value() or 0.0 for v in z]), lp.sol_status == pulp.LpSolutionOptimal
    if lp.status == pulp.LpStatusInfeasible:
        return None, False
    raise _NotSolved(time_limit_s)


class _NotSolved(Exception):
    """The backend found no solution within the time limit (which is not proof of infeasibility)."""

    def __init__(self, time_limit_s: float) -> None:
        super().__init__(time_limit_s)
        self.time_limit_s = time_limit_s


def _decode(problem: PlacementProblem, prog: _Program, z: np.ndarray, backend: str,
            optimal: bool) -> Placement:
    choice, devices = [], []
    for b, opts in enumerate(problem.options):
        (w, d), = [(w, d) for w in range(len(opts)) for d in range(len(problem.devices))
                   if z[prog.x_index[b, w, d]] > 0.5]
        choice.append(w)
        devices.append(d)
    return replace(evaluate(problem, tuple(choice), tuple(devices), backend), optimal=optimal)


def _run(problem: PlacementProblem, floor: float | None, objective: str, backend: str,
         time_limit_s: float) -> Placement | None:
    if backend not in BACKENDS:
        raise ConfigError(f"placement backend {backend!r} is not one of {', '.join(BACKENDS)}")
    prog = _build(problem, floor, objective)
    try:
        z, optimal = (_solve_highs if backend == "highs" else _solve_pulp)(prog, time_limit_s)
    except _NotSolved as exc:
        raise ConfigError(f"the placement program ({len(problem.options)} blocks, {len(problem.devices)} "
                          f"devices) found no solution within time_limit_s={exc.time_limit_s}; raise the "
                          "limit") from None
    return None if z is None else _decode(problem, prog, z, backend, optimal)


def solve(problem: PlacementProblem, floor: float, backend: str = "highs",
          time_limit_s: float = 10.0) -> Placement:
    """The placement of least predicted latency whose additive accuracy is at least ``floor`` and
    that fits every device's memory. When ``time_limit_s`` stops the solver first, the best
    placement found so far is returned with ``optimal=False``; none found by then is a
    :class:`~edgeadapt.errors.ConfigError` (raise the limit). Raises
    :class:`~edgeadapt.errors.InfeasibleError` naming the best accuracy any placement within memory
    reaches (or saying that none fits memory); a ``floor`` above 1 or NaN is a
    :class:`~edgeadapt.errors.ConfigError` (a floor at or below 0 asks for no accuracy)."""
    if not floor <= 1.0:
        raise ConfigError(f"accuracy floor {floor!r} is not a fraction <= 1 (e.g. 0.9 for 90%)")
    found = _run(problem, floor, "latency", backend, time_limit_s)
    if found is not None:
        return found
    best = _run(problem, None, "accuracy", backend, time_limit_s)
    if best is None:
        raise InfeasibleError(
            f"no placement fits the devices' memory ({dict(zip(problem.devices, problem.memory_bytes))} "
            "bytes), whatever the widths; add memory or a device")
    raise InfeasibleError(
        f"accuracy floor {floor:.4f} is unreachable: the best placement within the devices' memory "
        f"reaches {best.accuracy:.4f} by the additive accuracy model (full-width accuracy "
        f"{problem.base_accuracy:.4f}); lower the floor to at most {best.accuracy:.4f}")
