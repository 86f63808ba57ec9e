"""Malformed frames against a running offload server: seeded corruptions of one valid ``Run`` frame.

:func:`fuzz_server` sends ``n`` corrupted requests to an ``offload serve`` (in this process or
another), one after another, then one valid request, and reports what came back. Each request is
one of :data:`KINDS`, chosen by a seeded generator:

- ``truncate``: the frame cut at a random byte;
- ``bitflip``: 1–8 random bits flipped (half the time inside the 8-byte length and JSON header);
- ``dtype``: the header's dtype replaced (integer, float64, bool, unknown, a 2-byte float whose
  size no longer matches);
- ``shape``: a well-formed frame of another shape (rank, channels, spatial size, an empty batch);
- ``size``: the declared shape or offsets disagreeing with the payload, or bytes added or removed;
- ``oversize``: a frame just over the server's size limit;
- ``token``: a valid frame with a wrong, empty, missing or over-long token;
- ``header``: garbage in the header (random bytes, non-JSON, a length past the end or of 2⁶³,
  JSON that is not an object, deep nesting, a second tensor);
- ``fields``: the request fields wrong (block range outside the chain, negative or non-integer
  start, end before start, widths not built or of the wrong count, fields that are not JSON, an
  early ``exit`` that is not one of the chain's, not an integer, or not right after the range).

A *crash* is the server not answering (``UNAVAILABLE``/``DEADLINE_EXCEEDED``), answering
``INTERNAL`` (an exception it did not expect: a bug, even though it keeps serving), a process that
exited (``alive``), or a final valid request not answered correctly. Refusals
(``INVALID_ARGUMENT``, ``RESOURCE_EXHAUSTED``, ``UNAUTHENTICATED``) are what is expected; ``OK`` to a
corruption that left a valid frame (a bit flipped inside a float) is counted as ``accepted``.

>>> report = fuzz_server("127.0.0.1:50051", token, frame, expected, n=1000)  # doctest: +SKIP
>>> report.crashes                                                            # doctest: +SKIP
0
"""

from __future__ import annotations

import json
import random
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import torch

from edgeadapt.errors import ConfigError
from edgeadapt.offload.transport import SERVICE, TOKEN_KEY, decode_frame, encode_frame

KINDS = ("truncate", "bitflip", "dtype", "shape", "size", "oversize", "token", "header", "fields")

REFUSED = ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED")
"""Statuses a malformed request is expected to get."""

CRASHED = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN")
"""Statuses that count as a crash: no answer, or an exception the server did not expect."""


@dataclass
class FuzzReport:
    """What :func:`fuzz_server` saw: counts per corruption ``kind`` and per gRPC ``status``, the
    statuses per kind, the ``crashed`` requests (kind, status, detail; the first 20), whether the
    final valid request was answered correctly (``final_ok``, ``final_max_abs_diff``), and the
    wall ``seconds``."""

    frames: int
    seed: int
    by_kind: dict[str, int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    status_by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    accepted: int = 0
    crashed: list[dict[str, str]] = field(default_factory=list)
    crash_count: int = 0
    process_alive: bool | None = None
    final_ok: bool = False
    final_max_abs_diff: float | None = None
    seconds: float = 0.0

    @property
    def crashes(self) -> int:
        """Crashed requests, plus one for a dead process or a wrong final answer."""
        return self.crash_count + (self.process_alive is False) + (not self.final_ok)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "crashes": self.crashes}


def _split(frame: bytes) -> tuple[dict[str, Any], bytes]:
    n = struct.unpack("<Q", frame[:8])[0]
    return json.loads(frame[8:8 + n]), frame[8 + n:]


def _join(header: Any, payload: bytes, raw: bytes | None = None) -> bytes:
    text = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


