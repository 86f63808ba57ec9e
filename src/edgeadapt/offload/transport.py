"""Wire format of the edge/cloud runtime: one tensor per safetensors frame, checked before use.

A frame is the bytes of ``safetensors.torch.save({"x": tensor}, metadata={"edgeadapt": JSON})``:
an 8-byte little-endian header length, the safetensors JSON header (tensor dtype, shape and byte
offsets, plus our own request fields as one JSON string under ``__metadata__``), then the raw
tensor bytes. Nothing is ever unpickled: :func:`decode_frame` parses and checks the header itself
(one tensor named ``x``, an allowed dtype, the expected rank and trailing shape, declared byte size
equal to the payload, no trailing bytes, total under the size limit) before safetensors reads it.

Every refusal is a :class:`FrameError` carrying the gRPC status the server answers with
(``INVALID_ARGUMENT`` for a malformed frame, ``RESOURCE_EXHAUSTED`` for an oversized one,
``UNAUTHENTICATED`` for a bad token); the server turns it into that status and keeps serving.

The per-device token travels in the call metadata (:data:`TOKEN_KEY`) and is compared in constant
time (:func:`check_token`); :func:`read_token` reads it from a file that must be non-empty and not
world-readable.

>>> frame = encode_frame(torch.ones(2, 3), {"start": 1, "end": 4})   # doctest: +SKIP
>>> x, fields = decode_frame(frame, FrameSpec(rank=2, trailing=(3,)))  # doctest: +SKIP
"""

from __future__ import annotations

import hmac
import json
import math
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from edgeadapt.errors import ConfigError, PathError

SERVICE = "edgeadapt.offload.Chain"
"""gRPC service name; methods are ``/{SERVICE}/{Run,Ping,Echo,Info}``, all raw bytes."""

TOKEN_KEY = "x-edgeadapt-token"
"""Call-metadata key of the per-device token (gRPC metadata keys are lower case)."""

FIELDS_KEY = "edgeadapt"
"""Key in the safetensors ``__metadata__`` map holding the request/response fields as JSON."""

TENSOR_NAME = "x"

DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Largest frame accepted (bytes): a batch of activations well above what one request needs."""

MAX_HEADER_BYTES = 64 * 1024
"""Largest safetensors JSON header accepted (bytes); ours are a few hundred."""

ALLOWED_DTYPES: dict[str, torch.dtype] = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
"""safetensors dtype codes the runtime accepts (activations only; no integer or object payloads)."""

_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}


class FrameError(ValueError):
    """A frame or call the server refuses; ``code`` is the gRPC status it answers with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class FrameSpec:
    """What a received tensor must look like: ``rank`` dimensions, the trailing dimensions
    ``trailing`` (all but the batch; ``None`` = any), a batch of at most ``max_batch`` and a frame of
    at most ``max_bytes`` bytes."""

    rank: int | None = None
    trailing: tuple[int, ...] | None = None
    max_batch: int = 4096
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES


def encode_frame(tensor: torch.Tensor, fields: dict[str, Any] | None = None) -> bytes:
    """``tensor`` (any allowed dtype, made contiguous and moved to the CPU) and the JSON-serialisable
    ``fields`` as one safetensors frame."""
    code = next((k for k, v in ALLOWED_DTYPES.items() if v == tensor.dtype), None)
    if code is None:
        raise ValueError(f"dtype {tensor.dtype} cannot travel; allowed: {sorted(ALLOWED_DTYPES)}")
    meta = {FIELDS_KEY: json.dumps(fields or {}, separators=(",", ":"))}
    return st_save({TENSOR_NAME: tensor.detach().cpu().contiguous()}, metadata=meta)


def _invalid(message: str) -> FrameError:
    return FrameError(grpc.StatusCode.INVALID_ARGUMENT, message)


