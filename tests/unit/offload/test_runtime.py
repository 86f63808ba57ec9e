"""The edge/cloud runtime over real gRPC on loopback: frames and tokens are checked and a refusal
never stops the server; an edge that gives up mid-request leaves it serving; a split run equals the
local model; an unreachable server falls back to edge-only; shaping (token bucket, tbf veth pair)."""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import save as st_save
from torch import nn

from edgeadapt.cli.main import main
from edgeadapt.errors import ConfigError, PathError
from edgeadapt.models.registry import load_adapter
from edgeadapt.offload.netem import TokenBucket, namespaces_available, veth_namespaces
from edgeadapt.offload.run import OffloadRunConfig, run_offload
from edgeadapt.offload.serve import RuntimeChain, ServeConfig, load_chain, start_server
from edgeadapt.offload.transport import (
    SERVICE,
    TOKEN_KEY,
    FrameError,
    FrameSpec,
    decode_frame,
    encode_frame,
    read_token,
)
from tests.unit.offload.conftest import StopAfter, trained_tiny_resnet

TOKEN = b"device-token-0123"
OK, BAD = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def trained():
    """tiny-resnet trained two epochs on digits (≈92% test accuracy), in eval mode."""
    adapter, splits = trained_tiny_resnet()
    return adapter, splits.test


@pytest.fixture(scope="module")
def chain(trained):
    return load_chain(trained[0])


@pytest.fixture
def server(chain):
    running = start_server(chain, TOKEN, ServeConfig(port=0, max_frame_bytes=1024 * 1024, max_batch=256))
    yield running
    running.stop(grace=0)


