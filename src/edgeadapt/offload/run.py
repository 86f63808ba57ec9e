"""The edge side of split inference: run some blocks here, send activations, get logits back.

``edgeadapt offload run --model M --server H:P --token-file F --split K`` evaluates ``M`` on a
dataset's test split, batch after batch (requests one after another), with blocks ``[0, K)`` on this
machine and ``[K, n)`` on the server (:mod:`edgeadapt.offload.serve`), at full width. ``K = n`` is
edge-only, ``K = 0`` sends the raw images (cloud-only). The link is measured on the real transfers:
round-trip time from ``Ping`` (every few requests), bandwidth from an ``Echo`` probe and then from
every ``Run`` (bytes both ways over the call time less the server's compute and the smallest round
trip), both as exponential moving averages (:class:`LinkEstimate`).

``--floor F`` instead (``M`` a descendants artifact with its profile): the profile restricted to the
edge and the server (:func:`~edgeadapt.offload.run_setup.edge_cloud_profile`) and the measured link
give the placement problem; :func:`plan` solves it (a width and a device per block) and each request
runs it, consecutive blocks on one device as one call (:func:`segments`). Before each request a
:class:`~edgeadapt.offload.replan.Replanner` compares the link with the figures the plan used; a
move beyond the factor re-solves it, and the placement changes only when the new one is better by a
margin and the last change is at least ``replan_interval_s`` old (``replans`` lists the changes).
When the artifact has early-exit heads and ``exits.json`` beside the profile (``offload build
--exit-epochs``), every plan is :func:`~edgeadapt.offload.replan.plan_with_exits`: the request may
run blocks ``0..e`` and then the exit head after block ``e`` (on either device) when that is the
fastest way to meet the floor; the report names the exit (``exit_block``, ``None``: the whole chain).
``use_exits=False`` (``--no-exits``) places the whole chain only. The edge uses exits only when the
server's exit heads are the same weights as its own (``Info``'s ``exits_hash``).

When the server is unreachable (nothing listens, the connection drops, a call times out) the edge
falls back to running every block itself (with ``floor``: the fastest edge-only widths and exit meeting
it within the edge's memory; none at the start is an :class:`~edgeadapt.errors.InfeasibleError`, the
floor is never dropped), warns (``warnings.warn``: one stderr line from the CLI),
and retries the server on a fresh channel with exponential backoff (:data:`RETRY_FIRST_S` doubling
up to :data:`RETRY_MAX_S`); when it answers with the same weights the run resumes its split or
re-plans (``fallbacks`` and ``reconnects`` list both). ``requests_by_mode`` counts the requests that
ran edge-only, split and cloud-only; ``mode`` is the one mode of them all, or ``mixed``.
``bytes_sent``/``bytes_received`` are ``Run`` frames (the payload); ``probe_bytes`` the ``Info``,
``Ping`` and ``Echo`` calls that measure the link. A server that answers but refuses (bad token,
another model, a frame too large) is a user error (:class:`~edgeadapt.errors.ConfigError`), not a
fallback.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from edgeadapt.errors import ConfigError, InfeasibleError
from edgeadapt.offload.client import LinkEstimate, OffloadClient, ServerUnreachable
from edgeadapt.offload.netem import TokenBucket
from edgeadapt.offload.placement import Placement
from edgeadapt.offload.replan import (
    REPLAN_FACTOR,
    REPLAN_INTERVAL_S,
    Replanner,
    plan,
    plan_with_exits,
    replan_reason,
)
from edgeadapt.offload.report import OffloadReport
from edgeadapt.offload.run_setup import (
    check_address,
    check_batch_size,
    check_server,
    edge_cloud_profile,
    least_memory,
    load_exits,
    load_test_split,
    profile_for,
    profile_path,
)
from edgeadapt.offload.serve import RuntimeChain, load_chain

__all__ = ["OffloadReport", "OffloadRunConfig", "edge_cloud_profile", "plan", "plan_with_exits",
           "replan_reason", "run_offload", "segments", "steps"]

PING_EVERY = 10
"""Requests between two ``Ping`` calls that keep the round-trip estimate current."""

RETRY_FIRST_S = 0.5
"""Seconds after a fallback before the server is first tried again; each failed try doubles it."""

RETRY_MAX_S = 8.0
"""Longest wait between two tries of an unreachable server (seconds)."""

RETRY_TIMEOUT_S = 1.0
"""Timeout of one retry's ``Ping`` (at most the run's per-call timeout): a retry must not stall the
edge's requests."""

