"""Offload baselines: edge-only, cloud-only, Neurosurgeon, early exits (exit + split by search)."""

from __future__ import annotations

import pytest

from edgeadapt.data.registry import build_dataset
from edgeadapt.errors import InfeasibleError
from edgeadapt.models.registry import load_adapter
from edgeadapt.offload.baselines import bytes_sent, cloud_only, early_exit, edge_only, neurosurgeon
from edgeadapt.offload.blocks import block_chain
from edgeadapt.offload.exits import ExitProfile, exit_accuracies, train_exit_heads
from edgeadapt.offload.profile import BlockProfile, ChainProfile, DeviceProfile

EDGE = DeviceProfile("edge", 4.0, 1, 2**30)
CLOUD = DeviceProfile("cloud", 1.0, 1, 2**30)


def synthetic(edge_ms, cloud_ms, out_bytes, input_bytes=1000, base=0.9) -> ChainProfile:
    rows = [[BlockProfile(f"b{b}", 1.0, 10, 10, o, 100, {"edge": e / 1e3, "cloud": c / 1e3}, 0.0)]
            for b, (e, c, o) in enumerate(zip(edge_ms, cloud_ms, out_bytes))]
    return ChainProfile("synthetic", [r[0].block for r in rows], [1.0], [EDGE, CLOUD], 1, input_bytes, base,
                        rows, [[1.0] * len(rows)])


@pytest.mark.parametrize("bandwidth", [1e3, 1e5, 1e7])
def test_neurosurgeon_equals_brute_force_over_splits(bandwidth):
    edge, cloud = [5.0, 8.0, 3.0, 9.0, 1.0], [1.0, 2.0, 0.5, 2.0, 0.2]
    out = [4000, 200, 3000, 100, 40]
    rtt = 0.004
    problem = synthetic(edge, cloud, out).problem(bandwidth, rtt)
    brute = []
    for k in range(len(edge) + 1):  # blocks [0, k) on the edge, the rest on the cloud
        t = sum(edge[:k]) / 1e3 + sum(cloud[k:]) / 1e3
        if k < len(edge):
            t += rtt / 2 + (1000 if k == 0 else out[k - 1]) / bandwidth  # up, then the result back
            t += rtt / 2 + out[-1] / bandwidth
        brute.append(t)
    got = neurosurgeon(problem)
    assert got.latency_s == pytest.approx(min(brute))
    assert got.latency_s <= edge_only(problem).latency_s + 1e-12
    assert got.latency_s <= cloud_only(problem).latency_s + 1e-12


def test_edge_and_cloud_only_and_bytes_sent():
    problem = synthetic([5.0, 5.0], [1.0, 1.0], [300, 40]).problem(1e4, 0.002)
    assert edge_only(problem).bytes_sent == 0 and edge_only(problem).latency_s == pytest.approx(0.010)
    cloud = cloud_only(problem)
    assert cloud.bytes_sent == 1000 + 40
    assert cloud.latency_s == pytest.approx(0.002 + 0.002 + 1040 / 1e4)
    assert bytes_sent(problem, (0, 1)) == 300 + 40 and bytes_sent(problem, (1, 0)) == 1000 + 300
    assert cloud.hops == (("edge", "cloud", 1000), ("cloud", "edge", 40))
    small = synthetic([5.0, 5.0], [1.0, 1.0], [300, 40])
    small.devices = [EDGE, DeviceProfile("cloud", 1.0, 1, 150)]  # the cloud holds one block, not both
    with pytest.raises(InfeasibleError, match="no server holds"):
        cloud_only(small.problem(1e4, 0.002))


def test_early_exit_picks_the_cheapest_exit_meeting_the_floor():
    # exits after blocks 0, 1, 2; each later exit costs more; exit 0 misses the floor, exit 1 meets it
    prof = synthetic([2.0, 2.0, 2.0, 2.0, 2.0], [0.5] * 5, [10**6] * 5, input_bytes=10**6, base=0.95)
    exits = [ExitProfile(0, 0.60, {"edge": 1e-4, "cloud": 1e-4}, 10, 40),
             ExitProfile(1, 0.86, {"edge": 1e-4, "cloud": 1e-4}, 10, 40),
             ExitProfile(2, 0.90, {"edge": 1e-4, "cloud": 1e-4}, 10, 40)]
    got = early_exit(prof, exits, bandwidth=1e6, rtt_s=0.01, floor=0.85)
    assert got.accuracy == 0.86 and got.choice.startswith("exit after block 1") and got.exit_block == 1
    assert got.latency_s == pytest.approx(0.004 + 1e-4) and got.bytes_sent == 0  # slow link: all on the edge
    assert early_exit(prof, exits, 1e6, 0.01, floor=0.92).choice.startswith("no early exit")
    with pytest.raises(InfeasibleError, match="0.9500"):
        early_exit(prof, exits, 1e6, 0.01, floor=0.99)


def test_early_exit_offloads_when_the_link_is_fast():
    prof = synthetic([20.0, 20.0, 1.0], [1.0, 1.0, 1.0], [100, 100, 40], input_bytes=100)
    exits = [ExitProfile(0, 0.9, {"edge": 1e-3, "cloud": 1e-3}, 10, 40)]
    got = early_exit(prof, exits, bandwidth=1e9, rtt_s=0.0, floor=0.85)
    assert got.choice == "exit after block 0: cloud[0-1]" and got.bytes_sent == 100 + 40


def test_exit_heads_train_above_chance():
    adapter = load_adapter("tiny-resnet")
    data = build_dataset("digits", size=32)
    chain = block_chain(adapter)
    train = list(data.train.batches(128, shuffle=True, seed=0))[:6]
    heads = train_exit_heads(chain, train, num_labels=10, epochs=2, lr=3e-2)
    assert len(heads) == len(chain.blocks) - 2
    accs = exit_accuracies(chain, heads, list(data.val.batches(256)))
    assert max(accs) > 0.3  # chance is 0.1 on ten digits; the backbone is random and frozen
    assert all(not p.requires_grad or p.grad is None for p in chain.parameters())