def call(port: int, method: str, payload: bytes, token: bytes | None = TOKEN, timeout: float = 10.0):
    """(status, response bytes) of one raw call."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = ch.unary_unary(f"/{SERVICE}/{method}")
        meta = ((TOKEN_KEY, token.decode()),) if token is not None else ()
        try:
            return OK, stub(payload, timeout=timeout, metadata=meta)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def good_frame(chain: RuntimeChain, start: int = 1, batch: int = 2) -> tuple[bytes, torch.Tensor]:
    x = torch.randn(batch, *chain.input_shapes[start])
    return encode_frame(x, {"start": start, "end": len(chain)}), x


# -- frames ------------------------------------------------------------------------------------
def test_a_frame_round_trips_and_each_malformation_is_refused_with_its_status():
    x = torch.randn(2, 3, 4)
    frame = encode_frame(x, {"start": 1})
    y, fields = decode_frame(frame, FrameSpec(rank=3, trailing=(3, 4)))
    assert torch.equal(x, y) and fields == {"start": 1}
    cases = {
        "dtype": st_save({"x": torch.ones(2, 3, 4, dtype=torch.int64)}),
        "name": st_save({"y": x}),
        "two tensors": st_save({"x": x, "z": x.clone()}),
        "truncated": frame[:-4],
        "trailing": frame + b"\0\0\0\0",
        "header length": struct.pack("<Q", 10**9) + frame[8:],
        "garbage": b"\x07" * 64,
        "empty": b"",
    }
    for what, bad in cases.items():
        with pytest.raises(FrameError) as err:
            decode_frame(bad, FrameSpec(rank=3, trailing=(3, 4)))
        assert err.value.code == BAD, what
    for spec in (FrameSpec(rank=2), FrameSpec(rank=3, trailing=(4, 3)), FrameSpec(rank=3, max_batch=1)):
        with pytest.raises(FrameError, match="rank|shape|batch"):
            decode_frame(frame, spec)
    with pytest.raises(FrameError) as err:
        decode_frame(frame, FrameSpec(max_bytes=len(frame) - 1))
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(ValueError, match="cannot travel"):
        encode_frame(torch.ones(2, dtype=torch.int64))


def test_a_forged_size_is_refused_before_safetensors_reads_it():
    frame = encode_frame(torch.randn(2, 3))
    n = struct.unpack("<Q", frame[:8])[0]
    header = json.loads(frame[8:8 + n])
    header["x"]["shape"] = [2, 4]  # declares 32 bytes, carries 24
    forged = json.dumps(header).encode()
    with pytest.raises(FrameError, match="does not equal the payload"):
        decode_frame(struct.pack("<Q", len(forged)) + forged + frame[8 + n:])


def test_the_token_file_must_exist_be_private_and_not_empty(tmp_path: Path):
    good = tmp_path / "t"
    good.write_text(" abc \n")
    good.chmod(0o600)
    assert read_token(good) == b"abc"
    with pytest.raises(PathError):
        read_token(tmp_path / "missing")
    empty = tmp_path / "e"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(ConfigError, match="empty"):
        read_token(empty)
    binary = tmp_path / "b"
    binary.write_bytes("tök en".encode())
    binary.chmod(0o600)
    with pytest.raises(ConfigError, match="printable ASCII"):
        read_token(binary)
    good.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_token(good)


# -- the server --------------------------------------------------------------------------------
def test_bad_frames_and_tokens_are_refused_and_the_server_keeps_serving(server, chain):
    port, n = server.port, len(chain)
    frame, x = good_frame(chain)
    c, h, w = chain.input_shapes[1]
    refusals = {
        "no token": (frame, None, grpc.StatusCode.UNAUTHENTICATED),
        "wrong token": (frame, b"device-token-0124", grpc.StatusCode.UNAUTHENTICATED),
        "wrong dtype": (st_save({"x": torch.ones(2, *chain.input_shapes[1], dtype=torch.int32)},
                                metadata={"edgeadapt": json.dumps({"start": 1, "end": n})}), TOKEN, BAD),
        "wrong shape": (encode_frame(torch.randn(2, c + 1, h, w), {"start": 1, "end": n}), TOKEN, BAD),
        "wrong rank": (encode_frame(torch.randn(2, 5), {"start": 1, "end": n}), TOKEN, BAD),
        "short payload": (frame[:-8], TOKEN, BAD),
        "range": (encode_frame(x, {"start": 1, "end": n + 1}), TOKEN, BAD),
        "no start": (encode_frame(x, {}), TOKEN, BAD),
        "too large": (encode_frame(torch.randn(256, c, h, w), {"start": 1, "end": n}), TOKEN,
                      grpc.StatusCode.RESOURCE_EXHAUSTED),
    }
    for what, (payload, token, status) in refusals.items():
        assert call(port, "Run", payload, token)[0] == status, what
    assert call(port, "Ping", b"", b"nope")[0] == grpc.StatusCode.UNAUTHENTICATED
    rng = random.Random(0)  # random corruptions of a good frame: refused, never a crash or an INTERNAL
    for _ in range(60):
        bad = bytearray(frame)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(min(len(bad), 200))] = rng.randrange(256)
        if bytes(bad) != frame:
            assert call(port, "Run", bytes(bad))[0] in (OK, BAD)
    status, out = call(port, "Run", frame)
    assert status == OK
    y, fields = decode_frame(out)
    assert torch.allclose(y, chain.run(1, n, x), atol=1e-6) and fields["compute_ms"] >= 0
    assert call(port, "Echo", b"abc")[1] == b"abc"
    assert json.loads(call(port, "Info", b"")[1])["weights_hash"] == chain.weights_hash


def test_a_vit_chain_from_offload_blocks_is_served_and_composes_to_the_model():
    adapter = load_adapter("tiny-vit")
    vit = load_chain(adapter)
    assert vit.names[0] == "vit.embeddings" and vit.names[-1] == "head" and vit.widths == (1.0,)
    running = start_server(vit, TOKEN, ServeConfig(port=0))
    try:
        x = torch.randn(3, *vit.input_shapes[0])
        with torch.no_grad():
            local = adapter.model(pixel_values=x).logits
        n = len(vit)
        for start in (0, 2, n - 1):
            h = vit.run(0, start, x)
            status, out = call(running.port, "Run", encode_frame(h, {"start": start, "end": n}))
            assert status == OK
            torch.testing.assert_close(decode_frame(out)[0], local, atol=1e-5, rtol=0)
        frame = encode_frame(x, {"start": 0, "end": n, "widths": [0.5] * n})  # only width 1.0 is served
        assert call(running.port, "Run", frame)[0] == BAD
    finally:
        running.stop(grace=0)


class Sleep(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x * 2


def test_an_edge_that_gives_up_mid_request_does_not_break_the_server():
    slow = RuntimeChain("slow", [Sleep(0.0), nn.Identity()], ["sleep", "head"], torch.zeros(1, 4), "h")
    slow.blocks[0].seconds = 0.4
    running = start_server(slow, TOKEN, ServeConfig(port=0))
    try:
        frame = encode_frame(torch.ones(1, 4), {"start": 0, "end": 2})
        assert call(running.port, "Run", frame, timeout=0.1)[0] == grpc.StatusCode.DEADLINE_EXCEEDED
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:  # cancelled while computing
            future = ch.unary_unary(f"/{SERVICE}/Run").future(frame, metadata=((TOKEN_KEY, TOKEN.decode()),))
            time.sleep(0.1)
            assert future.cancel()
        status, out = call(running.port, "Run", frame)
        assert status == OK and torch.equal(decode_frame(out)[0], torch.full((1, 4), 2.0))
    finally:
        running.stop(grace=0)


# -- the edge ----------------------------------------------------------------------------------
def test_a_split_run_on_loopback_equals_the_local_model_and_classifies_digits(server, chain, trained):
    adapter, test = trained
    with torch.no_grad():
        local = adapter.model(pixel_values=test.images).logits
    n = len(chain)
    for split, mode in ((2, "split"), (0, "cloud-only")):
        cfg = OffloadRunConfig("tiny-resnet", f"127.0.0.1:{server.port}", TOKEN, split=split, batch_size=64)
        report = run_offload(cfg, chain=chain)
        assert report.mode == mode and report.fallback is None
        assert report.samples == len(test) and report.blocks == n
        torch.testing.assert_close(report.logits, local, atol=1e-5, rtol=0)
        assert report.accuracy == pytest.approx(float((local.argmax(-1) == test.labels).float().mean()))
        assert report.accuracy > 0.8
        assert report.bytes_sent > 0 and report.rtt_ms > 0 and report.bandwidth_mbps > 0
        assert report.latency_ms["p95"] >= report.latency_ms["p50"] > 0
        assert json.loads(json.dumps(report.to_dict()))["split"] == split


def test_nothing_listening_falls_back_to_edge_only(chain, trained):
    adapter, test = trained
    cfg = OffloadRunConfig("tiny-resnet", f"127.0.0.1:{free_port()}", TOKEN, split=2, batch_size=128,
                           timeout_s=2.0)
    with pytest.warns(UserWarning, match="unreachable at request 0.*running every block on the edge"):
        report = run_offload(cfg, chain=chain)
    assert report.mode == "edge-only" and report.fallback["at_request"] == 0
    assert "UNAVAILABLE" in report.fallback["reason"] and report.bytes_sent == 0
    assert report.probe_bytes == {"sent": 0, "received": 0}
    with torch.no_grad():
        torch.testing.assert_close(report.logits, adapter.model(pixel_values=test.images).logits, atol=1e-5,
                                   rtol=0)


def test_a_server_lost_mid_run_falls_back_for_the_rest(chain, trained):
    adapter, test = trained
    running = start_server(chain, TOKEN, ServeConfig(port=0))
    try:  # Info, 3 pings and the echo probe are 10 messages; then 2 per request
        cfg = OffloadRunConfig("tiny-resnet", f"127.0.0.1:{running.port}", TOKEN, split=3, batch_size=64,
                               timeout_s=2.0)
        report = run_offload(cfg, StopAfter(running, 10 + 2 * 2 + 1), chain=chain)
    finally:
        running.stop(grace=0)
    assert report.fallback["at_request"] == 2 and report.reconnects == []  # stopped for good
    assert report.mode == "mixed" and report.requests_by_mode == {
        "edge-only": report.requests - 2, "split": 2, "cloud-only": 0}
    assert report.samples == len(test) and report.bytes_sent > 0
    with torch.no_grad():
        torch.testing.assert_close(report.logits, adapter.model(pixel_values=test.images).logits, atol=1e-5,
                                   rtol=0)


def test_bandwidth_is_measured_on_the_real_transfers_of_a_shaped_link(server, chain):
    bucket = TokenBucket(rate=2e6, burst=64 * 1024)  # 16 Mbit/s
    cfg = OffloadRunConfig("tiny-resnet", f"127.0.0.1:{server.port}", TOKEN, split=2, batch_size=64,
                           limit=128)
    report = run_offload(cfg, bucket, chain=chain)
    assert report.mode == "split" and 10 < report.bandwidth_mbps < 20
    unshaped = run_offload(cfg, chain=chain)
    assert unshaped.bandwidth_mbps > 5 * report.bandwidth_mbps


def test_a_server_with_other_weights_or_a_bad_split_is_refused(server, chain):
    other = load_chain("tiny-resnet")  # untrained: same blocks, other weights
    cfg = OffloadRunConfig("tiny-resnet", f"127.0.0.1:{server.port}", TOKEN, split=2, limit=8)
    with pytest.raises(ConfigError, match="serve and run the same model"):
        run_offload(cfg, chain=other)
    with pytest.raises(ConfigError, match="--split 9"):
        run_offload(OffloadRunConfig("m", f"127.0.0.1:{server.port}", TOKEN, split=9), chain=chain)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        run_offload(OffloadRunConfig("m", "127.0.0.1:", TOKEN, split=2), chain=chain)
    bad = OffloadRunConfig("m", f"127.0.0.1:{server.port}", b"wrong", split=2, limit=8)
    with pytest.raises(ConfigError, match="UNAUTHENTICATED"):
        run_offload(bad, chain=chain)


@pytest.mark.slow  # a server process: imports torch + transformers (several seconds)
def test_the_cli_serves_until_sigterm_and_runs_against_it(tmp_path: Path, capsys):
    token = tmp_path / "token"
    token.write_text(TOKEN.decode())
    token.chmod(0o600)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "edgeadapt", "offload", "serve", "--model", "tiny-resnet",
                             "--port", "0", "--token-file", str(token)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving tiny-resnet (5 blocks) on 127.0.0.1:"), line + proc.stderr.read()
        port = int(line.rsplit(":", 1)[1])
        assert main(["offload", "run", "--model", "tiny-resnet", "--server", f"127.0.0.1:{port}",
                     "--token-file", str(token), "--split", "3", "--limit", "40", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["mode"] == "split" and out["split"] == 3 and out["samples"] == 40 and out["bytes_sent"] > 0
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        assert "stopped after" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    empty = tmp_path / "empty"
    empty.write_text("")
    empty.chmod(0o600)
    assert main(["offload", "run", "--model", "tiny-resnet", "--server", "127.0.0.1:1", "--token-file",
                 str(empty), "--split", "3"]) == 2


# -- shaping -----------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_token_bucket_lets_a_burst_through_then_holds_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(rate=1000, burst=100, clock=clock, sleep=clock.sleep)
    assert bucket.consume(100) == 0  # the burst
    assert bucket.consume(500) == pytest.approx(0.5)  # then 1000 bytes/s
    clock.now += 0.05  # half of the next 100 bytes' tokens refilled
    assert bucket.consume(100) == pytest.approx(0.05)
    sent: list[bytes] = []
    delayed = TokenBucket(rate=1e9, burst=10, delay_s=0.02, clock=clock, sleep=clock.sleep)
    delayed.wrap(sent.append)(b"abc")
    assert sent == [b"abc"] and clock.slept[-1] == pytest.approx(0.02)
    with pytest.raises(ConfigError):
        TokenBucket(rate=0, burst=1)


@pytest.mark.skipif(not namespaces_available(), reason="needs root and `ip netns` (iproute2)")
def test_a_shaped_veth_pair_between_namespaces_is_created_and_torn_down():
    prefix = f"ea{os.getpid() % 100000}"
    with veth_namespaces(100, prefix=prefix, subnet="10.231.7") as pair:
        link = subprocess.run(["ip", "-n", pair.ns_a, "link", "show", f"{prefix}-va"], capture_output=True,
                              text=True, check=True).stdout
        qdisc = subprocess.run(["tc", "-n", pair.ns_b, "qdisc", "show", "dev", f"{prefix}-vb"],
                               capture_output=True, text=True, check=True).stdout
        assert "mtu 1500" in link
        assert "tbf" in qdisc and "100Mbit" in qdisc
        # a real transfer across the pair, timed by the receiver: 1.5 MB at 100 Mbit/s takes ≥ 0.12 s
        recv = ("import socket,time;s=socket.socket();s.bind(('%s',5099));s.listen();c,_=s.accept();n=0\n"
                "t=time.perf_counter()\nwhile (b:=c.recv(65536)): n+=len(b)\nprint(n,time.perf_counter()-t)"
                ) % pair.ip_b
        server = subprocess.Popen(pair.exec(pair.ns_b, [sys.executable, "-c", recv]), stdout=subprocess.PIPE,
                                  text=True)
        send = ("import socket,time\nfor _ in range(100):\n"
                " try: s=socket.create_connection(('%s',5099));break\n except OSError: time.sleep(0.1)\n"
                "s.sendall(bytes(1500000));s.close()") % pair.ip_b
        try:
            subprocess.run(pair.exec(pair.ns_a, [sys.executable, "-c", send]), timeout=30, check=True)
            n, took = server.communicate(timeout=30)[0].split()
        finally:
            if server.poll() is None:
                server.kill()
        assert int(n) == 1500000
        assert 1500000 * 8 / float(took) / 1e6 < 110  # effective Mbit/s: shaped (unshaped: Gbit/s)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert pair.ns_a not in listed and pair.ns_b not in listed
