"""The edge side of split inference: run blocks ``[0, K)`` here, send the activation, get logits back.

``edgeadapt offload run --model M --server H:P --token-file F --split K`` evaluates ``M`` on a
dataset's test split, batch after batch (requests one after another), with blocks ``[0, K)`` on this
machine and ``[K, n)`` on the server (:mod:`edgeadapt.offload.serve`). ``K = n`` is edge-only,
``K = 0`` sends the raw images (cloud-only). The link is measured on the real transfers: round-trip
time from ``Ping`` (every few requests), bandwidth from an ``Echo`` probe and then from every ``Run``
(bytes both ways over the call time less the server's compute and the smallest round trip), both as
exponential moving averages (:class:`LinkEstimate`).

When the server is unreachable (nothing listens, the connection drops, a call times out) the edge
falls back to running every block itself, and the report says so (``fallback``); a server that
answers but refuses (bad token, another model, a frame too large) is a user error
(:class:`~edgeadapt.errors.ConfigError`), not a fallback.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import numpy as np
import torch

from edgeadapt.data.registry import build_dataset, dataset_info, options_at_size
from edgeadapt.errors import ConfigError
from edgeadapt.offload.netem import TokenBucket
from edgeadapt.offload.serve import RuntimeChain, load_chain
from edgeadapt.offload.transport import (
    DEFAULT_MAX_FRAME_BYTES,
    SERVICE,
    TOKEN_KEY,
    decode_frame,
    encode_frame,
)

UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
"""Statuses that mean "no server to talk to" (fall back to edge-only) rather than "refused"."""


PING_EVERY = 10
"""Requests between two ``Ping`` calls that keep the round-trip estimate current."""


class ServerUnreachable(RuntimeError):
    """The server did not answer (connection refused or lost, timeout); the edge falls back."""


@dataclass
class LinkEstimate:
    """Exponential moving averages of the round-trip time (s) and bandwidth (bytes/s) measured on
    real calls; ``alpha`` is the weight of the newest sample. ``None`` until first measured."""

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

    def observe_transfer(self, nbytes: int, seconds: float) -> None:
        """A transfer of ``nbytes`` (both directions) that took ``seconds`` on the wire; ignored when
        too short to time (under 50 µs)."""
        if seconds < 5e-5 or nbytes <= 0:
            return
        rate = nbytes / seconds
        old = self.bandwidth
        self.bandwidth = rate if old is None else (1 - self.alpha) * old + self.alpha * rate
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

    def run(self, start: int, end: int, x: torch.Tensor) -> torch.Tensor:
        """Blocks ``[start, end)`` on the server. The call updates :attr:`link`'s bandwidth: bytes both
        ways over the call time less the server's compute and the smallest round trip seen."""
        frame = encode_frame(x, {"start": start, "end": end})
        t0 = time.perf_counter()
        out = self.call("Run", frame)
        elapsed = time.perf_counter() - t0
        y, fields = decode_frame(out)
        compute = float(fields.get("compute_ms", 0.0)) / 1e3
        self.link.observe_transfer(len(frame) + len(out), elapsed - compute - (self.link.min_rtt_s or 0.0))
        return y

    def close(self) -> None:
        self.channel.close()


@dataclass(frozen=True)
class OffloadRunConfig:
    """One ``offload run``: the model, the server, the split and the data."""

    model: str
    server: str
    token: bytes = field(repr=False)
    split: int
    data: str = "digits"
    batch_size: int = 32
    limit: int | None = None
    """Evaluate at most this many test samples (``None`` = all)."""
    timeout_s: float = 10.0
    """Per-call timeout; a call past it counts as the server being unreachable."""
    probe_bytes: int = 256 * 1024
    """Size of the ``Echo`` probe that gives the first bandwidth estimate (0 = none)."""


@dataclass
class OffloadReport:
    """What ``offload run`` prints: accuracy, latency per request (ms), bytes, the split, the link."""

    model: str
    server: str
    data: str
    split: int
    blocks: int
    split_after: str | None
    mode: str
    fallback: dict[str, Any] | None
    samples: int
    requests: int
    batch_size: int
    accuracy: float
    latency_ms: dict[str, float]
    bytes_sent: int
    bytes_received: int
    rtt_ms: float | None
    bandwidth_mbps: float | None
    logits: torch.Tensor | None = field(default=None, repr=False)
    """Every sample's logits in dataset order (``[N, classes]``), kept for checks; not in :meth:`to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "logits"}

    def summary(self) -> str:
        lat = self.latency_ms
        lines = [f"{self.model} on {self.data}: accuracy {self.accuracy:.4f} over {self.samples} samples "
                 f"({self.requests} requests of {self.batch_size})",
                 f"split after block {self.split}/{self.blocks} ({self.split_after or 'input'}), "
                 f"mode {self.mode}"
                 + (f" — fell back to edge-only at request {self.fallback['at_request']}: "
                    f"{self.fallback['reason']}" if self.fallback else ""),
                 f"latency p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms; sent {self.bytes_sent:,} bytes, "
                 f"received {self.bytes_received:,}"]
        if self.rtt_ms is not None:
            bw = f"{self.bandwidth_mbps:.1f} Mbit/s" if self.bandwidth_mbps is not None else "not measured"
            lines.append(f"link: rtt {self.rtt_ms:.2f} ms, bandwidth {bw} (moving averages)")
        return "\n".join(lines)


def _test_split(name: str, chain: RuntimeChain) -> Any:
    """The test split of dataset ``name`` at the model's input size; refuses a non-image dataset or
    one whose class count differs from the model's logits."""
    if dataset_info(name).task != "image-classification":
        raise ConfigError(f"--data: {name!r} is not an image-classification dataset")
    size = chain.input_shapes[0][-1]
    split = build_dataset(name, **options_at_size(name, {}, size, "--data")).test
    classes = chain.input_shapes[-1][0]
    if len(split.classes) != classes:
        raise ConfigError(f"--data: {name!r} has {len(split.classes)} classes but the model has "
                          f"{classes} outputs")
    return split


