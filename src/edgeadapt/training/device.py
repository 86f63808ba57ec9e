"""Device selection: ``"auto"`` picks CUDA when present, else CPU."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from edgeadapt.errors import ConfigError


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` → ``cuda`` if available else ``cpu``; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use device='auto' or 'cpu'")
    return dev


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def timed(step: Callable[[], object], device: torch.device) -> float:
    """Wall seconds one call of ``step`` takes on ``device``; on CUDA the device is synchronized
    before and after, so queued kernels are counted in the call that launched them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
