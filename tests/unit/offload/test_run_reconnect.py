"""After a fallback the edge retries the server with backoff and resumes offloading when it answers
again (a server stopped and restarted on the same port); the report counts requests per mode and
separates link probes from payload bytes."""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch

from edgeadapt.data.registry import build_dataset
from edgeadapt.models.registry import load_adapter
from edgeadapt.offload.netem import TokenBucket
from edgeadapt.offload.run import OffloadRunConfig, run_offload
from edgeadapt.offload.serve import ServeConfig, load_chain, start_server

TOKEN = b"reconnect-token-0123"


class RestartAfter(TokenBucket):
    """A link whose server stops at the ``calls``-th message and is started again, on the same port,
    ``down_s`` seconds later (in another thread), serving ``chain``."""

    def __init__(self, chain, port: int, calls: int, down_s: float) -> None:
        super().__init__(rate=1e12, burst=1 << 30)
        self.chain, self.port, self.left, self.down_s = chain, port, calls, down_s
        self.servers = []

    def start(self) -> None:
        self.servers.append(start_server(self.chain, TOKEN, ServeConfig(port=self.port)))

    def consume(self, n: int) -> float:
        self.left -= 1
        if self.left == 0:
            self.servers[-1].stop(grace=0)
            threading.Timer(self.down_s, self.start).start()
        return super().consume(n)


def run_with_restart(chain, restarted_chain, down_at: int, down_s: float, duration_s: float):
    """Run split 2 against a server serving ``chain`` that stops at request ``down_at`` (10 probe
    messages, then 2 per request) and comes back ``down_s`` later serving ``restarted_chain``;
    returns the report and the warnings raised."""
    first = start_server(chain, TOKEN, ServeConfig(port=0))
    link = RestartAfter(restarted_chain, first.port, calls=10 + 2 * down_at + 1, down_s=down_s)
    link.servers.append(first)
    cfg = OffloadRunConfig("tiny-resnet", f"127.0.0.1:{first.port}", TOKEN, split=2, batch_size=32,
                           duration_s=duration_s, timeout_s=2.0)
    try:
        with pytest.warns(UserWarning) as caught:
            report = run_offload(cfg, link, chain=chain)
    finally:
        for s in link.servers:
            s.stop(grace=0)
    return report, [str(w.message) for w in caught]


def test_a_server_stopped_and_restarted_on_the_same_port_is_reconnected_and_split_resumes():
    adapter = load_adapter("tiny-resnet")
    chain = load_chain(adapter)
    report, messages = run_with_restart(chain, chain, down_at=5, down_s=0.2, duration_s=2.5)
    assert any("unreachable at request 5" in m for m in messages), messages
    assert any("answers again" in m for m in messages), messages
    assert [f["at_request"] for f in report.fallbacks] == [5] and report.fallback == report.fallbacks[0]
    assert len(report.reconnects) == 1 and report.reconnects[0]["down_s"] < 2.0
    back = report.reconnects[0]["at_request"]
    modes = report.requests_by_mode
    assert modes["edge-only"] == back - 5 and modes["split"] == report.requests - (back - 5) > 5  # resumed
    assert report.mode == "mixed" and "back on the server" in report.summary()
    # every request, whichever way it ran, gives the model's logits (the test split, cycled)
    images = build_dataset("digits", size=32).test.images
    with torch.no_grad():
        local = adapter.model(pixel_values=images).logits
    idx = torch.arange(report.samples) % len(images)
    torch.testing.assert_close(report.logits, local[idx], atol=1e-5, rtol=0)


def test_split_payload_bytes_are_the_frames_and_probes_are_counted_apart():
    chain = load_chain("tiny-resnet")
    running = start_server(chain, TOKEN, ServeConfig(port=0))
    server = f"127.0.0.1:{running.port}"
    try:
        cfg = OffloadRunConfig("tiny-resnet", server, TOKEN, split=1, limit=64, probe_bytes=4096)
        split = run_offload(cfg, chain=chain)
    finally:
        running.stop(grace=0)
    assert split.mode == "split" and split.requests_by_mode == {"edge-only": 0, "split": 2, "cloud-only": 0}
    frame = 32 * 4 * math.prod(chain.input_shapes[1])  # 32 activations leaving block 1, float32
    assert 2 * frame < split.bytes_sent < 2 * frame + 2048  # two frames and their headers
    assert split.probe_bytes["sent"] >= 4096 and split.probe_bytes["received"] >= 4096
    assert "link probes sent" in split.summary()


def test_retries_back_off_while_nothing_listens(monkeypatch):
    from edgeadapt.offload import run as offload_run

    chain = load_chain("tiny-resnet")
    tries = []
    real = offload_run.OffloadClient.reconnect

    def counted(self):
        tries.append(time.perf_counter())
        real(self)

    monkeypatch.setattr(offload_run.OffloadClient, "reconnect", counted)
    monkeypatch.setattr(offload_run, "RETRY_FIRST_S", 0.1)
    monkeypatch.setattr(offload_run, "RETRY_MAX_S", 0.4)
    cfg = OffloadRunConfig("tiny-resnet", "127.0.0.1:1", TOKEN, split=2, batch_size=8, duration_s=2.0)
    with pytest.warns(UserWarning, match="unreachable"):
        report = run_offload(cfg, chain=chain)
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert report.mode == "edge-only" and report.reconnects == [] and len(tries) >= 4
    assert gaps[0] >= 0.19 and all(g <= 0.6 for g in gaps) and gaps[-1] >= 0.39  # 0.2, 0.4, 0.4, ...


def test_a_server_back_with_other_weights_is_not_used_and_the_run_stays_on_the_edge():
    adapter = load_adapter("tiny-resnet")
    chain = load_chain(adapter)
    other = load_adapter("tiny-resnet")
    with torch.no_grad():
        next(other.model.parameters()).add_(1.0)
    report, messages = run_with_restart(chain, load_chain(other), down_at=2, down_s=0.1, duration_s=1.5)
    assert any("serve and run the same model" in m for m in messages)
    refused = [m for m in messages if "cannot be used" in m]  # before: "answers but offload run: the server"
    assert refused and not any("offload run: the server at" in m for m in refused)
    assert all(m.count("offload run:") == 1 for m in refused)
    assert report.reconnects == [] and report.requests_by_mode["split"] == 2
    assert report.requests_by_mode["edge-only"] == report.requests - 2
