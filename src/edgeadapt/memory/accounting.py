"""Deterministic peak memory of one call (a training step), the same function on CPU and CUDA.

On CPU there is no allocator to ask, so :func:`measure_peak` counts tensor storages instead: a
``TorchDispatchMode`` sees every op's outputs, records each *new* storage once with its size, and
a weak-reference finaliser on the storage subtracts it when the storage is freed. The running
maximum is the peak. Views share their base's storage, so they are never counted twice. The
number is exact for tensors created through ATen ops and identical from run to run. On CUDA the
caching allocator's ``max_memory_allocated`` is used. Either way the bytes already held by the
model and optimizer (parameters, buffers, existing gradients, optimizer state) are reported
separately as the baseline.

Example::

    out, report = measure_peak(lambda: adapter.task_loss(batch).backward(), modules=[adapter.model])
    print(format_bytes(report.peak_bytes), format_bytes(report.total_bytes))
"""

from __future__ import annotations

import gc
import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from edgeadapt.errors import ConfigError
from edgeadapt.training.device import resolve_device

Method = Literal["auto", "dispatch", "cuda"]


@dataclass(frozen=True)
class MemoryReport:
    """Peak memory of one measured call.

    ``peak_bytes`` excludes ``baseline_bytes``; ``total_bytes`` is what the device must hold.
    """

    peak_bytes: int
    """Peak of live bytes of tensors created during the call (activations, gradients, optimizer
    state created inside), above what was allocated before it."""
    baseline_bytes: int
    """Bytes held before the call by the given modules and optimizer: parameters, buffers,
    existing gradients and optimizer state (unique storages)."""
    device: str
    """``"cpu"`` or ``"cuda:N"``."""
    method: str
    """``"dispatch"`` (storage accounting) or ``"cuda"`` (``torch.cuda.max_memory_allocated``)."""

    @property
    def total_bytes(self) -> int:
        """Baseline plus peak: the memory the measured step needs in all."""
        return self.baseline_bytes + self.peak_bytes

    def __str__(self) -> str:
        return (f"peak {format_bytes(self.peak_bytes)} + baseline {format_bytes(self.baseline_bytes)} "
                f"= {format_bytes(self.total_bytes)} on {self.device} ({self.method})")


def format_bytes(n: int) -> str:
    """Human-readable binary size: ``format_bytes(12_897_484) == "12.3 MiB"``, ``"512 B"``."""
    sign, size = ("-" if n < 0 else ""), float(abs(n))
    if size < 1024:
        return f"{sign}{int(size)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{sign}{size:.1f} {unit}"


_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: int | str) -> int:
    """``"16MiB"`` → 16777216, ``"1.5 GB"`` → 1500000000, ``4096`` → 4096; a clear ``ValueError``
    for anything else."""
    import re

    if isinstance(value, bool):
        raise ConfigError(f"a size must be bytes or a string like '16MiB', got {value!r}")
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    unit = match.group(2).lower() if match else ""
    if not match or (unit and unit not in _UNITS):
        raise ConfigError(f"a size must be bytes or a number with a unit ({', '.join(_UNITS)}), e.g. "
                         f"'16MiB', got {value!r}")
    size = float(match.group(1)) * _UNITS[unit or "b"]
    if size != int(size):
        raise ConfigError(f"a size is a whole number of bytes, got {value!r} = {size:g} bytes; write "
                          f"{int(size):,} or {math.ceil(size):,}, or use a larger unit")
    return int(size)


def _storage(t: torch.Tensor) -> torch.UntypedStorage | None:
    """The tensor's storage, or ``None`` for tensors without real memory (meta, sparse, subclasses)."""
    if not isinstance(t, torch.Tensor) or t.device.type == "meta":
        return None
    try:
        return t.untyped_storage()
    except (NotImplementedError, RuntimeError, TypeError):
        return None


def _state_tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _state_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _state_tensors(v)


def _owned_tensors(modules: Iterable[nn.Module],
                   optimizer: torch.optim.Optimizer | None) -> Iterator[torch.Tensor]:
    params: list[torch.Tensor] = []
    for m in modules:
        params.extend(m.parameters())
        yield from m.buffers()
    if optimizer is not None:
        for group in optimizer.param_groups:
            params.extend(group["params"])
        yield from _state_tensors(list(optimizer.state.values()))
    for p in params:
        yield p
        if p.grad is not None:
            yield p.grad


