"""Shared set-up for the offload tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeadapt.data.registry import build_dataset
from edgeadapt.models.registry import load_adapter
from edgeadapt.offload.netem import TokenBucket
from edgeadapt.offload.serve import ServeConfig, load_chain, start_server


def trained_tiny_resnet(epochs: int = 2):
    """tiny-resnet trained ``epochs`` epochs on digits at 32×32 (≈92% test accuracy after two), in
    eval mode, and the digits splits: ``(adapter, splits)``."""
    adapter = load_adapter("tiny-resnet")
    splits = build_dataset("digits", size=32)
    torch.manual_seed(0)
    opt = torch.optim.Adam(adapter.model.parameters(), 3e-3)
    adapter.model.train()
    for epoch in range(epochs):
        for b in splits.train.batches(64, shuffle=True, seed=epoch):
            logits = adapter.model(pixel_values=b["pixel_values"]).logits
            loss = nn.functional.cross_entropy(logits, b["labels"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    adapter.model.eval()
    return adapter, splits


# fixtures for modules that define TOKEN and a module-scoped ``built`` fixture whose first item is a
# built offload directory (``offload build`` output)
@pytest.fixture(scope="module")
def server(built, request):
    """An in-process ``offload serve`` of ``built``'s descendants on a free loopback port, with the
    requesting module's ``TOKEN``; stopped after the module."""
    running = start_server(load_chain(built[0] / "descendants"), request.module.TOKEN, ServeConfig(port=0))
    yield running
    running.stop(grace=0)


@pytest.fixture
def token_file(tmp_path, request):
    """A private (0600) token file holding the requesting module's ``TOKEN``."""
    path = tmp_path / "token"
    path.write_text(request.module.TOKEN.decode())
    path.chmod(0o600)
    return path


class StopAfter(TokenBucket):
    """A link that goes down (``running``, a started server, is stopped and not started again) at
    the ``calls``-th message it shapes."""

    def __init__(self, running, calls: int) -> None:
        super().__init__(rate=1e12, burst=1 << 30)
        self.running, self.left = running, calls

    def consume(self, n: int) -> float:
        self.left -= 1
        if self.left == 0:
            self.running.stop(grace=0)
        return super().consume(n)
