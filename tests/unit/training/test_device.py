"""``device="auto"`` resolves to what exists; impossible requests fail clearly."""

from __future__ import annotations

import pytest
import torch

from edgeadapt.training.device import resolve_device


def test_auto_picks_cuda_only_when_available():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cpu_is_always_fine():
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_without_cuda_is_refused():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_nonsense_device_is_refused():
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("toaster")
