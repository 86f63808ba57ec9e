"""The edge's gRPC client for a split-inference server (:mod:`edgeadapt.offload.serve`): ``Info``,
``Ping``, ``Echo`` and ``Run`` calls with the per-device token, safetensors frames both ways, and the
link figures measured on real transfers (:class:`LinkEstimate`: round-trip time and bandwidth as
moving averages). An unreachable server raises :class:`ServerUnreachable` (the edge falls back); a
refusal is a :class:`~edgeadapt.errors.ConfigError`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass
class LinkEstimate:
    """Exponential moving averages of the round-trip time (s) and of the transfer time per byte
    (whose inverse is ``bandwidth``, bytes/s) measured on real calls; ``alpha`` is the weight of the
    newest sample. ``None`` until first measured."""

    alpha: float = 0.3
    rtt_s: float | None = None
    bandwidth: float | None = None
    samples: int = 0
    min_rtt_s: float | None = None
    """The smallest round trip seen: the propagation part of a call, subtracted from transfer times
    (the moving average also holds queueing and scheduling noise, which would make them negative)."""

    def observe_rtt(self, seconds: float) -> None:
        self.rtt_s = seconds if self.rtt_s is None else (1 - self.alpha) * self.rtt_s + self.alpha * seconds
        self.min_rtt_s = seconds if self.min_rtt_s is None else min(self.min_rtt_s, seconds)

    seconds_per_byte: float | None = None
    """The moving average behind :attr:`bandwidth` (its inverse): transfer time per byte is what a
    plan's cost adds up, and averaging it (not the rate) makes a drop to a slow link show at once —
    one 0.8 Mbit/s sample after many at 6 Gbit/s gives 2.7 Mbit/s, where averaging rates took 25
    samples to get there — while a recovery shows over a few samples."""

    def observe_transfer(self, nbytes: int, seconds: float) -> None:
        """A transfer of ``nbytes`` (both directions) that took ``seconds`` on the wire; ignored when
        too short to time (under 50 µs)."""
        if seconds < 5e-5 or nbytes <= 0:
            return
        spb, old = seconds / nbytes, self.seconds_per_byte
        self.seconds_per_byte = spb if old is None else (1 - self.alpha) * old + self.alpha * spb
        self.bandwidth = 1.0 / self.seconds_per_byte
        self.samples += 1


class OffloadClient:
    """Raw-bytes gRPC calls to an offload server, each with ``timeout_s`` and the device token;
    ``shaper`` (a :class:`~edgeadapt.offload.netem.TokenBucket`) emulates a slower link by delaying
    each request and response by its size. Unreachable → :class:`ServerUnreachable`; refused →
    :class:`ConfigError`."""

    def __init__(self, server: str, token: bytes, timeout_s: float = 10.0, shaper: TokenBucket | None = None,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.server, self.timeout_s, self.shaper = server, timeout_s, shaper
        self.metadata = ((TOKEN_KEY, token.decode()),)
        self.link = LinkEstimate()
        self.bytes_sent = self.bytes_received = 0
        self.channel = grpc.insecure_channel(server, options=[
            ("grpc.max_receive_message_length", max_frame_bytes),
            ("grpc.max_send_message_length", max_frame_bytes)])
        self._methods = {m: self.channel.unary_unary(f"/{SERVICE}/{m}")
                         for m in ("Run", "Ping", "Echo", "Info")}

    def call(self, method: str, payload: bytes) -> bytes:
        """One call of ``method`` with ``payload``; counts bytes and applies the shaper."""
        if self.shaper is not None:
            self.shaper.consume(len(payload))
        try:
            out = self._methods[method](payload, timeout=self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as exc:
            code, detail = exc.code(), exc.details()
            if code in UNREACHABLE:
                raise ServerUnreachable(f"{self.server}: {code.name} ({detail})") from None
            hint = " (check --token-file)" if code == grpc.StatusCode.UNAUTHENTICATED else ""
            raise ConfigError(f"offload run: the server at {self.server} refused {method}: {code.name}: "
                              f"{detail}{hint}") from None
        if self.shaper is not None:
            self.shaper.consume(len(out))
        self.bytes_sent += len(payload)
        self.bytes_received += len(out)
        return out

    def info(self) -> dict[str, Any]:
        """What the server serves: ``{"model", "blocks", "names", "weights_hash"}``."""
        return json.loads(self.call("Info", b""))

    def ping(self) -> float:
        """One round trip (seconds), folded into :attr:`link`."""
        t0 = time.perf_counter()
        self.call("Ping", b"")
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

    def run(self, start: int, end: int, x: torch.Tensor,
            widths: Sequence[float] | None = None) -> torch.Tensor:
        """Blocks ``[start, end)`` on the server, at ``widths`` (one per block; ``None``: full width).
        The call updates :attr:`link`'s bandwidth: bytes both ways over the call time less the
        server's compute and the smallest round trip seen."""
        fields: dict[str, Any] = {"start": start, "end": end}
        if widths is not None:
            fields["widths"] = [float(w) for w in widths]
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
