"""Placement that may stop at an early exit: exact against brute force, and the per-exit drops."""

from __future__ import annotations

import itertools

import pytest

from edgeadapt.errors import ConfigError, InfeasibleError
from edgeadapt.offload.baselines import early_exit
from edgeadapt.offload.blocks import block_modules, make_descendants
from edgeadapt.offload.exits import (
    ExitProfile,
    exit_accuracies,
    exit_accuracy_drops,
    exit_problem,
    solve_with_exits,
    train_exit_heads,
)
from edgeadapt.offload.placement import solve
from edgeadapt.offload.profile import BlockProfile, ChainProfile, DeviceProfile

from .conftest import trained_tiny_resnet

EDGE = DeviceProfile("edge", 4.0, 1, 2**30)
CLOUD = DeviceProfile("cloud", 1.0, 1, 2**30)
WIDTHS = [1.0, 0.5]


def two_width_profile(base: float = 0.95) -> ChainProfile:
    """Five blocks at widths 1.0 and 0.5 (half the latency, half the weights, drop 0.01 each)."""
    rows = []
    for b, (e, c, o) in enumerate(zip([4.0, 3.0, 5.0, 2.0, 1.0], [1.0, 0.8, 1.2, 0.5, 0.2],
                                      [4000, 2000, 1000, 500, 40])):
        rows.append([BlockProfile(f"b{b}", w, int(100 * w), 10, o, int(100 * w),
                                  {"edge": e * w / 1e3, "cloud": c * w / 1e3}, 0.0 if w == 1.0 else 0.01)
                     for w in WIDTHS])
    return ChainProfile("synthetic", [r[0].block for r in rows], WIDTHS, [EDGE, CLOUD], 1, 8000, base, rows,
                        [[1.0] * 5])


def exits_with_drops() -> list[ExitProfile]:
    head = {"edge": 2e-4, "cloud": 1e-4}
    return [ExitProfile(0, 0.70, head, 10, 40, ((0.0, 0.02),)),
            ExitProfile(1, 0.90, head, 10, 40, ((0.0, 0.015), (0.0, 0.01))),
            ExitProfile(2, 0.93, head, 10, 40, ((0.0, 0.005), (0.0, 0.005), (0.0, 0.02)))]


def brute_force(prof: ChainProfile, exits: list[ExitProfile], bw: float, rtt: float, floor: float) -> float:
    """Every end (each exit, the whole chain) × every width × every device, latency written out."""
    n, names = len(prof.blocks), ["edge", "cloud"]
    best = float("inf")
    ends = [(None, n - 1)] + [(ex, ex.block) for ex in exits]
    for ex, last in ends:
        k = last + 1
        for ws in itertools.product(range(len(WIDTHS)), repeat=k):
            if ex is None:
                acc = prof.base_accuracy - sum(prof.rows[b][w].acc_drop for b, w in enumerate(ws))
            else:
                acc = ex.accuracy - sum(ex.drops[b][w] for b, w in enumerate(ws))
            if acc < floor - 1e-12:
                continue
            stages = [(prof.rows[b][w].latency_s, prof.rows[b][w].out_bytes) for b, w in enumerate(ws)]
            if ex is not None:
                stages.append((ex.latency_s, ex.out_bytes))
            for devs in itertools.product(range(2), repeat=len(stages)):
                t, here, size = 0.0, 0, prof.input_bytes
                for (lat, out), d in zip(stages, devs):
                    if d != here:
                        t += rtt / 2 + size / bw
                    t += lat[names[d]]
                    here, size = d, out
                if here != 0:
                    t += rtt / 2 + size / bw
                best = min(best, t)
    return best


@pytest.mark.parametrize("bw,floor", [(1e4, 0.88), (1e6, 0.88), (1e9, 0.88), (1e6, 0.92), (1e9, 0.66)])
def test_solve_with_exits_matches_brute_force(bw, floor):
    prof, exits = two_width_profile(), exits_with_drops()
    got = solve_with_exits(prof, exits, bw, 0.002, floor)
    assert got.placement.latency_s == pytest.approx(brute_force(prof, exits, bw, 0.002, floor))
    assert got.placement.accuracy >= floor - 1e-12
    # never slower than the widths-only program or the early-exit baseline on the same profile
    assert got.placement.latency_s <= solve(prof.problem(bw, 0.002), floor).latency_s + 1e-12
    assert got.placement.latency_s <= early_exit(prof, exits, bw, 0.002, floor).latency_s + 1e-12


def test_exit_problem_and_decoded_choice():
    prof, exits = two_width_profile(), exits_with_drops()
    sub = exit_problem(prof.problem(1e4, 0.002), prof, exits[1])
    assert len(sub.options) == 3 and sub.base_accuracy == 0.90  # blocks 0, 1 and the head
    assert [o.acc_drop for o in sub.options[1]] == [0.0, 0.01] and sub.out_bytes[-1] == 40
    # slow link: all on the edge, exit 1; halving both blocks would reach 0.875 < 0.88, so only the
    # block that saves more (block 0: 2 ms for 0.015) is halved
    got = solve_with_exits(prof, exits, 1e4, 0.002, 0.88)
    assert got.exit_block == 1 and got.widths == (0.5, 1.0) and set(got.placement.devices) == {0}
    assert got.placement.accuracy == pytest.approx(0.90 - 0.015)
    assert got.to_dict()["exit_block"] == 1