def parse_header(frame: bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES
                 ) -> tuple[str, list[int], dict[str, Any]]:
    """``(dtype code, shape, fields)`` from a frame's header, after checking its framing: size limit,
    header length, one tensor named ``x`` of an allowed dtype, byte offsets that cover exactly the
    payload. Raises :class:`FrameError`."""
    if len(frame) > max_bytes:
        raise FrameError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"frame of {len(frame)} bytes exceeds the limit of {max_bytes} bytes")
    if len(frame) < 8:
        raise _invalid(f"frame of {len(frame)} bytes is shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", frame[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(frame):
        raise _invalid(f"declared header length {n} does not fit a frame of {len(frame)} bytes")
    try:
        header = json.loads(frame[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _invalid(f"frame header is not JSON: {exc}") from None
    except RecursionError:  # "[[[[..." nested past the parser's depth (the fuzz harness found it)
        raise _invalid("frame header nests too deeply") from None
    if not isinstance(header, dict):
        raise _invalid("frame header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if set(header) != {TENSOR_NAME}:
        raise _invalid(f"a frame holds exactly one tensor named {TENSOR_NAME!r}, got {sorted(header)[:4]}")
    entry = header[TENSOR_NAME]
    if not isinstance(entry, dict):
        raise _invalid("tensor entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in ALLOWED_DTYPES:
        raise _invalid(f"dtype {dtype!r} is not allowed; allowed: {sorted(ALLOWED_DTYPES)}")
    if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)):
        raise _invalid(f"malformed shape {shape!r} or data_offsets {offsets!r}")
    declared = math.prod(shape) * _ITEMSIZE[dtype]
    payload = len(frame) - 8 - n
    if offsets != [0, declared] or declared != payload:
        raise _invalid(f"declared size {declared} bytes (shape {shape}, {dtype}; offsets {offsets}) "
                       f"does not equal the payload of {payload} bytes")
    try:
        fields = json.loads(meta.get(FIELDS_KEY, "{}")) if isinstance(meta, dict) else None
    except (json.JSONDecodeError, TypeError, RecursionError) as exc:
        raise _invalid(f"request fields are not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise _invalid("request fields are not a JSON object")
    return dtype, shape, fields


def decode_frame(frame: bytes, spec: FrameSpec = FrameSpec()) -> tuple[torch.Tensor, dict[str, Any]]:
    """The tensor and fields of ``frame``, checked against ``spec`` (rank, trailing shape, batch,
    size) after :func:`parse_header`. Raises :class:`FrameError`."""
    _, shape, fields = parse_header(frame, spec.max_bytes)
    if spec.rank is not None and len(shape) != spec.rank:
        raise _invalid(f"expected a rank-{spec.rank} tensor, got shape {shape}")
    if spec.trailing is not None and tuple(shape[1:]) != tuple(spec.trailing):
        raise _invalid(f"expected shape [batch, {', '.join(map(str, spec.trailing))}], got {shape}")
    if shape and not 1 <= shape[0] <= spec.max_batch:
        raise _invalid(f"batch of {shape[0]} is outside 1..{spec.max_batch}")
    try:
        tensors = st_load(frame)
    except Exception as exc:  # safetensors' own checks, after ours: still the sender's fault
        raise _invalid(f"unreadable safetensors frame: {exc}") from None
    return tensors[TENSOR_NAME], fields


def check_token(metadata: Any, token: bytes) -> None:
    """Raise ``UNAUTHENTICATED`` unless the call metadata carries ``token`` (constant-time compare)."""
    sent = next((v for k, v in (metadata or ()) if k == TOKEN_KEY), None)
    given = sent.encode() if isinstance(sent, str) else (sent or b"")
    if not hmac.compare_digest(given, token):
        raise FrameError(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong device token")


def read_token(path: str | Path, field: str = "--token-file") -> bytes:
    """The token in ``path``, stripped. Refuses a missing file (:class:`PathError`), an empty one,
    one every user may read (``chmod 600`` fixes it) or one that is not printable ASCII without
    spaces (:class:`ConfigError`)."""
    p = Path(path)
    if not p.is_file():
        raise PathError(f"{field}: {p} does not exist or is not a file; write the device token to it "
                        "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))' > F; chmod 600 F`)")
    if p.stat().st_mode & stat.S_IROTH:
        raise ConfigError(f"{field}: {p} is readable by every user; a device token must be private "
                          f"(`chmod 600 {p}`)")
    token = p.read_bytes().strip()
    if not token:
        raise ConfigError(f"{field}: {p} is empty; write the device token to it")
    if not all(33 <= b <= 126 for b in token):  # it travels as gRPC metadata: printable ASCII, no spaces
        raise ConfigError(f"{field}: {p} holds bytes other than printable ASCII; use e.g. a hex token")
    return token
