"""The edge's gRPC client for a split-inference server (:mod:`edgeadapt.offload.serve`): ``Info``,
``Ping``, ``Echo`` and ``Run`` calls with the per-device token, safetensors frames both ways, and the
link figures measured on real transfers (:class:`LinkEstimate`: round-trip time and bandwidth as
moving averages). An unreachable server raises :class:`ServerUnreachable` (the edge falls back); a
refusal is a :class:`~edgeadapt.errors.ConfigError`.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import torch

from edgeadapt.errors import ConfigError
from edgeadapt.offload.netem import TokenBucket
from edgeadapt.offload.transport import (
    DEFAULT_MAX_FRAME_BYTES,
    SERVICE,
    TOKEN_KEY,
    decode_frame,
    encode_frame,
)

UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
"""Statuses that mean "no server to talk to" (fall back to edge-only) rather than "refused"."""


class ServerUnreachable(RuntimeError):
    """The server did not answer (connection refused or lost, timeout); the edge falls back."""


MIN_SAMPLE_BYTES = 64 * 1024
"""A transfer at least this large (both directions) is timed into the bandwidth estimate."""

MIN_SAMPLE_S = 2e-3
"""A smaller transfer counts only when it took, or the estimate says it should take, this long
(seconds): a few KiB on loopback take microseconds, and their timing is scheduler noise (one such
call reads 230, the next 7000 Mbit/s)."""

JUMP_FACTOR = 3.0
"""A sample this far from the estimate (either way) is a jump: the edge probes again soon to confirm it."""

WINDOW = 3
"""Transfers whose median the estimate follows: one outlier (a scheduler hiccup of a few ms on a fast
link, a small frame riding a shaper's burst on a slow one) is ignored; two in a row are a new link."""


@dataclass
class LinkEstimate:
    """The round-trip time (s) as an exponential moving average, and the bandwidth (bytes/s) as the
    inverse of a smoothed transfer time per byte, from real calls; ``alpha`` is the weight of the
    newest sample. ``None`` until first measured.

    Only measurable transfers feed the bandwidth (:data:`MIN_SAMPLE_BYTES`, :data:`MIN_SAMPLE_S`);
    each is first put through a median of the last :data:`WINDOW` samples (so one outlier never
    moves the estimate), whose value is averaged — or, when it moved by more than
    :data:`JUMP_FACTOR`, taken as it is: a real change of link shows after two samples, both ways
    (averaging alone takes some twenty samples to follow a thousandfold recovery)."""

    alpha: float = 0.3
    rtt_s: float | None = None
    bandwidth: float | None = None
    samples: int = 0
    min_rtt_s: float | None = None
    """The smallest round trip seen: the propagation part of a call, subtracted from transfer times
    (the moving average also holds queueing and scheduling noise, which would make them negative)."""
    seconds_per_byte: float | None = None
    """The smoothed transfer time per byte behind :attr:`bandwidth` (its inverse): what a plan's cost
    adds up."""
    recent: list[float] = field(default_factory=list)
    """Seconds per byte of the last :data:`WINDOW` measurable transfers."""
    pending: float | None = None
    """Seconds per byte of the last sample when it was a jump from the estimate (:data:`JUMP_FACTOR`)
    not yet reflected in it; the edge probes again soon while it is set."""
    ignored: int = 0
    """Transfers too small or too short to time (not folded in)."""

    def observe_rtt(self, seconds: float) -> None:
        self.rtt_s = seconds if self.rtt_s is None else (1 - self.alpha) * self.rtt_s + self.alpha * seconds
        self.min_rtt_s = seconds if self.min_rtt_s is None else min(self.min_rtt_s, seconds)

    def observe_transfer(self, nbytes: int, seconds: float) -> bool:
        """Fold in a transfer of ``nbytes`` (both directions) that took ``seconds`` on the wire, when
        it is measurable: at least :data:`MIN_SAMPLE_BYTES`, or :data:`MIN_SAMPLE_S` long as taken
        or as the estimate predicts (a small frame that should have taken 10 ms and took 10 µs shows
        a faster link; its time is floored at 50 µs). Returns whether it was folded in."""
        expected = nbytes * self.seconds_per_byte if self.seconds_per_byte is not None else 0.0
        if nbytes <= 0 or not (nbytes >= MIN_SAMPLE_BYTES or seconds >= MIN_SAMPLE_S
                               or expected >= MIN_SAMPLE_S):
            self.ignored += 1
            return False
        spb, old = max(seconds, 5e-5) / nbytes, self.seconds_per_byte
        self.recent = [*self.recent, spb][-WINDOW:] if self.recent else [spb] * WINDOW  # the first fills it
        med = statistics.median(self.recent)
        moved = old is not None and not 1 / JUMP_FACTOR <= med / old <= JUMP_FACTOR
        self.seconds_per_byte = med if old is None or moved else (1 - self.alpha) * old + self.alpha * med
        jump = not 1 / JUMP_FACTOR <= spb / self.seconds_per_byte <= JUMP_FACTOR
        self.pending = spb if jump else None
        self.bandwidth = 1.0 / self.seconds_per_byte
        self.samples += 1
        return True


class OffloadClient:
    """Raw-bytes gRPC calls to an offload server, each with ``timeout_s`` and the device token;
    ``shaper`` (a :class:`~edgeadapt.offload.netem.TokenBucket`) emulates a slower link by delaying
    each request and response by its size. Unreachable → :class:`ServerUnreachable`; refused →
    :class:`ConfigError`. ``bytes_sent``/``bytes_received`` count ``Run`` frames (the payload),
    ``probe_bytes_sent``/``probe_bytes_received`` the ``Info``, ``Ping`` and ``Echo`` calls."""

    def __init__(self, server: str, token: bytes, timeout_s: float = 10.0, shaper: TokenBucket | None = None,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.server, self.timeout_s, self.shaper = server, timeout_s, shaper
        self.metadata = ((TOKEN_KEY, token.decode()),)
        self.link = LinkEstimate()
        self.bytes_sent = self.bytes_received = 0
        self.probe_bytes_sent = self.probe_bytes_received = 0
        self.max_frame_bytes = max_frame_bytes
        self._open()

    def _open(self) -> None:
        self.channel = grpc.insecure_channel(self.server, options=[
            ("grpc.max_receive_message_length", self.max_frame_bytes),
            ("grpc.max_send_message_length", self.max_frame_bytes)])
        self._methods = {m: self.channel.unary_unary(f"/{SERVICE}/{m}")
                         for m in ("Run", "Ping", "Echo", "Info")}

    def reconnect(self) -> None:
        """A fresh channel to the same address (a channel that saw the server go keeps backing off
        its own reconnects for up to minutes; a new one connects as soon as a server listens)."""
        self.channel.close()
        self._open()

    def call(self, method: str, payload: bytes, timeout_s: float | None = None) -> bytes:
        """One call of ``method`` with ``payload`` (``timeout_s``: this call's, default the
        client's); counts bytes — ``Run`` frames as payload, the rest as probes — and applies the
        shaper."""
        if self.shaper is not None:
            self.shaper.consume(len(payload))
        try:
            out = self._methods[method](payload, timeout=timeout_s or self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as exc:
            code, detail = exc.code(), exc.details()
            if code in UNREACHABLE:
                raise ServerUnreachable(f"{self.server}: {code.name} ({detail})") from None
            hint = " (check --token-file)" if code == grpc.StatusCode.UNAUTHENTICATED else ""
            raise ConfigError(f"offload run: the server at {self.server} refused {method}: {code.name}: "
                              f"{detail}{hint}") from None
        if self.shaper is not None:
            self.shaper.consume(len(out))
        if method == "Run":
            self.bytes_sent += len(payload)
            self.bytes_received += len(out)
        else:
            self.probe_bytes_sent += len(payload)
            self.probe_bytes_received += len(out)
        return out

    def info(self) -> dict[str, Any]:
        """What the server serves: ``{"model", "blocks", "names", "widths", "weights_hash", "exits",
        "exits_hash"}`` (a server from before exits sends no ``exits``/``exits_hash``)."""
        return json.loads(self.call("Info", b""))

    def ping(self, timeout_s: float | None = None) -> float:
        """One round trip (seconds), folded into :attr:`link`."""
        t0 = time.perf_counter()
        self.call("Ping", b"", timeout_s)
        rtt = time.perf_counter() - t0
        self.link.observe_rtt(rtt)
        return rtt

    def echo(self, nbytes: int) -> float:
        """Send ``nbytes`` and get them back; the bandwidth (bytes/s) it shows, folded into :attr:`link`."""
        t0 = time.perf_counter()
        self.call("Echo", bytes(nbytes))
        wire = time.perf_counter() - t0 - (self.link.min_rtt_s or 0.0)
        self.link.observe_transfer(2 * nbytes, wire)
        return 2 * nbytes / max(wire, 1e-9)

    def run(self, start: int, end: int, x: torch.Tensor, widths: Sequence[float] | None = None,
            exit_block: int | None = None) -> torch.Tensor:
        """Blocks ``[start, end)`` on the server, at ``widths`` (one per block; ``None``: full width),
        then its exit head after block ``exit_block`` when given (``end == exit_block + 1``; the
        result is that exit's logits). The call updates :attr:`link`'s bandwidth: bytes both ways
        over the call time less the server's compute and the smallest round trip seen."""
        fields: dict[str, Any] = {"start": start, "end": end}
        if widths is not None:
            fields["widths"] = [float(w) for w in widths]
        if exit_block is not None:
            fields["exit"] = int(exit_block)
        frame = encode_frame(x, fields)
        t0 = time.perf_counter()
        out = self.call("Run", frame)
        elapsed = time.perf_counter() - t0
        y, fields = decode_frame(out)
        compute = float(fields.get("compute_ms", 0.0)) / 1e3
        self.link.observe_transfer(len(frame) + len(out), elapsed - compute - (self.link.min_rtt_s or 0.0))
        return y

    def close(self) -> None:
        self.channel.close()
