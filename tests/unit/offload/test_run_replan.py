"""Re-planning with hysteresis (offload/replan.py, the link estimate in offload/client.py): a noisy
but steady link never changes the placement, a real drop or recovery does within two seconds, and
two changes are never closer than the interval. Unit tests on a synthetic profile, then a real
serve/run pair on loopback with a stepped token bucket."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from edgeadapt.errors import InfeasibleError
from edgeadapt.offload.build import OffloadBuildConfig, build_offload
from edgeadapt.offload.client import MIN_SAMPLE_BYTES, LinkEstimate
from edgeadapt.offload.exits import ExitProfile
from edgeadapt.offload.netem import SteppedBucket
from edgeadapt.offload.profile import EMULATED_EDGE, LOCAL_CLOUD, BlockProfile, ChainProfile, DeviceProfile
from edgeadapt.offload.replan import Replanner
from edgeadapt.offload.run import OffloadRunConfig, run_offload
from edgeadapt.offload.serve import ServeConfig, load_chain, start_server
from tests.unit.offload.conftest import trained_tiny_resnet

TOKEN = b"replan-token-0123"
EDGE = DeviceProfile("edge", 4.0, 1, 2**30)
CLOUD = DeviceProfile("cloud", 1.0, 1, 2**30)


def synthetic() -> ChainProfile:
    """Three blocks, 5 ms each on the edge and 1 ms on the cloud, 1000-byte activations and input:
    cloud-only (3 ms + the round trip + 2000 bytes over the link) against edge-only (15 ms)."""
    rows = [[BlockProfile(f"b{b}", 1.0, 10, 10, 1000, 100, {"edge": 5e-3, "cloud": 1e-3}, 0.0)]
            for b in range(3)]
    return ChainProfile("synthetic", [r[0].block for r in rows], [1.0], [EDGE, CLOUD], 1, 1000, 0.9, rows,
                        [[1.0] * 3])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_noisy_steady_link_never_changes_the_placement():
    clock = Clock()
    planner = Replanner(synthetic(), 0.5, clock=clock)
    first = planner.start(1e9, 1e-3)
    assert set(first.devices) == {1}  # cloud-only on a fast link
    rng = random.Random(0)
    changes = [planner.check(1e9 * rng.uniform(0.03, 30), 1e-3 * rng.uniform(0.5, 2)) for _ in range(200)]
    assert not any(c is not None and c.changed for c in changes)
    assert planner.resolves > 10 and planner.current.devices == first.devices


def test_a_real_drop_changes_at_once_then_changes_are_an_interval_apart_and_better_by_the_margin():
    clock = Clock()
    planner = Replanner(synthetic(), 0.5, min_interval_s=0.5, margin=0.1, clock=clock)
    planner.start(1e9, 1e-3)
    drop = planner.check(1e4, 1e-3)  # 2000 bytes take 0.2 s: the edge wins
    assert drop.changed and "bandwidth" in drop.reason and set(planner.current.devices) == {0}
    back = planner.check(1e9, 1e-3)  # better at once, but 0 s after the last change
    assert back.held and not back.changed and set(planner.current.devices) == {0}
    clock.now += 0.6
    # cloud-only 3 ms + 1 ms + 2000/bw: at 190 kB/s 14.5 ms, 3% better than 15 ms edge-only: kept
    assert not planner.check(190_476, 1e-3).changed and set(planner.current.devices) == {0}
    assert planner.check(1e9, 1e-3).changed and set(planner.current.devices) == {1}


def test_a_flapping_link_doubles_the_interval_between_changes_back_and_forth():
    clock = Clock()
    planner = Replanner(synthetic(), 0.5, min_interval_s=0.5, clock=clock)
    planner.start(1e9, 1e-3)
    gaps = []
    for k in range(6):  # fast, slow, fast, ...: each change waits until the interval allows it
        bandwidth, t0 = (1e4, 1e9)[k % 2], clock.now
        while not planner.check(bandwidth, 1e-3).changed:
            clock.now += 0.05
        gaps.append(round(clock.now - t0, 2))
        clock.now += 0.05
    assert gaps[0] == 0.0  # the first change is never held; then 0.5, 1, 2, 4, 8 s apart (in 0.05 s steps)
    assert gaps[1:] == pytest.approx([0.45, 0.95, 1.95, 3.95, 7.95], abs=0.06)
    clock.now += 60
    planner.check(1e9 if planner.current.devices[0] == 0 else 1e4, 1e-3)
    assert planner.interval_s == 8.0  # a flap back once more: the interval stays at its cap


def test_a_third_placement_after_flapping_is_not_held_by_the_doubled_interval():
    # block 0 shrinks 10,000 input bytes to 100: at 1 MB/s a split (block 0 on the edge) wins,
    # at 10 kB/s edge-only, at 1 GB/s cloud-only
    rows = [[BlockProfile(f"b{b}", 1.0, 10, 10, out, 100, {"edge": 5e-3, "cloud": 1e-3}, 0.0)]
            for b, out in enumerate((100, 1000, 1000))]
    profile = ChainProfile("split", [r[0].block for r in rows], [1.0], [EDGE, CLOUD], 1, 10_000, 0.9, rows,
                           [[1.0] * 3])
    clock = Clock()
    planner = Replanner(profile, 0.5, min_interval_s=0.5, clock=clock)
    planner.start(1e9, 1e-3)
    for bandwidth in (1e4, 1e9, 1e4, 1e9, 1e4):  # edge-only and cloud-only in turn: flaps
        while not planner.check(bandwidth, 1e-3).changed:
            clock.now += 0.05
    assert planner.interval_s == 8.0 and planner.current.devices == (0, 0, 0)
    clock.now += 0.6
    assert planner.check(1e9, 1e-3).held  # cloud-only again: a flap, held for 8 s
    change = planner.check(1e6, 1e-3)  # a split: a new placement, due after 0.5 s
    assert change.changed and planner.current.devices == (0, 1, 1) and planner.interval_s == 0.5


def test_the_link_estimate_ignores_unmeasurable_frames_and_follows_a_change_in_two_samples():
    link = LinkEstimate()
    assert link.observe_transfer(2 * MIN_SAMPLE_BYTES, 2 * MIN_SAMPLE_BYTES / 5e8)  # a 500 MB/s probe
    rng = random.Random(0)
    for _ in range(50):  # 12 KB frames on loopback: microseconds of scheduler noise, not a rate
        assert not link.observe_transfer(12_000, rng.uniform(1e-6, 3e-4))
    assert link.bandwidth == pytest.approx(5e8) and link.ignored == 50
    assert link.observe_transfer(12_000, 0.01) and link.bandwidth == pytest.approx(5e8)  # one hiccup: ignored
    assert link.pending is not None  # ... but probed again soon
    assert link.observe_transfer(2 * MIN_SAMPLE_BYTES, 2 * MIN_SAMPLE_BYTES / 5e8)
    assert link.pending is None
    for _ in range(2):  # a drop to 100 kB/s: 12 KB take 120 ms
        assert link.observe_transfer(12_000, 0.12)
    assert link.bandwidth == pytest.approx(1e5, rel=0.01) and link.pending is None
    for _ in range(2):  # back: the same frames take 20 µs (floored at 50 µs), measurable by the estimate
        assert link.observe_transfer(12_000, 2e-5)
    assert link.bandwidth > 1e8


def test_with_exits_the_planner_stops_at_an_exit_and_moves_its_head_with_the_link():
    """Exit 0 (accuracy 0.9, a 0.1 ms head, 40 bytes of logits) meets the floor: on a fast link block 0
    and its head go to the cloud (1.1 ms + the round trip), on a slow one they stay on the edge
    (5.1 ms); the whole chain (15 ms on the edge) never wins. An exit below the floor is never used."""
    clock = Clock()
    head = ExitProfile(0, 0.9, {"edge": 1e-4, "cloud": 1e-4}, 100, 40)
    planner = Replanner(synthetic(), 0.5, min_interval_s=0.5, clock=clock, exits=[head])
    first = planner.start(1e9, 1e-3)
    assert planner.exit_block == 0 and first.devices == (1, 1) and len(first.widths) == 2
    drop = planner.check(1e4, 1e-3)
    assert drop.changed and planner.exit_block == 0 and planner.current.devices == (0, 0)
    clock.now += 0.6
    slower = planner.check(1e3, 1e-3)  # re-solved, the same placement: re-costed on the exit's own problem
    assert slower is not None and not slower.changed and planner.kept == 1 and planner.exit_block == 0
    assert planner.current.latency_s == pytest.approx(5e-3 + 1e-4)  # block 0 and the head on the edge
    below = Replanner(synthetic(), 0.95, clock=clock, exits=[head])  # synthetic's base accuracy 0.9 < 0.95
    with pytest.raises(InfeasibleError, match="unreachable"):
        below.start(1e9, 1e-3)
    whole = Replanner(synthetic(), 0.5, clock=clock, exits=[replace(head, accuracy=0.4)])
    assert len(whole.start(1e9, 1e-3).widths) == 3 and whole.exit_block is None


# -- a real serve/run pair ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def offloading(tmp_path_factory):
    """Descendants of tiny-resnet (widths 1, 0.5) and a profile in which the edge is 20x slower than
    measured and the cloud 4x faster: on loopback every block belongs on the cloud, on a link of
    20 kB/s on the edge (``slow-cloud.json`` beside it: a cloud 100x slower than that edge, where
    every block stays on the edge). ``(artifact dir, profile path, server address)``."""
    adapter, _ = trained_tiny_resnet(epochs=1)
    out = tmp_path_factory.mktemp("replan")
    cfg = OffloadBuildConfig("tiny-resnet", widths=(1.0, 0.5), epochs=1, batch_size=128, warmup=0, repeats=2,
                             checks=0)
    build_offload(cfg, out, devices=[EMULATED_EDGE, LOCAL_CLOUD], adapter=adapter)
    data = json.loads((out / "profile.json").read_text())
    for row in data["rows"]:
        for r in row:
            r["latency_s"] = {"edge": r["latency_s"]["edge"] * 20, "cloud": r["latency_s"]["edge"] / 4}
    path = Path(out / "fast-cloud.json")
    path.write_text(json.dumps(data))
    for row in data["rows"]:
        for r in row:
            r["latency_s"]["cloud"] = r["latency_s"]["edge"] * 100
    (out / "slow-cloud.json").write_text(json.dumps(data))
    running = start_server(load_chain(out / "descendants"), TOKEN, ServeConfig(port=0))
    yield out, path, f"127.0.0.1:{running.port}"
    running.stop(grace=0)


def test_steady_loopback_makes_no_replan_over_many_requests(offloading):
    out, profile, server = offloading
    cfg = OffloadRunConfig(str(out), server, TOKEN, floor=0.5, profile=str(profile), limit=150)
    report = run_offload(cfg)
    assert report.requests == 150 and report.fallback is None
    assert report.requests_by_mode["cloud-only"] + report.requests_by_mode["split"] == 150
    assert report.replans == [], report.replans


def test_a_bandwidth_drop_and_recovery_each_replan_within_two_seconds(offloading):
    out, profile, server = offloading
    link = SteppedBucket(1e12, 1 << 30, steps=[(1.0, 2e4), (2.0, 1e12)])  # 0.16 Mbit/s from 1 s to 3 s
    cfg = OffloadRunConfig(str(out), server, TOKEN, floor=0.5, profile=str(profile), duration_s=5.0)
    report = run_offload(cfg, link)
    assert len(link.changed_at) == 2, link.changed_at
    dropped, recovered = link.changed_at
    to_edge = next(r for r in report.replans if r["time"] >= dropped)  # a split or edge-only
    assert "edge" in {b["device"] for b in to_edge["blocks"]} and to_edge["time"] < recovered
    assert to_edge["time"] - dropped <= 2.0, (to_edge, dropped)
    back = next(r for r in report.replans if r["time"] >= recovered)
    assert "cloud" in {b["device"] for b in back["blocks"]}
    assert back["time"] - recovered <= 2.0, (back, recovered)
    assert report.fallback is None and report.mode == "mixed"


def test_an_edge_only_floor_run_counts_its_link_probes_apart_from_payload(offloading, monkeypatch):
    from edgeadapt.offload import run as offload_run

    out, profile, server = offloading
    monkeypatch.setattr(offload_run, "PROBE_EVERY_S", 0.0)  # probe before every request
    slow_cloud = str(profile.parent / "slow-cloud.json")
    cfg = OffloadRunConfig(str(out), server, TOKEN, floor=0.5, profile=slow_cloud, limit=10)
    report = run_offload(cfg)
    assert report.mode == "edge-only" and report.requests_by_mode["edge-only"] == 10
    assert report.bytes_sent == 0 and report.bytes_received == 0
    assert report.probe_bytes["sent"] > 9 * 4096 and report.probe_bytes["received"] > 9 * 4096
