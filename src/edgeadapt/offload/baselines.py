"""Offload baselines in the same harness as the placement program, for comparable numbers.

Every baseline is costed by :func:`~edgeadapt.offload.placement.evaluate` on the same
:class:`~edgeadapt.offload.placement.PlacementProblem` (a :class:`~edgeadapt.offload.profile.ChainProfile`
with its links), so compute, transfers and memory follow one latency model:

- :func:`edge_only`: every block at full width on the source (the edge).
- :func:`cloud_only`: upload the input, every block at full width on one server (the fastest one
  for this input, when there are several), return the logits.
- :func:`neurosurgeon`: the best single split of the uncompressed chain — blocks ``[0, k)`` on the
  edge, ``[k, B)`` on one server — over every ``k`` and server (Neurosurgeon, ASPLOS'17, with the
  profile's measured per-block latencies as its latency models).
- :func:`early_exit`: BranchyNet-style exit heads (:class:`~edgeadapt.offload.exits.ExitHead`:
  pooling + linear, trained by :func:`~edgeadapt.offload.exits.train_exit_heads` on the frozen
  chain's intermediate outputs). A request runs blocks
  ``0..e`` at full width and exit ``e``'s head; the exit *and* the device of every block are chosen
  by exhaustive search for the least latency whose measured exit accuracy meets the floor — an
  upper bound on what the DDPG agent of DEC-DNN-IO (TaskOffloadingAtEdge's baseline: exits meeting
  the threshold, then a learned split per exit) can pick.

Each returns a :class:`BaselineResult` (latency, accuracy, bytes sent, a description of the choice);
:func:`from_placement` turns the integer program's :class:`~edgeadapt.offload.placement.Placement`
into the same record.

>>> prob = profile.problem(bandwidth=10e6 / 8, rtt_s=0.005)          # doctest: +SKIP
>>> neurosurgeon(prob).latency_s, early_exit(profile, exits, 10e6 / 8, 0.005, 0.9)  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace

from edgeadapt.errors import ConfigError, InfeasibleError
from edgeadapt.offload.exits import ExitProfile, exit_problem
from edgeadapt.offload.placement import Placement, PlacementProblem, evaluate, feasible
from edgeadapt.offload.profile import ChainProfile

# exhaustive device search per exit is (devices ** blocks); above this many assignments only
# contiguous segments (each device used at most once, in chain order) are searched
EXHAUSTIVE_LIMIT = 200_000


@dataclass(frozen=True)
class BaselineResult:
    """One method's choice for one request: predicted latency (seconds; compute and transfer
    parts), accuracy (fraction: measured for full-width chains and exits, the additive model's for
    a placement of descendants), bytes that cross a link, and the choice in words."""

    method: str
    latency_s: float
    compute_s: float
    transfer_s: float
    accuracy: float
    bytes_sent: int
    choice: str
    hops: tuple[tuple[str, str, int], ...] = ()
    exit_block: int | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["hops"] = [list(h) for h in self.hops]
        return data


def bytes_sent(problem: PlacementProblem, devices: Sequence[int],
               out_bytes: Sequence[int] | None = None) -> int:
    """Bytes crossing links when block ``b`` runs on ``devices[b]``: the input when block 0 is not on
    the source, every hand-off between devices, and the result back to the source."""
    out = problem.out_bytes if out_bytes is None else out_bytes
    src = problem.source
    total = problem.input_bytes if devices[0] != src else 0
    total += sum(out[b] for b in range(len(devices) - 1) if devices[b] != devices[b + 1])
    return total + (out[len(devices) - 1] if devices[-1] != src else 0)


def hops(problem: PlacementProblem, devices: Sequence[int]) -> tuple[tuple[str, str, int], ...]:
    """Every transfer of a request, in order, as ``(from device, to device, bytes)``: the input
    upload, each hand-off between devices and the result's return (their bytes sum to
    :func:`bytes_sent`)."""
    names, src, out = problem.devices, problem.source, problem.out_bytes
    path = [(src, devices[0], problem.input_bytes)]
    path += [(devices[b], devices[b + 1], out[b]) for b in range(len(devices) - 1)]
    path.append((devices[-1], src, out[len(devices) - 1]))
    return tuple((names[a], names[b], n) for a, b, n in path if a != b)


def _segments(problem: PlacementProblem, devices: Sequence[int]) -> str:
    """``"edge[0-2] → cloud[3-5]"``: the devices' runs of consecutive blocks."""
    parts = []
    for d, run in itertools.groupby(enumerate(devices), key=lambda t: t[1]):
        idx = [b for b, _ in run]
        parts.append(f"{problem.devices[d]}[{idx[0]}-{idx[-1]}]" if len(idx) > 1 else
                     f"{problem.devices[d]}[{idx[0]}]")
    return " → ".join(parts)


def full_choice(problem: PlacementProblem) -> tuple[int, ...]:
    """The index of every block's full-width option."""
    try:
        return tuple(next(i for i, o in enumerate(opts) if o.width == 1.0) for opts in problem.options)
    except StopIteration:
        raise ConfigError("a baseline needs every block's full-width option (width 1.0)") from None


def _result(method: str, problem: PlacementProblem, pl: Placement, accuracy: float,
            what: str, exit_block: int | None = None) -> BaselineResult:
    return BaselineResult(method, pl.latency_s, pl.compute_s, pl.transfer_s, accuracy,
                          bytes_sent(problem, pl.devices), what, hops(problem, pl.devices), exit_block)