class Corruptor:
    """Seeded corruptions of ``frame`` (a valid ``Run`` frame whose tensor is ``x`` with fields
    ``fields``); :meth:`make` returns ``(kind, payload, token)`` (``token`` ``None``: send none),
    the kind drawn from ``kinds`` (default every one of :data:`KINDS`)."""

    def __init__(self, frame: bytes, token: bytes, max_frame_bytes: int, seed: int = 0,
                 kinds: Sequence[str] = KINDS) -> None:
        unknown = sorted(set(kinds) - set(KINDS))
        if not kinds or unknown:
            raise ConfigError(f"fuzz kinds must be a non-empty subset of {list(KINDS)}; got {list(kinds)}")
        self.kinds = tuple(kinds)
        self.frame, self.token, self.max_frame_bytes = frame, token, max_frame_bytes
        self.rng = random.Random(seed)
        self.x, self.fields = decode_frame(frame)
        self.header, self.payload = _split(frame)

    def make(self, kind: str | None = None) -> tuple[str, bytes, bytes | None]:
        kind = kind or self.rng.choice(self.kinds)
        return kind, *getattr(self, f"_{kind}")()

    def _h(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.header))

    def _truncate(self) -> tuple[bytes, bytes | None]:
        return self.frame[:self.rng.randrange(len(self.frame))], self.token

    def _bitflip(self) -> tuple[bytes, bytes | None]:
        bad = bytearray(self.frame)
        n = struct.unpack("<Q", self.frame[:8])[0]
        end = 8 + n if self.rng.random() < 0.5 else len(bad)
        for _ in range(self.rng.randint(1, 8)):
            i = self.rng.randrange(end)
            bad[i] ^= 1 << self.rng.randrange(8)
        return bytes(bad), self.token

    def _dtype(self) -> tuple[bytes, bytes | None]:
        h = self._h()
        h["x"]["dtype"] = self.rng.choice(["I64", "I32", "U8", "F64", "BOOL", "F16", "BF16", "F8_E4M3", "x",
                                           7])
        return _join(h, self.payload), self.token

    def _shape(self) -> tuple[bytes, bytes | None]:
        shape = list(self.x.shape)
        choice = self.rng.randrange(5)
        if choice == 0:
            shape = shape + [1]
        elif choice == 1:
            shape = shape[:-1] or [1]
        elif choice == 2:
            shape[min(1, len(shape) - 1)] += self.rng.randint(1, 3)
        elif choice == 3:
            shape[-1] = max(1, shape[-1] + self.rng.choice([-1, 1]))
        else:
            shape[0] = 0
        return encode_frame(torch.zeros(shape), self.fields), self.token

    def _size(self) -> tuple[bytes, bytes | None]:
        h, choice = self._h(), self.rng.randrange(4)
        if choice == 0:
            h["x"]["shape"] = [d * 2 for d in h["x"]["shape"]]
            return _join(h, self.payload), self.token
        if choice == 1:
            start, end = h["x"]["data_offsets"]
            h["x"]["data_offsets"] = [start + self.rng.randint(1, 8), end + self.rng.randint(-8, 8)]
            return _join(h, self.payload), self.token
        if choice == 2:
            return self.frame + bytes(self.rng.randint(1, 64)), self.token
        return _join(h, self.payload[:-self.rng.randint(1, min(64, len(self.payload)))]), self.token

    def _oversize(self) -> tuple[bytes, bytes | None]:
        return self.frame + bytes(self.max_frame_bytes + 1 - len(self.frame)), self.token

    def _token(self) -> tuple[bytes, bytes | None]:
        choice = self.rng.randrange(4)
        if choice == 0:
            return self.frame, None
        if choice == 1:
            return self.frame, b""
        if choice == 2:
            bad = bytearray(self.token)
            bad[self.rng.randrange(len(bad))] ^= 1
            return self.frame, bytes(b if 33 <= b <= 126 else 65 for b in bad)
        return self.frame, self.token * 64

    def _header(self) -> tuple[bytes, bytes | None]:
        choice, rng = self.rng.randrange(7), self.rng
        if choice == 0:
            return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))), self.token
        if choice == 1:
            return _join(None, self.payload, b"{not json" + bytes(rng.randrange(256) for _ in range(16))), \
                self.token
        if choice == 2:
            return struct.pack("<Q", rng.choice([len(self.frame), 2**63, 2**64 - 1])) + self.frame[8:], \
                self.token
        if choice == 3:
            return _join(rng.choice([[], 1, "x", None, [self.header]]), self.payload), self.token
        if choice == 4:
            return _join(None, self.payload, b"[" * 5000 + b"]" * 5000), self.token
        if choice == 5:
            h = self._h()
            h["y"] = dict(h["x"])
            return _join(h, self.payload), self.token
        h = self._h()
        h["__metadata__"] = {"edgeadapt": 5}
        return _join(h, self.payload), self.token

    def _fields(self) -> tuple[bytes, bytes | None]:
        rng, fields = self.rng, dict(self.fields)
        choice = rng.randrange(7)
        if choice == 0:
            fields["start"] = rng.choice([-1, 10**6, "1", 1.5, None, [1]])
        elif choice == 1:
            fields["end"] = rng.choice([-1, 0, 10**6, "x", None])
        elif choice == 2:
            fields["widths"] = rng.choice([[0.33], [1.0] * 50, "1.0", [None], [True], [-1.0]])
        elif choice == 3:
            fields = {k: v for k, v in fields.items() if k != "start"}
        elif choice == 4:
            fields["start"], fields["end"] = fields.get("end", 1), fields.get("start", 0)
        elif choice == 5:
            fields["exit"] = rng.choice([-1, 10**6, "0", 0.5, True, [0], {"e": 0},
                                         int(fields.get("end", 1)) + 3])
        else:
            h = self._h()
            h["__metadata__"] = {"edgeadapt": "{" + "x" * rng.randint(1, 32)}
            return _join(h, self.payload), self.token
        return encode_frame(self.x, fields), self.token