def test_exit_without_drops_offers_full_width_only():
    prof = two_width_profile()
    bare = [ExitProfile(1, 0.90, {"edge": 2e-4, "cloud": 1e-4}, 10, 40)]
    sub = exit_problem(prof.problem(1e4, 0.002), prof, bare[0])
    assert all(o.width == 1.0 for opts in sub.options for o in opts)
    got = solve_with_exits(prof, bare, 1e4, 0.002, 0.89)
    assert got.placement.latency_s == pytest.approx(early_exit(prof, bare, 1e4, 0.002, 0.89).latency_s)


def test_no_exits_is_the_plain_program_and_unreachable_floor_names_the_best():
    prof = two_width_profile()
    got = solve_with_exits(prof, [], 1e6, 0.002, 0.9)
    assert got.exit_block is None
    assert got.placement.latency_s == pytest.approx(solve(prof.problem(1e6, 0.002), 0.9).latency_s)
    with pytest.raises(InfeasibleError, match=r"best exit \(after block 2\) reaches 0\.9300 .* The whole "
                       r"chain: .*0\.9500"):  # not "best full-width accuracy" for an exit (re-check)
        solve_with_exits(prof, exits_with_drops(), 1e6, 0.002, 0.97)


def test_exit_accuracy_drops_match_direct_measurement():
    adapter, splits = trained_tiny_resnet(epochs=1)
    desc = make_descendants(adapter, (1.0, 0.5))
    chain = desc.chain([1.0] * len(desc.names))
    train = list(splits.train.batches(128, shuffle=True, seed=0))[:4]
    heads = train_exit_heads(chain, train, num_labels=10, epochs=1, lr=3e-2)
    val = list(splits.val.batches(256))
    base, drops = exit_accuracy_drops(desc, heads, val, settings=[1.0])
    assert base == exit_accuracies(chain, heads, val)
    n = len(desc.names)
    for e in range(len(heads)):
        assert len(drops[e]) == e + 1 and all(row[0] == 0.0 for row in drops[e])
    b, e = 1, len(heads) - 1  # block 1 at half width, read at the last exit
    narrowed = exit_accuracies(desc.chain([1.0] * b + [0.5] + [1.0] * (n - b - 1)), heads, val)
    assert drops[e][b][1] == pytest.approx(base[e] - narrowed[e])
    assert drops[0][0][1] == pytest.approx(0.0)  # the stem has no inner width: same module


def test_bad_inputs_are_config_errors_naming_the_fix():
    """Before (new-user trial): IndexError for a label beyond num_labels, pixel-only or no batches,
    ViT exits on a ResNet profile; a negative round trip gave a negative latency; exit block -1 and a
    floor of 1.5 or NaN were accepted or reported as merely unreachable."""
    adapter, splits = trained_tiny_resnet(epochs=1)
    chain = make_descendants(adapter, (1.0, 0.5)).chain([1.0] * len(block_modules(adapter)[0]))
    train = list(splits.train.batches(64))[:2]
    with pytest.raises(ConfigError, match="num_labels=7 but batch 0 holds label 9"):
        train_exit_heads(chain, train, num_labels=7)
    with pytest.raises(ConfigError, match="'pixel_values' and 'labels'"):
        train_exit_heads(chain, [b["pixel_values"] for b in train], num_labels=10)
    with pytest.raises(ConfigError, match="at least one batch"):
        train_exit_heads(chain, [], num_labels=10)
    prof = two_width_profile()
    head = {"edge": 2e-4, "cloud": 1e-4}
    with pytest.raises(ConfigError, match="exit after block -1"):
        solve_with_exits(prof, [ExitProfile(-1, 0.9, head, 10, 40)], 1e6, 0.002, 0.5)
    wrong = ExitProfile(1, 0.9, head, 10, 40, ((0.0, 0.0, 0.0, 0.0),))  # another chain's widths
    with pytest.raises(ConfigError, match="profile the exits on this chain"):
        solve_with_exits(prof, [wrong], 1e6, 0.002, 0.5)
    with pytest.raises(ConfigError, match="round trip must be >= 0"):
        prof.problem(1e6, -2.0)
    for floor in (1.5, float("nan")):
        with pytest.raises(ConfigError, match="not a fraction"):
            solve(prof.problem(1e6, 0.002), floor)


def test_the_chain_profile_reuses_the_compositions_the_exit_drops_traced(monkeypatch):
    """Before (review): offload build evaluated every width composition twice on val, once for the
    exits' drops and once for the chain's. With one shared dict the chain's drops come from the
    exits' traces (only compositions narrowing blocks after the last exit are new) and are the
    same numbers."""
    from edgeadapt.offload import profile as profile_module
    from edgeadapt.offload.profile import EMULATED_EDGE, accuracy_drops

    adapter, splits = trained_tiny_resnet(epochs=1)
    desc = make_descendants(adapter, (1.0, 0.5))
    chain = desc.chain([1.0] * len(desc.names))
    heads = train_exit_heads(chain, list(splits.train.batches(128, shuffle=True, seed=0))[:3], 10)
    val = list(splits.val.batches(256))
    alone = accuracy_drops(desc, val)
    shared: dict = {}
    exit_accuracy_drops(desc, heads, val, measured=shared)
    new = {w for w in alone[2] if w not in shared}  # blocks after the last exit narrowed
    calls = []
    real = profile_module.accuracy
    monkeypatch.setattr(profile_module, "accuracy", lambda c, b: calls.append(1) or real(c, b))
    prof = profile_module.profile_chain(desc, val, [EMULATED_EDGE], warmup=0, repeats=1, checks=0,
                                        measured=shared)
    assert prof.base_accuracy == alone[0] and [[r.acc_drop for r in row] for row in prof.rows] == alone[1]
    assert len(calls) == len(new) < len(alone[2]) / 2  # most compositions were not evaluated again