def run_offload(cfg: OffloadRunConfig, shaper: TokenBucket | None = None,
                chain: RuntimeChain | None = None) -> OffloadReport:
    """Evaluate ``cfg.model`` split after block ``cfg.split`` between this process and ``cfg.server``;
    ``chain`` is the edge's copy when already loaded (else :func:`load_chain` of ``cfg.model``), and
    ``shaper`` emulates a slower link.
    Raises :class:`ConfigError` for a split outside ``0..n``, a server that refuses or serves other
    weights; an unreachable server is a fallback to edge-only, recorded in the report."""
    check_address(cfg.server)
    if not cfg.timeout_s > 0:
        raise ConfigError(f"--timeout {cfg.timeout_s}: give a positive number of seconds")
    chain = chain if chain is not None else load_chain(cfg.model)
    n = len(chain)
    if not 0 <= cfg.split <= n:
        blocks = ", ".join(f"{i + 1}={name}" for i, name in enumerate(chain.names))
        raise ConfigError(f"--split {cfg.split}: the model has {n} blocks; give 0 (cloud-only) to {n} "
                          f"(edge-only); K runs blocks 1..K on the edge: {blocks}")
    split = _test_split(cfg.data, chain)
    client: OffloadClient | None = None
    fallback: dict[str, Any] | None = None
    if cfg.split < n:
        client = OffloadClient(cfg.server, cfg.token, cfg.timeout_s, shaper)
        try:
            _check_server(client.info(), chain, cfg.server)
            for _ in range(3):
                client.ping()
            if cfg.probe_bytes:
                client.echo(cfg.probe_bytes)
        except ServerUnreachable as exc:
            fallback = {"reason": str(exc), "at_request": 0}
    latencies, logits, labels = [], [], []
    for i, batch in enumerate(split.batches(cfg.batch_size)):
        if cfg.limit is not None and sum(len(y) for y in labels) >= cfg.limit:
            break
        t0 = time.perf_counter()
        h = chain.run(0, cfg.split, batch["pixel_values"])
        out = None
        if client is not None and fallback is None:
            try:
                if i and i % PING_EVERY == 0:
                    client.ping()
                out = client.run(cfg.split, n, h)
            except ServerUnreachable as exc:
                fallback = {"reason": str(exc), "at_request": i}
        if out is None:
            out = chain.run(cfg.split, n, h)
        latencies.append((time.perf_counter() - t0) * 1e3)
        logits.append(out)
        labels.append(batch["labels"])
    if client is not None:
        client.close()
    all_logits, all_labels = torch.cat(logits), torch.cat(labels)
    if cfg.limit is not None:
        all_logits, all_labels = all_logits[:cfg.limit], all_labels[:cfg.limit]
    link = client.link if client is not None else LinkEstimate()
    return OffloadReport(
        model=cfg.model, server=cfg.server, data=cfg.data, split=cfg.split, blocks=n,
        split_after=chain.names[cfg.split - 1] if cfg.split else None,
        mode=("edge-only" if client is None or fallback is not None
              else "cloud-only" if cfg.split == 0 else "split"),
        fallback=fallback, samples=len(all_labels), requests=len(latencies), batch_size=cfg.batch_size,
        accuracy=float((all_logits.argmax(-1) == all_labels).float().mean()),
        latency_ms={"p50": float(np.percentile(latencies, 50)), "p95": float(np.percentile(latencies, 95)),
                    "mean": float(np.mean(latencies))},
        bytes_sent=client.bytes_sent if client else 0, bytes_received=client.bytes_received if client else 0,
        rtt_ms=link.rtt_s * 1e3 if link.rtt_s is not None else None,
        bandwidth_mbps=link.bandwidth * 8 / 1e6 if link.bandwidth is not None else None,
        logits=all_logits)


def check_address(server: str, field: str = "--server") -> None:
    """Refuse (:class:`ConfigError`) an address that is not ``HOST:PORT`` with a port in 1..65535
    (``[::1]:P`` for IPv6)."""
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{field}: {server!r} is not HOST:PORT (e.g. 127.0.0.1:50051, [::1]:50051)")


def _check_server(info: dict[str, Any], chain: RuntimeChain, server: str) -> None:
    """Refuse a server whose chain is not this one (block count or weights differ)."""
    if info.get("blocks") != len(chain) or info.get("weights_hash") != chain.weights_hash:
        raise ConfigError(f"offload run: the server at {server} serves {info.get('model')!r} "
                          f"({info.get('blocks')} blocks, weights {str(info.get('weights_hash'))[:12]}) but "
                          f"this edge runs {chain.name!r} ({len(chain)} blocks, weights "
                          f"{chain.weights_hash[:12]}); "
                          "serve and run the same model")
