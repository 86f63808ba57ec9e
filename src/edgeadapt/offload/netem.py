"""Network emulation for offload benchmarks: a kernel-shaped veth pair, or an application token bucket.

Two ways to put a slow link between the edge and the cloud on one machine:

- :func:`veth_namespaces` (root + iproute2): two network namespaces joined by a veth pair with MTU
  1500, each end shaped by ``tc qdisc ... tbf rate Xmbit burst B latency L``. netem is not
  available on these machines, so round-trip delay is added in the application
  (:class:`TokenBucket`'s ``delay_s``). Run the server with ``ip netns exec NS_B edgeadapt offload
  serve --host IP_B ...`` and the edge in ``NS_A`` against ``IP_B``.
- :class:`TokenBucket`: the same shaping in the process (``rate`` bytes/s, ``burst`` bytes) for
  where namespaces are not available; the offload client takes one as its ``shaper``.

Report the measured effective rate next to the nominal one: tbf at 1, 10, 100 Mbit/s measured
0.98, 9.5, 94 Mbit/s here.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from edgeadapt.errors import ConfigError

T = TypeVar("T")


class TokenBucket:
    """Blocks senders so bytes leave at ``rate`` bytes/s on average, with bursts up to ``burst``
    bytes; ``delay_s`` is added once per :meth:`consume` (one-way propagation delay). Thread-safe.

    >>> bucket = TokenBucket(rate=1.25e6, burst=64_000)   # 10 Mbit/s
    >>> send = bucket.wrap(sock.sendall)                  # doctest: +SKIP
    """

    def __init__(self, rate: float, burst: int, delay_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not rate > 0 or burst < 1 or delay_s < 0:
            raise ConfigError(f"token bucket: rate {rate} bytes/s must be > 0, burst {burst} bytes >= 1, "
                              f"delay {delay_s} s >= 0")
        self.rate, self.burst, self.delay_s = float(rate), int(burst), float(delay_s)
        self._clock, self._sleep = clock, sleep
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def consume(self, n: int) -> float:
        """Wait until ``n`` bytes may leave (a message larger than the burst drains it and waits for
        the rest at ``rate``), then ``delay_s``; returns the seconds waited."""
        with self._lock:  # senders queue in order, as on one link
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate) - n
            self._last = now  # a debt (negative tokens) is repaid by the time that passes, sleep included
            wait = max(0.0, -self._tokens / self.rate)
            if wait > 0:
                self._sleep(wait)
        if self.delay_s > 0:  # propagation: delays this message, not the ones queued behind it
            self._sleep(self.delay_s)
        return wait + self.delay_s

    def wrap(self, send: Callable[[bytes], T]) -> Callable[[bytes], T]:
        """``send`` that first waits for ``len(data)`` tokens."""
        def shaped(data: bytes) -> T:
            self.consume(len(data))
            return send(data)
        return shaped


class SteppedBucket(TokenBucket):
    """A :class:`TokenBucket` whose rate changes on a schedule: ``steps`` are ``(seconds, rate)``
    pairs, each ``seconds`` after the previous step (the first after the first message), switching
    to ``rate`` bytes/s; below the starting rate the burst shrinks to ``max(1500, rate / 100)``
    bytes (a slow link has a short queue). ``changed_at`` holds each step's nominal time
    (``time.time()``, epoch seconds) once it has taken effect: what a re-plan is timed from."""

    def __init__(self, rate: float, burst: int, steps: list[tuple[float, float]],
                 delay_s: float = 0.0) -> None:
        super().__init__(rate, burst, delay_s)
        self.steps, self.start_rate, self.start_burst = list(steps), float(rate), int(burst)
        self.first: float | None = None
        self.changed_at: list[float] = []

    def consume(self, n: int) -> float:
        now = time.time()
        self.first = now if self.first is None else self.first
        while len(self.changed_at) < len(self.steps):
            k = len(self.changed_at)
            due = self.first + sum(seconds for seconds, _ in self.steps[:k + 1])
            if now < due:
                break
            rate = float(self.steps[k][1])
            with self._lock:
                self.rate = rate
                self.burst = self.start_burst if rate >= self.start_rate else max(1500, int(rate / 100))
                self._tokens = min(self._tokens, self.burst)
            self.changed_at.append(due)
        return super().consume(n)


@dataclass(frozen=True)
class NamespacePair:
    """Two namespaces joined by a shaped veth pair: the edge end ``(ns_a, ip_a)`` and the server end
    ``(ns_b, ip_b)``; :meth:`exec` prefixes a command to run inside one of them."""

    ns_a: str
    ns_b: str
    ip_a: str
    ip_b: str
    rate_mbit: float
    dev_a: str = ""
    """The veth end in ``ns_a`` (``{prefix}-va``)."""
    dev_b: str = ""
    """The veth end in ``ns_b`` (``{prefix}-vb``)."""

    @staticmethod
    def exec(ns: str, command: list[str]) -> list[str]:
        """``command`` run inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns, *command]


