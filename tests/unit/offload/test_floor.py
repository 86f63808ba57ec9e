"""Placement-driven offload runs (``offload run --floor``) on a real serve/run pair on loopback, with a
small descendants artifact built here: the placement meets the floor per the profile, the composition
over the server equals the local one at any widths, an unreachable floor exits 2 naming the best
accuracy, and a moving link triggers a re-plan (the decision function with fake figures too)."""

from __future__ import annotations

import json

import grpc
import pytest
import torch

from edgeadapt.cli.main import main
from edgeadapt.data.registry import build_dataset
from edgeadapt.errors import ConfigError
from edgeadapt.offload import run as offload_run
from edgeadapt.offload.artifact import load_descendants
from edgeadapt.offload.build import OffloadBuildConfig, build_offload
from edgeadapt.offload.client import OffloadClient
from edgeadapt.offload.netem import TokenBucket
from edgeadapt.offload.profile import EMULATED_EDGE, LOCAL_CLOUD
from edgeadapt.offload.run import OffloadRunConfig, replan_reason, run_offload, segments
from tests.unit.offload.conftest import trained_tiny_resnet

TOKEN = b"floor-token-0123"
SERVER = "127.0.0.1:{}"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """tiny-resnet trained one epoch on digits, its descendants at widths 1 and 0.5 (one distillation
    epoch) and their profile on the emulated edge and this machine: ``(out dir, descendants, profile)``."""
    adapter, _ = trained_tiny_resnet()
    out = tmp_path_factory.mktemp("offload")
    cfg = OffloadBuildConfig("tiny-resnet", widths=(1.0, 0.5), epochs=1, batch_size=128, warmup=0, repeats=2,
                             checks=0)
    _, profile = build_offload(cfg, out, devices=[EMULATED_EDGE, LOCAL_CLOUD], adapter=adapter)
    assert 0.5 < profile.base_accuracy < 1.0
    return out, load_descendants(out / "descendants"), profile


def test_the_server_runs_any_block_at_any_width_and_full_width_equals_the_model(built, server):
    out, desc, _ = built
    images = build_dataset("digits", size=32).test.images[:16]
    client = OffloadClient(SERVER.format(server.port), TOKEN)
    try:
        info = client.info()
        assert info["widths"] == [1.0, 0.5] and info["blocks"] == len(desc.names)
        n = len(desc.names)
        for widths in ([1.0] * n, [1.0, 0.5, 0.5, 1.0, 1.0], [0.5] * n):
            local = desc.chain(widths)(images)
            torch.testing.assert_close(client.run(0, n, images, widths), local, atol=1e-5, rtol=0)
            h = desc.chain(widths)(images, 0, 2)  # a split composition: blocks 3.. on the server
            torch.testing.assert_close(client.run(2, n, h, widths[2:]), local, atol=1e-5, rtol=0)
        with pytest.raises(ConfigError, match="INVALID_ARGUMENT"):
            client.run(0, n, images, [0.75] * n)  # not built
        with pytest.raises(ConfigError, match="INVALID_ARGUMENT"):
            client.run(0, n, images, [1.0])  # one width for five blocks
    finally:
        client.close()
    # the full-width split run over the server equals the local full-width chain
    cfg = OffloadRunConfig(str(out / "descendants"), SERVER.format(server.port), TOKEN, split=1,
                           batch_size=64)
    report = run_offload(cfg)
    test = build_dataset("digits", size=32).test
    with torch.no_grad():
        torch.testing.assert_close(report.logits, desc.chain([1.0] * n)(test.images), atol=1e-5, rtol=0)
    assert report.mode == "split" and [b["width"] for b in report.placement["blocks"]] == [1.0] * n
    assert [b["device"] for b in report.placement["blocks"]] == ["edge"] + ["cloud"] * (n - 1)