def from_placement(problem: PlacementProblem, placement: Placement, method: str = "ours",
                   exit_block: int | None = None) -> BaselineResult:
    """The integer program's placement as a :class:`BaselineResult` (accuracy: the additive model's);
    ``exit_block`` when it stops at an exit (:func:`~edgeadapt.offload.exits.solve_with_exits`: the
    placement's last block is then the exit head)."""
    widths = ",".join(f"{w:g}" for w in (placement.widths if exit_block is None else placement.widths[:-1]))
    where = "" if exit_block is None else f"exit after block {exit_block}: "
    return _result(method, problem, placement, placement.accuracy,
                   f"{where}{_segments(problem, placement.devices)}; widths {widths}", exit_block)


def _servers(problem: PlacementProblem) -> list[int]:
    servers = [d for d in range(len(problem.devices)) if d != problem.source]
    if not servers:
        raise ConfigError("cloud-only and split baselines need a device besides the source")
    return servers


def edge_only(problem: PlacementProblem) -> BaselineResult:
    """Every block at full width on the source; nothing is sent."""
    n = len(problem.options)
    pl = evaluate(problem, full_choice(problem), (problem.source,) * n)
    return _result("edge-only", problem, pl, problem.base_accuracy, f"{problem.devices[problem.source]}[all]")


def neurosurgeon(problem: PlacementProblem) -> BaselineResult:
    """The best single split ``k`` (blocks ``[0, k)`` on the source, ``[k, B)`` on one server, any
    server) of the uncompressed chain; ``k = 0`` is cloud-only and ``k = B`` edge-only. Splits that
    overflow a device's memory are skipped (edge-only is always considered)."""
    n, full = len(problem.options), full_choice(problem)
    best: Placement | None = None
    for server in _servers(problem):
        for k in range(n + 1):
            pl = evaluate(problem, full, (problem.source,) * k + (server,) * (n - k))
            if feasible(problem, pl, -1.0) and (best is None or pl.latency_s < best.latency_s - 1e-12):
                best = pl
    if best is None:
        raise InfeasibleError("no single split of the full-width chain fits the devices' memory")
    k = sum(d == problem.source for d in best.devices)
    return _result("neurosurgeon", problem, best, problem.base_accuracy,
                   f"split after block {k} of {n}: {_segments(problem, best.devices)}")


def cloud_only(problem: PlacementProblem) -> BaselineResult:
    """Upload the input and run every block at full width on the fastest server for it that holds
    the whole model; :class:`~edgeadapt.errors.InfeasibleError` when none does."""
    n, full = len(problem.options), full_choice(problem)
    pls = [pl for s in _servers(problem) if feasible(problem, pl := evaluate(problem, full, (s,) * n), -1.0)]
    if not pls:
        raise InfeasibleError("no server holds the whole full-width model in its memory")
    best = min(pls, key=lambda p: p.latency_s)
    return _result("cloud-only", problem, best, problem.base_accuracy,
                   f"{problem.devices[best.devices[0]]}[all]")


# -- early exits -------------------------------------------------------------------------------
def _best_devices(problem: PlacementProblem) -> Placement | None:
    """The least-latency device per block of a one-option-per-block problem that fits memory:
    every assignment when there are few, else contiguous segments in chain order."""
    n, n_d = len(problem.options), len(problem.devices)
    choice = (0,) * n
    if n_d ** n <= EXHAUSTIVE_LIMIT:
        assignments: Iterable[tuple[int, ...]] = itertools.product(range(n_d), repeat=n)
    else:
        def segments() -> Iterable[tuple[int, ...]]:
            for order in itertools.permutations(range(n_d)):
                for cuts in itertools.combinations_with_replacement(range(n + 1), n_d - 1):
                    bounds = (0, *cuts, n)
                    yield tuple(d for i, d in enumerate(order) for _ in range(bounds[i + 1] - bounds[i]))
        assignments = segments()
    best = None
    for devices in assignments:
        pl = evaluate(problem, choice, devices)
        if feasible(problem, pl, -1.0) and (best is None or pl.latency_s < best.latency_s - 1e-12):
            best = pl
    return best


def early_exit(profile: ChainProfile, exits: Sequence[ExitProfile],
               bandwidth: float | Sequence[Sequence[float]],
               rtt_s: float | Sequence[Sequence[float]], floor: float, source: int = 0) -> BaselineResult:
    """The least-latency early exit meeting ``floor``: over every exit whose measured accuracy is at
    least ``floor`` (and the full chain, at the profile's base accuracy), blocks ``0..e`` at full
    width plus the exit head, each on the device that minimises the latency (exhaustive search).
    Raises :class:`~edgeadapt.errors.InfeasibleError` naming the best exit accuracy when none
    meets the floor."""
    problem = profile.problem(bandwidth, rtt_s, source)
    full = full_choice(problem)
    whole = replace(problem, options=tuple((opts[w],) for opts, w in zip(problem.options, full)))
    best: tuple[Placement, PlacementProblem, str, int | None] | None = None
    # each end at full width: the whole chain, or an exit's problem without its drops (full width only)
    ends = [(whole, None)] if profile.base_accuracy >= floor - 1e-12 else []
    ends += [(exit_problem(problem, profile, replace(x, drops=())), x.block) for x in exits
             if x.accuracy >= floor - 1e-12]
    for sub, block in ends:
        pl = _best_devices(sub)
        if pl is not None and (best is None or pl.latency_s < best[0].latency_s - 1e-12):
            what = f"exit after block {block}" if block is not None else "no early exit (full chain)"
            best = (pl, sub, what, block)
    if best is None:
        reach = max([x.accuracy for x in exits] + [profile.base_accuracy])
        raise InfeasibleError(f"no early exit reaches the accuracy floor {floor:.4f}; the best exit reaches "
                              f"{reach:.4f}")
    pl, sub, what, block = best
    return _result("early-exit", sub, pl, sub.base_accuracy, f"{what}: {_segments(sub, pl.devices)}", block)