MIN_PROBE_BYTES = 64 * 1024
"""Smallest ``Echo`` probe of a placement-driven run (its first plan needs a bandwidth)."""

PROBE_EVERY_S = 1.0
"""While no block runs on the server, the link is probed every :data:`PING_EVERY` requests or after
this many seconds, whichever comes first (a re-plan back to the server follows within about that)."""

DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class OffloadRunConfig:
    """One ``offload run``: the model, the server, the split or the accuracy floor, and the data."""

    model: str
    server: str
    token: bytes = field(repr=False)
    split: int | None = None
    """K: blocks ``[0, K)`` here, the rest on the server, at full width. Exactly one of ``split`` and
    ``floor`` is given."""
    data: str = "digits"
    batch_size: int | None = None
    """Inputs per request; ``None``: the profile's batch size with ``floor`` (what its latencies were
    measured at), else 32."""
    limit: int | None = None
    """Evaluate at most this many test samples (``None`` = all)."""
    duration_s: float | None = None
    """Keep sending requests, cycling the test split, until this many seconds have passed (``None``:
    one pass); ``limit`` still caps the samples. For timing re-plans and latency percentiles."""
    timeout_s: float = 10.0
    """Per-call timeout; a call past it counts as the server being unreachable."""
    probe_bytes: int = 256 * 1024
    """Size of the ``Echo`` probe that gives the first bandwidth estimate (0 = none; with ``floor``
    a probe of :data:`MIN_PROBE_BYTES` is sent anyway: the first plan needs a bandwidth)."""
    floor: float | None = None
    """Accuracy floor (fraction): place every block (width and device) by the integer program on
    the descendants artifact's profile and the measured link, re-planning when the link moves."""
    profile: str | None = None
    """The profile (``profile.json`` of :func:`~edgeadapt.offload.build.build_offload`); ``None``:
    ``profile.json`` beside the descendants artifact."""
    edge_device: str | None = None
    """The profile's device this process is (default: its first device)."""
    cloud_device: str | None = None
    """The profile's device the server is (default: the first other device)."""
    replan_factor: float = REPLAN_FACTOR
    """Re-solve when the bandwidth or RTT moves by more than this factor from what the plan used."""
    replan_interval_s: float = REPLAN_INTERVAL_S
    """Least time between two placement changes (seconds; the first change is never held back)."""
    emulate_edge: bool = False
    """Run the edge's blocks as its device profile says: with its thread count, and sleeping
    ``(slowdown - 1)×`` their compute time (so measured latency matches what the plan assumed)."""
    use_exits: bool = True
    """With ``floor``: let the plan end at an early exit when the artifact has exit heads and their
    profile (``exits.json`` beside the profile); ``False`` (``--no-exits``): the whole chain only."""