def test_a_floor_run_reports_a_placement_that_meets_the_floor_per_the_profile(built, server, token_file,
                                                                              capsys):
    out, desc, profile = built
    floor = round(profile.base_accuracy - 0.05, 3)
    assert main(["offload", "run", "--model", str(out / "descendants"), "--server",
                 SERVER.format(server.port), "--token-file", str(token_file), "--floor", str(floor),
                 "--limit", "24", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    placement = report["placement"]
    widths = [b["width"] for b in placement["blocks"]]
    assert [b["block"] for b in placement["blocks"]] == desc.names
    assert {b["device"] for b in placement["blocks"]} <= {"edge", "cloud"}
    assert placement["floor"] == floor and placement["predicted_accuracy"] >= floor
    assert profile.predicted_accuracy(widths) == pytest.approx(placement["predicted_accuracy"])
    assert report["samples"] == 24 and report["batch_size"] == profile.batch_size
    assert report["split"] is None and isinstance(report["replans"], list)
    # the logits are those of the placed composition (whatever device ran each block)
    cfg = OffloadRunConfig(str(out), SERVER.format(server.port), TOKEN, floor=floor, limit=24)
    again = run_offload(cfg)
    placed = [b["width"] for b in again.placement["blocks"]]
    images = build_dataset("digits", size=32).test.images[:24]
    with torch.no_grad():
        torch.testing.assert_close(again.logits, desc.chain(placed)(images), atol=1e-5, rtol=0)
    assert "on edge" in again.summary() or "on cloud" in again.summary()
    assert main(["offload", "run", "--model", str(out / "descendants"), "--server",
                 SERVER.format(server.port), "--token-file", str(token_file), "--floor", str(floor),
                 "--limit", "8"]) == 0
    human = capsys.readouterr().out
    assert f"floor {floor:.4f}" in human and all(name in human for name in desc.names)


def test_an_unreachable_floor_exits_2_with_the_best_reachable_accuracy(built, server, token_file, capsys):
    out, _, profile = built
    floor = min(1.0, profile.base_accuracy + 0.02)
    assert main(["offload", "run", "--model", str(out / "descendants"), "--server",
                 SERVER.format(server.port), "--token-file", str(token_file), "--floor", str(floor)]) == 2
    err = capsys.readouterr().err
    assert "unreachable" in err and f"{profile.base_accuracy:.4f}" in err
    with pytest.raises(ConfigError, match="descendants artifact"):  # --floor on a plain model
        run_offload(OffloadRunConfig("tiny-resnet", SERVER.format(server.port), TOKEN, floor=0.5))
    with pytest.raises(ConfigError, match="either --split"):
        run_offload(OffloadRunConfig(str(out), SERVER.format(server.port), TOKEN, split=1, floor=0.5))
    with pytest.raises(ConfigError, match="--cloud-device"):
        run_offload(OffloadRunConfig(str(out), SERVER.format(server.port), TOKEN, floor=0.5,
                                     cloud_device="edge"))


class SlowsDown(TokenBucket):
    """A link that drops to ``rate`` bytes/s after ``calls`` shaped messages."""

    def __init__(self, calls: int, rate: float) -> None:
        super().__init__(rate=1e12, burst=1 << 30)
        self.left, self.slow = calls, rate

    def consume(self, n: int) -> float:
        self.left -= 1
        if self.left == 0:
            self.rate, self.burst = self.slow, 4096
        return super().consume(n)


def test_a_bandwidth_drop_mid_run_triggers_a_replan_at_once(built, server):
    out, _, profile = built
    floor = round(profile.base_accuracy - 0.05, 3)
    # Info, 3 pings and the echo are 10 shaped messages, then request 0's Run is 2 at most: from the
    # next message on, the link drops from loopback (Gbit/s) to 0.8 Mbit/s. Whether the first plan
    # keeps blocks on the server (a Run measures it) or not (a probe every 10 requests does), the
    # plan is re-solved on the slow link: a change is listed, a kept placement counted (its placement
    # is then checked against the slow link: ``placement.link``). test_replan.py has the timed change.
    cfg = OffloadRunConfig(str(out), SERVER.format(server.port), TOKEN, floor=floor, limit=20)
    report = run_offload(cfg, SlowsDown(10 + 2 + 1, 1e5))
    slow = [r for r in report.replans
            if r["reason"].startswith("bandwidth") and r["link"]["bandwidth_mbps"] < 10]
    assert slow or report.replan_checks >= 1, report.replans
    assert not slow or slow[0]["at_request"] <= 11  # the first sample on the slow link re-plans
    assert report.placement["link"]["bandwidth_mbps"] < 10 and report.samples == 20
    assert report.fallback is None and all({"changed", "blocks", "link"} <= set(r) for r in report.replans)


def test_replan_reason_triggers_on_a_moved_link_only():
    mb = 1e6 / 8  # bytes/s of 1 Mbit/s
    assert replan_reason(10 * mb, 0.02, 10 * mb, 0.02) is None
    assert replan_reason(10 * mb, 0.02, 14 * mb, 0.025) is None  # within 1.5x
    assert "bandwidth" in replan_reason(10 * mb, 0.02, 16 * mb, 0.02)
    assert "bandwidth" in replan_reason(10 * mb, 0.02, 6 * mb, 0.02)
    assert "rtt" in replan_reason(10 * mb, 0.02, 10 * mb, 0.05)
    assert replan_reason(10 * mb, 0.0002, 10 * mb, 0.0006) is None  # x3 but 0.4 ms: loopback noise
    assert replan_reason(10 * mb, 0.02, None, None) is None  # nothing measured yet
    assert "bandwidth" in replan_reason(10 * mb, 0.02, 13 * mb, 0.02, factor=1.2)


def test_consecutive_blocks_on_one_device_are_one_call():
    assert segments([0, 0, 1, 1, 0]) == [(0, 2, 0), (2, 4, 1), (4, 5, 0)]
    assert segments([1, 1, 1]) == [(0, 3, 1)]
    assert segments([0]) == [(0, 1, 0)]


def test_a_server_unreachable_at_start_runs_the_floor_edge_only(built):
    out, desc, profile = built
    floor = round(profile.base_accuracy - 0.05, 3)
    cfg = OffloadRunConfig(str(out), "127.0.0.1:1", TOKEN, floor=floor, limit=8, timeout_s=2.0)
    report = run_offload(cfg)
    assert report.mode == "edge-only" and report.fallback["at_request"] == 0
    assert {b["device"] for b in report.placement["blocks"]} == {"edge"}
    assert report.placement["predicted_accuracy"] >= floor
    assert grpc.StatusCode.UNAVAILABLE.name in report.fallback["reason"]


def test_an_emulated_edge_runs_its_blocks_slowdown_times_slower(built):
    out, _, profile = built
    floor = round(profile.base_accuracy - 0.05, 3)
    threads = torch.get_num_threads()
    p50 = {}
    for emulate in (False, True):  # nothing listens: every block on the edge
        cfg = OffloadRunConfig(str(out), "127.0.0.1:1", TOKEN, floor=floor, limit=12, timeout_s=2.0,
                               emulate_edge=emulate)
        report = run_offload(cfg)
        assert report.mode == "edge-only" and report.placement["emulated_edge"] == emulate
        p50[emulate] = report.latency_ms["p50"]
    assert p50[True] > 2 * p50[False]  # slowdown 4 (the emulated edge's profile)
    assert torch.get_num_threads() == threads


class Counting(TokenBucket):
    """A far link (``delay_s`` per message) that counts the messages it carries."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(rate=1e12, burst=1 << 30, delay_s=delay_s)
        self.messages = 0

    def consume(self, n: int) -> float:
        self.messages += 1
        return super().consume(n)


def test_while_nothing_runs_on_the_server_the_link_is_probed_on_time(built, server, monkeypatch):
    out, _, profile = built
    floor = round(profile.base_accuracy - 0.05, 3)
    cfg = OffloadRunConfig(str(out), SERVER.format(server.port), TOKEN, floor=floor, limit=5)
    quiet = Counting(0.03)  # 60 ms round trips: every block stays on the edge
    report = run_offload(cfg, quiet)
    assert {b["device"] for b in report.placement["blocks"]} == {"edge"} and report.fallback is None
    assert quiet.messages == 10  # Info, 3 pings, the echo; then nothing within 5 quick requests
    monkeypatch.setattr(offload_run, "PROBE_EVERY_S", 0.0)
    probed = Counting(0.03)
    run_offload(cfg, probed)
    assert probed.messages == 10 + 4 * 4  # a ping and an echo before each of requests 1..4