def _ip(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=10)


def namespaces_available(prefix: str = "ea") -> bool:
    """True when this process may create network namespaces (root and iproute2's ``ip netns``): the
    check :func:`veth_namespaces` needs before it is used, made by adding and deleting a probe
    namespace (10 s timeout each)."""
    name = f"{prefix}-probe-{os.getpid()}"
    try:
        ok = subprocess.run(["ip", "netns", "add", name], capture_output=True, timeout=10).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    if ok:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return ok


@contextmanager
def veth_namespaces(rate_mbit: float, latency_ms: float = 50.0, burst_kbit: int = 64, prefix: str = "ea",
                    subnet: str = "10.231.0") -> Iterator[NamespacePair]:
    """Create namespaces ``{prefix}-a`` and ``{prefix}-b`` joined by veth ``{prefix}-va``/``{prefix}-vb``
    (MTU 1500, addresses ``{subnet}.1``/``{subnet}.2``/24, loopback up), shape both directions with
    ``tc qdisc add dev V root tbf rate {rate_mbit}mbit burst {burst_kbit}kbit latency {latency_ms}ms``,
    yield the :class:`NamespacePair`, and delete both namespaces (and so the veth pair) on exit, even
    after an error. Needs root and iproute2; raises :class:`ConfigError` (with ``ip``'s message)
    when a step fails, after removing what it created. ``latency`` is tbf's queueing limit, not a
    delay: add round-trip delay in the application."""
    if not rate_mbit > 0:
        raise ConfigError(f"veth_namespaces: rate {rate_mbit} Mbit/s must be > 0")
    va, vb = f"{prefix}-va", f"{prefix}-vb"
    pair = NamespacePair(f"{prefix}-a", f"{prefix}-b", f"{subnet}.1", f"{subnet}.2", rate_mbit, va, vb)
    made: list[str] = []
    try:
        for ns in (pair.ns_a, pair.ns_b):
            _ip("ip", "netns", "add", ns)
            made.append(ns)
        _ip("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        for ns, dev, addr in ((pair.ns_a, va, pair.ip_a), (pair.ns_b, vb, pair.ip_b)):
            _ip("ip", "link", "set", dev, "netns", ns)
            _ip("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("ip", "-n", ns, "link", "set", dev, "mtu", "1500", "up")
            _ip("ip", "-n", ns, "link", "set", "lo", "up")
            _ip("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{rate_mbit}mbit",
                "burst", f"{burst_kbit}kbit", "latency", f"{latency_ms}ms")
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
        _delete(made, va)
        detail = getattr(exc, "stderr", None) or str(exc)
        raise ConfigError(f"veth_namespaces: {' '.join(map(str, getattr(exc, 'cmd', []) or []))} failed "
                          f"({detail.strip()}); it needs root and iproute2") from None
    try:
        yield pair
    finally:
        _delete(made, va)


def set_rate(pair: NamespacePair, rate_mbit: float, latency_ms: float = 50.0, burst_kbit: int = 64) -> float:
    """Re-shape both ends of ``pair`` to ``rate_mbit`` (``tc qdisc change ... tbf``), mid-transfer;
    returns the ``time.time()`` at which both ends were changed. Raises :class:`ConfigError` when
    ``tc`` fails."""
    try:
        for ns, dev in ((pair.ns_a, pair.dev_a), (pair.ns_b, pair.dev_b)):
            _ip("tc", "-n", ns, "qdisc", "change", "dev", dev, "root", "tbf", "rate", f"{rate_mbit}mbit",
                "burst", f"{burst_kbit}kbit", "latency", f"{latency_ms}ms")
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"set_rate: tc failed ({getattr(exc, 'stderr', None) or exc})") from None
    return time.time()


def _delete(namespaces: list[str], veth: str) -> None:
    """Remove ``namespaces`` (their veth ends go with them) and a veth left in the root namespace."""
    subprocess.run(["ip", "link", "del", veth], capture_output=True, timeout=10)
    for ns in namespaces:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