# -- placement-driven runs ---------------------------------------------------------------------
def segments(devices: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(start, end, device)`` of each run of consecutive blocks on one device: one call each."""
    out: list[tuple[int, int, int]] = []
    for b, d in enumerate(devices):
        if out and out[-1][2] == d:
            out[-1] = (out[-1][0], b + 1, d)
        else:
            out.append((b, b + 1, d))
    return out


def _probe_bytes(link: LinkEstimate) -> int:
    """An ``Echo`` probe of about 10 ms on the link as last measured, between 4 KiB and
    :data:`MIN_PROBE_BYTES` (a probe is not to stall the requests on a slow link)."""
    rate = link.bandwidth or MIN_PROBE_BYTES / 0.01
    return int(min(MIN_PROBE_BYTES, max(4096, rate * 0.01)))


def steps(devices: Sequence[int], exit_block: int | None) -> list[tuple[int, int, int | None, int]]:
    """``(start, end, exit, device)`` of each call of a request: blocks ``[start, end)`` on
    ``device``, then the exit head after block ``exit`` when ``exit`` is not ``None``. ``devices``
    has one entry per block that runs and, with ``exit_block``, one more for the exit head (position
    ``exit_block + 1``); a segment holding only the head is ``(e + 1, e + 1, e, device)``."""
    if exit_block is None:
        return [(start, end, None, d) for start, end, d in segments(devices)]
    nb = exit_block + 1
    return [(start, min(end, nb), exit_block if end > nb else None, d) for start, end, d in segments(devices)]


def _placement_dict(chain: RuntimeChain, widths: Sequence[float], devices: Sequence[int],
                    names: Sequence[str], exit_block: int | None = None) -> dict[str, Any]:
    """Per chain block that runs its width and device; ``exit_block`` and the ``exit_device`` its head
    ran on (both ``None`` for the whole chain)."""
    nb = len(widths) if exit_block is None else exit_block + 1
    return {"blocks": [{"block": chain.names[b], "width": float(widths[b]), "device": names[devices[b]]}
                       for b in range(nb)],
            "exit_block": exit_block, "exit_device": None if exit_block is None else names[devices[nb]]}


def _link_dict(bandwidth: float, rtt_s: float) -> dict[str, float]:
    return {"bandwidth_mbps": bandwidth * 8 / 1e6, "rtt_ms": rtt_s * 1e3}


def run_offload(cfg: OffloadRunConfig, shaper: TokenBucket | None = None,
                chain: RuntimeChain | None = None) -> OffloadReport:
    """Evaluate ``cfg.model`` between this process (the edge) and ``cfg.server``: split after block
    ``cfg.split`` at full width, or (``cfg.floor``) placed block by block — width and device — by
    the integer program on the artifact's profile and the measured link, re-planned with hysteresis
    (:class:`~edgeadapt.offload.replan.Replanner`, checked before each request; while no block runs
    on the server, a ping and a small ``Echo`` every :data:`PING_EVERY` requests or
    :data:`PROBE_EVERY_S` seconds — and at the next request while a jump of the link is unconfirmed
    — keep the link measured). Consecutive blocks on one device are one call.
    ``chain`` is the edge's copy when already loaded (else :func:`load_chain` of ``cfg.model``), and
    ``shaper`` emulates a slower link.

    Raises :class:`ConfigError` for a split outside ``0..n``, both or neither of split and floor, a
    server that refuses or serves other weights, and
    :class:`~edgeadapt.errors.InfeasibleError` (naming the best reachable accuracy) for a floor no
    placement reaches; an unreachable server is a fallback to edge-only (with ``floor``: the
    fastest edge-only widths meeting it) with a warning, retried with backoff and resumed when it
    answers, all recorded in the report."""
    check_address(cfg.server)
    if not cfg.timeout_s > 0:
        raise ConfigError(f"--timeout {cfg.timeout_s}: give a positive number of seconds")
    if (cfg.split is None) == (cfg.floor is None):
        raise ConfigError("offload run: give either --split K (full width) or --floor F (placement)")
    if cfg.split is not None and not cfg.use_exits:
        raise ConfigError("--no-exits with --split: a split run always runs the whole chain at full width "
                          "(exits are placed only with --floor); drop --no-exits, or use --floor F")
    if cfg.floor is not None and not 0.0 < cfg.floor <= 1.0:
        raise ConfigError(f"--floor {cfg.floor}: an accuracy floor is a fraction in (0, 1]")
    if not cfg.replan_factor > 1.0:
        raise ConfigError(f"replan_factor {cfg.replan_factor}: give a factor above 1")
    if cfg.duration_s is not None and not cfg.duration_s > 0:
        raise ConfigError(f"--duration {cfg.duration_s}: give a positive number of seconds")
    if not cfg.replan_interval_s >= 0:
        raise ConfigError(f"--replan-interval {cfg.replan_interval_s}: give seconds >= 0")
    chain = chain if chain is not None else load_chain(cfg.model)
    n = len(chain)
    if cfg.split is not None and not 0 <= cfg.split <= n:
        blocks = ", ".join(f"{i}={name}" for i, name in enumerate(chain.names))
        raise ConfigError(f"--split {cfg.split}: the model has {n} blocks (0..{n - 1}); give 0 (cloud-only) "
                          f"to {n} (edge-only); K runs blocks 0..K-1 on the edge: {blocks}")
    profile_file = profile_path(cfg.model, cfg.profile) if cfg.floor is not None else None
    profile = (profile_for(profile_file, chain, cfg.model, cfg.edge_device, cfg.cloud_device)
               if profile_file is not None else None)
    exits = (load_exits(profile_file, chain, profile, cfg.model)
             if profile is not None and cfg.use_exits else [])
    if profile is not None:  # fail fast on an unreachable floor: it does not depend on the link
        plan_with_exits(profile, exits, cfg.floor, 1e9, 0.0)
    names = [d.name for d in profile.devices] if profile is not None else ["edge", "cloud"]
    batch_size = cfg.batch_size or (profile.batch_size if profile is not None else DEFAULT_BATCH_SIZE)
    if profile is not None and cfg.batch_size is not None:
        check_batch_size(cfg.batch_size, profile.batch_size)
    split = load_test_split(cfg.data, chain)
    widths: list[float] = [1.0] * n
    split_devices = [0] * n if cfg.split is None else [0] * cfg.split + [1] * (n - cfg.split)
    devices: list[int] = list(split_devices)
    exit_block: int | None = None  # the plan ends at this exit's head (None: the whole chain)
    replanner = (Replanner(profile, cfg.floor, cfg.replan_factor, cfg.replan_interval_s, exits=exits)
                 if profile is not None else None)
    chosen: Placement | None = None
    replans: list[dict[str, Any]] = []
    fallbacks: list[dict[str, Any]] = []
    reconnects: list[dict[str, Any]] = []
    down: dict[str, Any] | None = None  # while the server is unreachable: since, wait, next try, tries
    probe = max(cfg.probe_bytes, MIN_PROBE_BYTES) if profile is not None else cfg.probe_bytes

    def adopt(placement: Placement, end: int | None) -> None:
        nonlocal widths, devices, chosen, exit_block
        chosen, widths, devices = placement, list(placement.widths), list(placement.devices)
        exit_block = end

    def record(i: int, reason: str) -> None:
        replans.append({"at_request": i, "at_s": time.perf_counter() - started, "time": time.time(),
                        "reason": reason, "link": _link_dict(*replanner.planned), "changed": True,
                        **_placement_dict(chain, widths, devices, names, exit_block)})

    def go_edge_only(i: int, exc: Exception) -> str:
        """With a floor: the fastest edge-only widths (and exit) that meet it within the edge's memory.
        None fits: before any plan, an InfeasibleError (the floor is never dropped); mid-run, the
        widths planned (they meet the floor) beyond the edge's memory. Returns what the edge runs."""
        nonlocal widths, devices, chosen, exit_block
        over = ""
        if profile is not None:
            here = profile.devices[0]
            try:
                alone = plan_with_exits(replace(profile, devices=[here]), exits, cfg.floor, 1.0, 0.0)
                chosen, widths, exit_block = alone.placement, list(alone.placement.widths), alone.exit_block
            except InfeasibleError as why:
                if chosen is None:  # nothing planned yet: no placement of the floor to keep
                    need = least_memory(profile, exits, cfg.floor)
                    reason = (f"{need[1]}, the smallest end meeting it, needs at least {need[0]:,} bytes"
                              if need is not None and need[0] > here.memory_bytes else str(why))
                    raise InfeasibleError(
                        f"offload run: the server at {cfg.server} is unreachable at request {i} ({exc}) and "
                        f"no edge-only placement meets --floor {cfg.floor:g} within the edge's memory "
                        f"({here.name!r}: {here.memory_bytes:,} bytes"
                        f"{', exits included' if exits else ''}): {reason}. Start the server, lower --floor, "
                        "or give the edge's device profile more memory_bytes (offload build "
                        "--device-profile)") from None
                over = f", beyond the edge's memory ({here.memory_bytes:,} bytes: {why})"
        devices = [0] * len(widths)
        if exit_block is not None:
            prefix = "block 0" if exit_block == 0 else f"blocks 0..{exit_block}"
            return f"{prefix} and the exit after block {exit_block} on the edge{over}"
        return f"every block on the edge{over}"

    def fall_back(i: int, exc: Exception) -> None:
        nonlocal down
        now = time.perf_counter()
        down = {"since": now, "wait": RETRY_FIRST_S, "next": now + RETRY_FIRST_S, "tries": 0}
        fallbacks.append({"reason": str(exc), "at_request": i})
        runs = go_edge_only(i, exc)
        warnings.warn(f"offload run: the server is unreachable at request {i} ({exc}); running {runs} "
                      f"and retrying the server (first in {RETRY_FIRST_S:g} s)", stacklevel=3)

    def connect(i: int, timeout_s: float | None = None) -> None:
        """Check the server, measure the link and place (or restore the split); raises
        ServerUnreachable."""
        client.ping(timeout_s)
        check_server(client.info(), chain, cfg.server, exits=bool(exits))
        for _ in range(2):
            client.ping(timeout_s)
        if probe:
            client.echo(probe)
        if replanner is not None:
            adopt(replanner.start(client.link.bandwidth, client.link.rtt_s), replanner.exit_block)
        else:
            devices[:] = split_devices

    def try_back(i: int) -> None:
        nonlocal down
        down["tries"] += 1
        try:
            client.reconnect()
            connect(i, min(RETRY_TIMEOUT_S, cfg.timeout_s))
        except (ServerUnreachable, ConfigError) as exc:  # refused (another model, token): keep trying too
            if isinstance(exc, ConfigError):
                why = str(exc).removeprefix("offload run: ")
                warnings.warn(f"offload run: at request {i} the server answers but cannot be used ({why}); "
                              "staying on the edge and retrying", stacklevel=3)
            down["wait"] = min(2 * down["wait"], RETRY_MAX_S)
            down["next"] = time.perf_counter() + down["wait"]
            return
        reconnects.append({"at_request": i, "down_s": time.perf_counter() - down["since"],
                           "tries": down["tries"]})
        down = None
        warnings.warn(f"offload run: the server answers again at request {i}; back to offloading",
                      stacklevel=3)
        if replanner is not None:
            record(i, "reconnected")

    client: OffloadClient | None = None
    if profile is not None or cfg.split < n:
        client = OffloadClient(cfg.server, cfg.token, cfg.timeout_s, shaper)
        try:
            connect(0)
        except ServerUnreachable as exc:
            try:
                fall_back(0, exc)
            except InfeasibleError:
                client.close()
                raise
    edge = profile.devices[0] if profile is not None else None
    threads = torch.get_num_threads()
    if cfg.emulate_edge and edge is not None:
        torch.set_num_threads(edge.threads)  # once for the run: switching per call costs more than it saves
    latencies, logits, labels = [], [], []
    ends: list[int | None] = []  # per request: the exit it ended at (None: the whole chain)
    by_mode = {"edge-only": 0, "split": 0, "cloud-only": 0}
    probed = started = time.perf_counter()
    started_at = time.time()

    def requests() -> Any:  # one pass, or passes until cfg.duration_s
        while True:
            yield from split.batches(batch_size)
            if cfg.duration_s is None or time.perf_counter() - started >= cfg.duration_s:
                return

    try:
        for i, batch in enumerate(requests()):
            if cfg.limit is not None and sum(len(y) for y in labels) >= cfg.limit:
                break
            if cfg.duration_s is not None and time.perf_counter() - started >= cfg.duration_s:
                break
            if down is not None and client is not None and time.perf_counter() >= down["next"]:
                try_back(i)
            if profile is not None and down is None and i and 1 not in devices:
                due = i % PING_EVERY == 0 or time.perf_counter() - probed > PROBE_EVERY_S
                confirm = client.link.pending is not None  # a jump to confirm: larger than a shaper's burst
                if due or confirm:  # nothing on the server: probe the link
                    try:
                        client.ping()
                        client.echo(min(MIN_PROBE_BYTES, (4 if confirm else 1) * _probe_bytes(client.link)))
                    except ServerUnreachable as exc:
                        fall_back(i, exc)
                    probed = time.perf_counter()
            if replanner is not None and down is None and i:
                change = replanner.check(client.link.bandwidth, client.link.rtt_s)
                if change is not None and change.changed:
                    adopt(replanner.current, replanner.exit_block)
                    record(i, change.reason)
                elif change is not None and not change.held:
                    chosen = replanner.current  # re-costed on the new link
            t0 = time.perf_counter()
            h, now = batch["pixel_values"], list(widths)  # a fallback mid-request keeps its widths and exit
            ran: set[int] = set()
            ends.append(exit_block)
            for start, end, head, device in steps(devices, exit_block):
                out = None
                if device == 1 and down is None:
                    try:
                        if i and i % PING_EVERY == 0:
                            client.ping()
                        out = client.run(start, end, h, now[start:end], head)
                        ran.add(1)
                    except ServerUnreachable as exc:
                        fall_back(i, exc)
                if out is None:
                    t1 = time.perf_counter()
                    out = chain.run(start, end, h, now[start:end], head)
                    ran.add(0)
                    if cfg.emulate_edge and edge is not None:
                        time.sleep((edge.slowdown - 1.0) * (time.perf_counter() - t1))
                h = out
            latencies.append((time.perf_counter() - t0) * 1e3)
            by_mode["split" if ran == {0, 1} else "cloud-only" if ran == {1} else "edge-only"] += 1
            logits.append(h)
            labels.append(batch["labels"])
    finally:
        torch.set_num_threads(threads)
        if client is not None:
            client.close()
    all_logits, all_labels = torch.cat(logits), torch.cat(labels)
    if cfg.limit is not None:
        all_logits, all_labels = all_logits[:cfg.limit], all_labels[:cfg.limit]
    accuracy = measured_accuracy(all_logits, all_labels)
    floor_met = None if cfg.floor is None else accuracy >= cfg.floor
    if floor_met is False:
        predicted = f"predicted {chosen.accuracy:.4f}" if chosen is not None else "planned"
        warnings.warn(f"offload run: measured accuracy {accuracy:.4f} over {len(all_labels)} {cfg.data} test "
                      f"samples is below --floor {cfg.floor:g}; the floor is planned on the profile's val "
                      f"accuracy ({predicted}), not measured on this split — raise --floor for a margin, or "
                      "rebuild with more --epochs", stacklevel=2)
    link = client.link if client is not None else LinkEstimate()
    placement = _placement_dict(chain, widths, devices, names, exit_block)
    if chosen is not None:
        planned = replanner.planned if down is None else None
        placement.update(floor=cfg.floor, exits=[ex.block for ex in exits],
                         predicted_accuracy=chosen.accuracy,
                         predicted_latency_ms=chosen.latency_s * 1e3,
                         link=_link_dict(*planned) if planned is not None else None,
                         devices=[d.to_dict() for d in profile.devices], batch_size=profile.batch_size,
                         emulated_edge=cfg.emulate_edge)
    modes = [m for m, count in by_mode.items() if count]
    return OffloadReport(
        model=cfg.model, server=cfg.server, data=cfg.data, split=cfg.split, blocks=n,
        split_after=chain.names[cfg.split - 1] if cfg.split else None,
        mode=modes[0] if len(modes) == 1 else "mixed",
        fallback=fallbacks[0] if fallbacks else None, samples=len(all_labels), requests=len(latencies),
        batch_size=batch_size, accuracy=accuracy, floor_met=floor_met,
        latency_ms={"p50": float(np.percentile(latencies, 50)), "p95": float(np.percentile(latencies, 95)),
                    "mean": float(np.mean(latencies))},
        bytes_sent=client.bytes_sent if client else 0, bytes_received=client.bytes_received if client else 0,
        rtt_ms=link.rtt_s * 1e3 if link.rtt_s is not None else None,
        bandwidth_mbps=link.bandwidth * 8 / 1e6 if link.bandwidth is not None else None,
        placement=placement, replans=replans, logits=all_logits, requests_by_mode=by_mode,
        probe_bytes={"sent": client.probe_bytes_sent if client else 0,
                     "received": client.probe_bytes_received if client else 0},
        fallbacks=fallbacks, reconnects=reconnects,
        replan_checks=replanner.kept if replanner is not None else 0, started_at=started_at,
        exit_block=exit_block, requests_by_exit=_by_exit(ends))


def measured_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``logits`` ``[N, C]`` against ``labels`` ``[N]``, from the counts (a float32
    mean read 14/20 as 0.69999999, a missed floor of 0.7); 0.0 for no examples."""
    return int((logits.argmax(-1) == labels).sum()) / max(1, len(labels))


def _by_exit(ends: Any) -> dict[str, int]:
    """Requests per end of the chain they ran to: ``"exit-{e}"`` or ``"full"``."""
    out: dict[str, int] = {}
    for e in ends:
        key = "full" if e is None else f"exit-{e}"
        out[key] = out.get(key, 0) + 1
    return out