def _as_modules(modules: Sequence[nn.Module] | nn.Module) -> Sequence[nn.Module]:
    return [modules] if isinstance(modules, nn.Module) else modules


def bytes_of(modules: Sequence[nn.Module] | nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Bytes of the unique storages behind the modules' parameters, buffers and gradients and the
    optimizer's parameters, gradients and state. Tied or shared tensors count once."""
    seen: dict[tuple[str, int], int] = {}
    for t in _owned_tensors(_as_modules(modules), optimizer):
        s = _storage(t)
        if s is not None and s.nbytes() > 0:
            seen[(str(t.device), s.data_ptr())] = s.nbytes()
    return sum(seen.values())


class _StorageAccountant(TorchDispatchMode):
    """Counts live bytes of storages created by ops on one device while active; keeps the maximum.

    A storage is keyed by the identity of its Python object, which torch keeps unique per storage
    for as long as the storage lives (``t.untyped_storage() is t.view(-1).untyped_storage()``), and
    released by a ``weakref.finalize`` on that object, which runs when the storage is freed.
    """

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}
        self._finalizers: dict[int, weakref.finalize] = {}

    def _on_device(self, t: torch.Tensor) -> bool:
        d = t.device
        return d.type == self.device.type and (self.device.index is None or d.index == self.device.index)

    def _release(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)
        self._finalizers.pop(key, None)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        # Outputs aliasing an input (views, in-place and out= ops) allocate nothing new.
        inputs = {id(s) for t in tree_leaves((args, kwargs)) if (s := _storage(t)) is not None}
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            s = _storage(t)
            if s is None or not self._on_device(t):
                continue
            key, nbytes = id(s), s.nbytes()
            if key in self._sizes:  # seen before; a resize_ may have grown it
                self.live += nbytes - self._sizes[key]
                self._sizes[key] = nbytes
            elif key not in inputs and nbytes > 0:
                self._sizes[key] = nbytes
                self.live += nbytes
                self._finalizers[key] = weakref.finalize(s, self._release, key)
        self.peak = max(self.peak, self.live)
        return out

    def close(self) -> None:
        """Stop tracking: storages still alive after the call are no longer followed."""
        for f in self._finalizers.values():
            f.detach()
        self._finalizers.clear()
        self._sizes.clear()


def _check_storage_identity() -> None:
    t = torch.empty(1)
    if t.untyped_storage() is not t.view(1).untyped_storage():  # torch < 2.1 made a new wrapper each time
        raise RuntimeError("storage accounting needs a torch that keeps one Python object per storage "
                           "(torch >= 2.1)")


def _resolve(device: torch.device | str) -> torch.device:
    dev = resolve_device(str(device))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def measure_peak(fn: Callable[[], Any], *, device: torch.device | str = "cpu",
                 modules: Sequence[nn.Module] | nn.Module = (),
                 optimizer: torch.optim.Optimizer | None = None,
                 method: Method = "auto") -> tuple[Any, MemoryReport]:
    """Run ``fn()`` once; return its result and the peak memory it needed on ``device``.

    ``method="auto"`` uses storage accounting on CPU and the CUDA allocator's statistics on CUDA;
    ``"dispatch"`` forces storage accounting on any device. The baseline is :func:`bytes_of` the
    ``modules`` and ``optimizer`` before the call. Python's cyclic garbage collector is paused
    during the call so that frees happen at the same points every run (tensors kept alive only by
    reference cycles then count until the call returns).
    """
    dev = _resolve(device)
    if method == "auto":
        method = "cuda" if dev.type == "cuda" else "dispatch"
    if method not in ("dispatch", "cuda"):
        raise ConfigError(f"method must be 'auto', 'dispatch' or 'cuda', got {method!r}")
    if method == "cuda" and dev.type != "cuda":
        raise ConfigError(f"method 'cuda' needs a CUDA device, got {str(dev)!r}")
    baseline = bytes_of(modules, optimizer)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if method == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev)
            result = fn()
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev) - before
        else:
            _check_storage_identity()
            accountant = _StorageAccountant(dev)
            try:
                with accountant:
                    result = fn()
            finally:
                accountant.close()
            peak = accountant.peak
    finally:
        if was_enabled:
            gc.enable()
    return result, MemoryReport(peak_bytes=int(peak), baseline_bytes=baseline, device=str(dev), method=method)