def fuzz_server(address: str, token: bytes, frame: bytes, expected: torch.Tensor, n: int = 1000,
                seed: int = 0, max_frame_bytes: int = 1 << 20, timeout_s: float = 10.0,
                alive: Callable[[], bool] | None = None, atol: float = 1e-5,
                kinds: Sequence[str] = KINDS) -> FuzzReport:
    """Send ``n`` seeded corruptions (:class:`Corruptor`) of the valid ``Run`` frame ``frame`` to the
    server at ``address`` (``HOST:PORT``, token ``token``), then ``frame`` itself, whose answer must
    equal ``expected`` within ``atol``. ``max_frame_bytes`` is the server's limit (the ``oversize``
    frames are one byte over it); ``alive`` tells whether the server process still runs (checked at
    the end); ``kinds`` limits the corruptions to some of :data:`KINDS`. Returns a
    :class:`FuzzReport`; ``report.crashes`` is what must be zero."""
    corrupt = Corruptor(frame, token, max_frame_bytes, seed, kinds)
    report = FuzzReport(frames=n, seed=seed)
    kinds: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    per_kind: dict[str, Counter[str]] = {}
    options = [("grpc.max_send_message_length", 2 * max_frame_bytes + 1024),
               ("grpc.max_receive_message_length", 2 * max_frame_bytes + 1024)]
    t0 = time.perf_counter()
    with grpc.insecure_channel(address, options=options) as channel:
        stub = channel.unary_unary(f"/{SERVICE}/Run")

        def send(payload: bytes, tok: bytes | None) -> tuple[str, str, bytes | None]:
            meta = () if tok is None else ((TOKEN_KEY, tok.decode("ascii", "replace")),)
            try:
                return "OK", "", stub(payload, timeout=timeout_s, metadata=meta)
            except grpc.RpcError as exc:
                return exc.code().name, str(exc.details())[:200], None

        for _ in range(n):
            kind, payload, tok = corrupt.make()
            status, detail, _ = send(payload, tok)
            kinds[kind] += 1
            statuses[status] += 1
            per_kind.setdefault(kind, Counter())[status] += 1
            report.accepted += status == "OK"
            if status in CRASHED:
                report.crash_count += 1
                if len(report.crashed) < 20:
                    report.crashed.append({"kind": kind, "status": status, "detail": detail})
        status, detail, out = send(frame, token)
    if status == "OK":
        y, _ = decode_frame(out)
        if y.shape == expected.shape:
            report.final_max_abs_diff = float((y.float() - expected.float()).abs().max())
            report.final_ok = report.final_max_abs_diff <= atol
    report.process_alive = alive() if alive is not None else None
    report.by_kind, report.by_status = dict(kinds), dict(statuses)
    report.status_by_kind = {k: dict(v) for k, v in per_kind.items()}
    report.seconds = time.perf_counter() - t0
    return report
