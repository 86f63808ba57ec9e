"""Numerics of half-precision (bf16/fp16) checkpoints: tolerances from the dtype, fp32 compute.

A bf16 or fp16 checkpoint goes through every stage and every artifact keeps its dtype. Two rules
make that work:

- **Self-checks compare within the dtype's rounding.** Wherever edgeadapt checks that two
  computations agree which are equal in exact arithmetic (a LoRA merge, a cast back to the
  checkpoint's dtype), the allowed difference comes from :func:`tolerance`, never a fixed number:
  a fixed ``1e-4`` is 840 float32 epsilons but 1/80 of a bfloat16 epsilon, so it refused every
  bf16 merge (measured 6.5e-3 on a tiny ViT).
- **Compute that accumulates runs in float32.** Training keeps float32 master weights
  (:func:`fp32_master`: an AdamW step of 1e-3 relative is below bf16's resolution of 7.8e-3 and
  would be lost) and the result is rounded back to the checkpoint's dtype once, at the end.

Example::

    rtol, atol = tolerance(torch.bfloat16, depth=12)
    with fp32_master(model):      # half-precision weights are float32 inside the block
        train(model)
    # ... and the checkpoint's dtype again here
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from edgeadapt.errors import ConfigError

HALF = (torch.bfloat16, torch.float16)
# Head room over the measured rounding error (see tolerance); a real error stays far above it.
SAFETY = 16.0
# float32 kernels are not correctly rounded (fused/blocked reductions, erf/exp approximations): a
# trained MiniLM's float32 outputs sit 2.1e-5 of their scale from float64's, 176 float32 epsilons
KERNEL_EPS = 2.0**-16
# float32 matmuls on TF32 tensor cores (torch.set_float32_matmul_precision("high"/"medium")) keep
# 10 mantissa bits
TF32_EPS = 2.0**-10
# torch's names in "... not implemented for 'Half'" -> the dtype a user knows
_KERNEL_DTYPES = {"'Half'": "float16", "'BFloat16'": "bfloat16"}
# safetensors header dtype names -> torch dtypes (the floating ones a checkpoint can hold)
_STORED = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def tolerance(dtype: torch.dtype, depth: int = 1) -> tuple[float, float]:
    """``(rtol, atol)`` for two outputs of a ``depth``-block model that agree up to rounding in
    ``dtype``; compare as ``max|a - b| <= atol + rtol * max|b|`` (:func:`max_error`).

    Why eps times a depth factor: every rounding to ``dtype`` moves a value by at most half its
    machine epsilon (``torch.finfo(dtype).eps``: 1.2e-7 float32, 9.8e-4 float16, 7.8e-3 bfloat16),
    a model rounds a few times per block, and independent roundings add like a random walk, so
    the difference grows with ``sqrt(depth)``; ``SAFETY`` = 16 eps per ``sqrt(depth)`` on top.
    Measured against float64 (LoRA merge and half-vs-float64 forward; tiny ViT and Llama, MiniLM
    random and LoRA-trained): 0.3-8.8 eps in bf16/fp16, within 39 eps (the tolerance at 6 blocks).
    Float32 kernels are not correctly rounded, so float32 (and float64) use at least
    ``KERNEL_EPS`` = 2**-16 (the trained MiniLM is 176 float32 eps from float64), and ``TF32_EPS``
    when float32 matmuls run on TF32 (``torch.get_float32_matmul_precision() != "highest"``).
    A real error stays far above the float32 tolerance (a wrong merge moves outputs by the size of
    the LoRA update, about 10% of their scale; a merge 1% off by 0.3%), so exactness is checked in
    float32 (:func:`fp32_master`) and a rounding to a half dtype separately, at that dtype's.

    Raises ``ValueError`` for a non-floating dtype or a depth below 1.
    """
    if not dtype.is_floating_point:
        raise ValueError(f"tolerance: {dtype} is not a floating-point dtype")
    if depth < 1:
        raise ValueError(f"tolerance: depth must be >= 1, got {depth}")
    eps = torch.finfo(dtype).eps
    if dtype in (torch.float32, torch.float64):
        eps = max(eps, KERNEL_EPS)
        if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
            eps = max(eps, TF32_EPS)
    tol = eps * SAFETY * math.sqrt(depth)
    return tol, tol


def max_error(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
              depth: int = 1) -> tuple[float, float]:
    """``(diff, allowed)``: the largest absolute difference of ``actual`` from ``expected`` and
    what :func:`tolerance` allows for it (relative to ``expected``'s largest magnitude). The check
    passes when ``diff <= allowed``, which is False for a NaN ``diff``."""
    rtol, atol = tolerance(dtype, depth)
    expected = expected.float()
    diff = (actual.float() - expected).abs().max().item()
    return diff, atol + rtol * expected.abs().max().item()


def floating_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s floating-point parameters: a half dtype when any parameter is half
    (the checkpoint's dtype; norms kept in float32 do not count), else float32/float64."""
    dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
    full = torch.float64 if dtypes == {torch.float64} else torch.float32
    return next((d for d in HALF if d in dtypes), full)


def master_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a tensor of ``dtype`` trains in under :func:`fp32_master`: float32 for bf16/fp16,
    else its own (what memory planning must predict a half-precision checkpoint's training at)."""
    return torch.float32 if dtype in HALF else dtype


def _half_tensors(modules: tuple[nn.Module, ...]) -> list[tuple[nn.Module, str, bool, torch.dtype]]:
    """(owner, name, is_parameter, dtype) of every half-precision parameter and buffer."""
    found = []
    for root in modules:
        for m in root.modules():
            found += [(m, n, True, p.dtype) for n, p in m.named_parameters(recurse=False)
                      if master_dtype(p.dtype) != p.dtype]
            found += [(m, n, False, b.dtype) for n, b in m.named_buffers(recurse=False)
                      if b is not None and master_dtype(b.dtype) != b.dtype]
    return found


def _cast(owner: nn.Module, name: str, is_param: bool, dtype: torch.dtype) -> None:
    tensor = getattr(owner, name)
    if is_param:
        tensor.data = tensor.data.to(dtype)  # the same Parameter object: tied weights stay tied
    else:
        setattr(owner, name, tensor.to(dtype))


@contextmanager
def fp32_master(*modules: nn.Module) -> Iterator[None]:
    """Cast every bf16/fp16 parameter and buffer of ``modules`` to float32 for the block, and each
    back to its own dtype on exit (also on an exception). Float32 models pass through untouched.

    Inside, optimizer steps, merges and checks run on float32 master weights; the half-precision
    values convert to float32 exactly, so the only rounding is the one at exit. Tensors are found
    by owner and name, so moving the model to another device inside the block is fine.
    """
    tensors = upcast(*modules)
    try:
        yield
    finally:
        for owner, name, is_param, dtype in tensors:
            _cast(owner, name, is_param, dtype)


def upcast(*modules: nn.Module) -> list[tuple[nn.Module, str, bool, torch.dtype]]:
    """Cast every bf16/fp16 parameter and buffer of ``modules`` to float32 for good (e.g. a
    throwaway copy measured as :func:`fp32_master` would train it); returns what was cast
    (owner, name, is_parameter, original dtype)."""
    tensors = _half_tensors(modules)
    for owner, name, is_param, _ in tensors:
        _cast(owner, name, is_param, torch.float32)
    return tensors


def stored_dtypes(path: str | Path) -> dict[str, torch.dtype]:
    """The floating-point dtype of every tensor in a safetensors file, read from its header only;
    empty for a file whose header cannot be read (the loader then reports what is wrong with it)."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, struct.error, ValueError, MemoryError, OverflowError):
        return {}
    if not isinstance(header, dict):
        return {}
    return {k: _STORED[v["dtype"]] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and v.get("dtype") in _STORED}


def match_stored_dtypes(module: nn.Module, path: str | Path) -> None:
    """Give each floating parameter and buffer of ``module`` the dtype it has in the safetensors
    file ``path`` (by state-dict name), so that loading the file keeps a bf16/fp16 checkpoint in
    its dtype instead of converting it to the freshly built model's float32. Names absent from the
    file (a tied weight saved once) keep their dtype."""
    stored = stored_dtypes(path)
    for m_name, m in module.named_modules():
        prefix = f"{m_name}." if m_name else ""
        for n, p in m.named_parameters(recurse=False):
            if p.is_floating_point() and stored.get(prefix + n, p.dtype) != p.dtype:
                _cast(m, n, True, stored[prefix + n])
        for n, b in m.named_buffers(recurse=False):
            if b is not None and b.is_floating_point() and stored.get(prefix + n, b.dtype) != b.dtype:
                _cast(m, n, False, stored[prefix + n])


def missing_kernel(exc: BaseException, device: torch.device | str) -> ConfigError | None:
    """A :class:`~edgeadapt.errors.ConfigError` naming the dtype and the fix when ``exc`` is torch's
    ``"<op>" not implemented for 'Half'`` (or ``'BFloat16'``): the device has no kernel of that
    dtype for an operation the model uses (some float16 ops on older CPU builds). ``None`` for any
    other error, which then keeps its traceback."""
    text = str(exc)
    dtype = next((name for key, name in _KERNEL_DTYPES.items() if "not implemented for " + key in text), None)
    if dtype is None:
        return None
    where = torch.device(device).type.upper()
    return ConfigError(f"{where} has no {dtype} kernel for an operation this model uses "
                       f"({text.splitlines()[0]}); save the checkpoint in float32 (or bfloat16 on CPU), "
                       "e.g. model.to(torch.float32).save_pretrained(DIR), or run on a CUDA device "
                       "(device: cuda)")
