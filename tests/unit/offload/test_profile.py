"""Device profiles and per (block, width) profiles of a chain."""

from __future__ import annotations

import json

import pytest
import torch

from edgeadapt.errors import ConfigError, PathError
from edgeadapt.models.registry import load_adapter
from edgeadapt.offload.blocks import make_descendants
from edgeadapt.offload.placement import solve
from edgeadapt.offload.profile import (
    EMULATED_EDGE,
    ChainProfile,
    DeviceProfile,
    accuracy,
    count_flops,
    measure_latency,
    profile_chain,
)

CLOUD = DeviceProfile("cloud", 1.0, 1, 2**30, "this machine")


def test_device_profile_round_trip(tmp_path):
    path = tmp_path / "edge.json"
    EMULATED_EDGE.save(path)
    assert DeviceProfile.load(path) == EMULATED_EDGE
    assert json.loads(path.read_text())["slowdown"] == 4.0


@pytest.mark.parametrize("data, match", [
    ({"name": "e", "slowdown": 0, "threads": 1, "memory_bytes": 1}, "slowdown"),
    ({"name": "e", "slowdown": 2, "threads": 1.5, "memory_bytes": 1}, "threads"),
    ({"name": "e", "slowdown": 2, "threads": 1}, "missing fields \\['memory_bytes'\\]"),
    ({"name": "e", "slowdown": 2, "threads": 1, "memory_bytes": 1, "speed": 3},
     "unknown fields \\['speed'\\]"),
])
def test_device_profile_refuses_nonsense(data, match):
    with pytest.raises(ConfigError, match=match):
        DeviceProfile.from_dict(data)


def test_missing_device_file(tmp_path):
    with pytest.raises(PathError):
        DeviceProfile.load(tmp_path / "nope.json")


def test_latency_scales_by_the_slowdown():
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    slow = DeviceProfile("slow", 1000.0, 1, 1)
    assert measure_latency(layer, x, slow, warmup=1, repeats=3) > 100 * measure_latency(layer, x, CLOUD, 1, 3)


def test_flops_of_a_convolution():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    assert count_flops(conv, torch.randn(2, 3, 5, 5)) == 2 * (4 * 5 * 5) * (3 * 3 * 3)


@pytest.fixture(scope="module")
def profiled():
    adapter = load_adapter("tiny-resnet")
    torch.manual_seed(0)
    x = torch.randn(48, 3, 32, 32)
    with torch.no_grad():  # labels the full model agrees with: full accuracy 1, narrower ones lose some
        labels = adapter.model(pixel_values=x).logits.argmax(-1)
    batches = [{"pixel_values": x[i:i + 16], "labels": labels[i:i + 16]} for i in range(0, 48, 16)]
    desc = make_descendants(adapter, widths=(1.0, 0.5))
    return desc, batches, profile_chain(desc, batches, [EMULATED_EDGE, CLOUD], warmup=1, repeats=3, checks=3)


def test_profile_rows(profiled):
    desc, batches, prof = profiled
    assert prof.base_accuracy == 1.0 == accuracy(desc.chain([1.0] * 5), batches)
    assert [len(r) for r in prof.rows] == [2] * 5
    stage = prof.rows[2]
    assert stage[1].params < stage[0].params and stage[1].flops < stage[0].flops
    assert stage[1].out_bytes == stage[0].out_bytes == 32 * 4 * 4 * 4  # 32 channels at 4×4, fp32
    assert all(r[0].acc_drop == 0.0 for r in prof.rows)
    assert prof.rows[-1][1].acc_drop == 0.0  # the head is the same at every width
    assert set(stage[0].latency_s) == {"edge", "cloud"}
    assert len(prof.additive_check) == 3
    assert prof.additive_error == pytest.approx(
        sum(abs(c["measured"] - c["predicted"]) for c in prof.additive_check) / 3)


def test_profile_file_round_trip_and_placement(profiled, tmp_path):
    _, _, prof = profiled
    prof.save(tmp_path / "profile.json")
    again = ChainProfile.load(tmp_path / "profile.json")
    assert again == prof
    problem = again.problem(bandwidth=1e6, rtt_s=0.01)
    # stem and head have no inner units: their one option is the block itself
    assert [len(o) for o in problem.options] == [1, 2, 2, 2, 1]
    placement = solve(problem, floor=0.0)
    assert placement.widths[0] == placement.widths[-1] == 1.0
    assert problem.out_bytes[1] == prof.rows[1][0].out_bytes * prof.batch_size


def test_profile_file_refuses_other_json(tmp_path):
    (tmp_path / "p.json").write_text('{"format": "x"}')
    with pytest.raises(ConfigError, match="not an edgeadapt offload profile"):
        ChainProfile.load(tmp_path / "p.json")


def test_runs_are_timed_interleaved_per_thread_count():
    from edgeadapt.offload.profile import measure_latencies

    calls = []

    class Tag(torch.nn.Module):
        def __init__(self, tag):
            super().__init__()
            self.tag = tag

        def forward(self, x):
            calls.append((self.tag, torch.get_num_threads()))
            return x

    slow = DeviceProfile("slow", 1e6, 1, 1)
    two = DeviceProfile("two", 1.0, 2, 1)
    zero = torch.zeros(1)
    out = measure_latencies([(Tag("a"), zero, CLOUD), (Tag("b"), zero, two), (Tag("c"), zero, slow)],
                            warmup=1, repeats=2)
    # one-thread runs (a, c) warm up, then alternate per round; then the two-thread run
    assert calls == [("a", 1), ("c", 1), ("a", 1), ("c", 1), ("a", 1), ("c", 1), ("b", 2), ("b", 2), ("b", 2)]
    assert out[2] > out[0]


def test_devices_differing_only_in_slowdown_share_one_timing():
    from edgeadapt.offload.profile import measure_latencies

    calls = []

    class Count(torch.nn.Module):
        def forward(self, x):
            calls.append(1)
            return x

    module, x = Count(), torch.zeros(1)
    slow = DeviceProfile("slow", 3.0, 1, 1)
    fast = measure_latencies([(module, x, CLOUD), (module, x, slow), (Count(), x, slow)], warmup=1,
                             repeats=4)[:2]
    # the first two runs are one module on one input at one thread: timed once (1 warm-up + 4), the
    # third is another module: timed on its own
    assert len(calls) == 2 * (1 + 4)
    assert fast[1] == pytest.approx(3.0 * fast[0])


def test_calibrated_device_scales_by_published_over_measured():
    from edgeadapt.offload.profile import REFERENCE_LATENCY_S, calibrated_device

    nano = calibrated_device("edge", "jetson-nano", REFERENCE_LATENCY_S["jetson-nano"] / 2, 1)
    assert nano.slowdown == pytest.approx(2.0) and nano.threads == 1 and "jetson-nano" in nano.description
    with pytest.raises(ConfigError, match="known: jetson-nano"):
        calibrated_device("edge", "raspberry", 0.03, 1)
    with pytest.raises(ConfigError, match="positive"):
        calibrated_device("edge", "jetson-nano", 0.0, 1)
