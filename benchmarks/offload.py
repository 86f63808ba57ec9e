"""Offload benchmark: placement of block descendants (ours) vs edge-only, cloud-only, Neurosurgeon and
early exits (exit + split by exhaustive search), on the same profiles and link model.

Models: a ResNet-18-style chain (transformers ``ResNetConfig``, basic blocks, depths [2, 2, 2, 2],
hidden sizes [16, 32, 64, 128], 32×32 digits, trained here and cached in ``runs/offload-resnet18``)
and tiny-vit on digits (``runs/source-vit``, the demo's source model). Per model: descendants at
widths 1, 0.75, 0.5, 0.25, distilled block-wise (``edgeadapt.offload.build``), profiled at batch 1
and 128; BranchyNet-style exit heads trained on the frozen chain and timed at the same batch sizes.

Devices: the emulated edge (``EMULATED_EDGE``: this machine at 1 thread, latencies ×4) with a cloud
(this machine at 1 thread, ×1: two threads are unusable on the shared 2-core machine), or with two
helpers (this machine at one thread, ×1; each may hold only half the full model's weights, as
TaskOffloadingAtEdge caps its server, so running everything off the edge needs both). Links: every
link at 1, 10 or 100 Mbit/s with a 5 ms round trip. Two accuracy floors per model (full accuracy − 1
and − 3 points, on the val split the profile measured). Latency = the cost model of
``edgeadapt.offload.placement`` for every method; accuracies on the test split. Ours is verified:
the chosen composition's accuracy is measured on val and, when the additive model was optimistic,
the program is re-solved with the floor raised by the shortfall (the early exits are chosen on their
measured val accuracy, so both meet the floor the same way).

Real transfers (ResNet, edge + cloud, batch 1 and 128, the three rates, the tight floor): each
method's transfers are sent over a veth pair between two network namespaces shaped by tc tbf
(``edgeadapt.offload.netem.veth_namespaces``; needs root) — or, without root, through the
application ``TokenBucket`` — and the measured latency is the profile's compute plus the measured
transfers plus the round trip (added in the application: no netem here). Nominal and measured
effective rates are reported. Transfers predicted to take over 3 s are not sent: their time is
extrapolated from the measured rate (flagged).

    OMP_NUM_THREADS=1 python benchmarks/offload.py           # ~1 min on 2 cores (first run trains the ResNet)
    python benchmarks/offload.py --quick                     # 1 epoch, few repeats: runs/bench-smoke/
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import RESULTS, SMOKE, write_json  # noqa: E402

from edgeadapt.data.registry import build_dataset  # noqa: E402
from edgeadapt.errors import ConfigError, InfeasibleError  # noqa: E402
from edgeadapt.models.registry import build_from_config, wrap  # noqa: E402
from edgeadapt.offload.baselines import (  # noqa: E402
    cloud_only,
    early_exit,
    edge_only,
    exit_accuracies,
    from_placement,
    neurosurgeon,
    profile_exits,
    train_exit_heads,
)
from edgeadapt.offload.blocks import WIDTHS  # noqa: E402
from edgeadapt.offload.build import OffloadBuildConfig, build_offload  # noqa: E402
from edgeadapt.offload.netem import TokenBucket, veth_namespaces  # noqa: E402
from edgeadapt.offload.placement import Option, PlacementProblem, solve  # noqa: E402
from edgeadapt.offload.profile import (  # noqa: E402
    EMULATED_EDGE,
    ChainProfile,
    DeviceProfile,
    accuracy,
    profile_chain,
)
from edgeadapt.pruning.checkpoint import load_model, save_pruned  # noqa: E402
from edgeadapt.recipes.source import train_source_vit  # noqa: E402
from edgeadapt.training.loop import TrainConfig, fit  # noqa: E402

RATES_MBIT = (1, 10, 100)
RTT_S = 0.005
BATCHES = (1, 128)
FLOOR_POINTS = (0.01, 0.03)  # floors: full val accuracy minus these
ANCHOR = 10.00 / 13.74  # LegoDNN-offload vs DDPG DEC-DNN-IO, batch 1 (TaskOffloadingAtEdge README)
# the cloud at one thread: two-thread OpenMP teams on this shared 2-core machine measured 10-100x
# slower than one thread (spin-waiting against other jobs), which would make any cloud look useless
CLOUD = DeviceProfile("cloud", 1.0, 1, 16 * 2**30, "this machine at 1 thread (x1)")
HELPER = DeviceProfile("helper", 1.0, 1, 1, "this machine at 1 thread; memory: half the full model")
METHODS = ("ours", "early-exit", "neurosurgeon", "edge-only", "cloud-only")
SEND_CAP_S = 3.0
VERIFY_TRIES = 6


def resnet18_tiny(out: Path, epochs: int) -> Any:
    """The ResNet-18-style model trained on digits, cached as an edgeadapt artifact in ``out``."""
    from transformers import ResNetConfig

    if (out / "manifest.json").is_file():
        return load_model(out)
    config = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                          depths=[2, 2, 2, 2], layer_type="basic", num_labels=10, image_size=32)
    adapter = wrap(build_from_config(config, "image-classification", seed=0), name="resnet18-tiny")
    data = build_dataset("digits", size=32)
    cfg = TrainConfig(epochs=epochs, learning_rate=3e-3, seed=0, progress=False, device="cpu")
    fit(adapter, lambda e: data.train.batches(64, shuffle=True, seed=e), cfg,
        val=lambda: data.val.batches(256), monitor="accuracy")
    adapter.model.cpu().eval()
    save_pruned(adapter, out, config={"benchmark": "offload", "epochs": epochs})
    return load_model(out)


def with_helpers(prof: ChainProfile, exits: list) -> tuple[ChainProfile, list]:
    """The edge + two helpers profile derived from the edge + cloud one: a helper runs at the edge's
    thread count, so its latency is the edge's measurement × helper slowdown / edge slowdown."""
    edge = prof.devices[0]
    model_bytes = sum(row[prof.widths.index(1.0)].mem_bytes for row in prof.rows)
    helpers = [replace(HELPER, name=f"helper-{c}", memory_bytes=model_bytes // 2) for c in "ab"]
    scale = HELPER.slowdown / edge.slowdown

    def lat(d: dict[str, float]) -> dict[str, float]:
        return {edge.name: d[edge.name], **{h.name: d[edge.name] * scale for h in helpers}}

    rows = [[replace(r, latency_s=lat(r.latency_s)) for r in row] for row in prof.rows]
    return (replace(prof, devices=[edge, *helpers], rows=rows),
            [replace(x, latency_s=lat(x.latency_s)) for x in exits])


def solve_time_24x5x3() -> float:
    """Seconds HiGHS takes on a random 24 blocks × 5 widths × 3 devices placement (the issue's size)."""
    rng = np.random.default_rng(0)
    options = tuple(tuple(Option(w, 0.004 * (1 - w) * rng.random(),
                                 tuple(float(rng.random()) * 1e-3 * w * s for s in (4.0, 1.0, 1.5)),
                                 int(1e5 * w)) for w in (1.0, 0.8, 0.6, 0.4, 0.2)) for _ in range(24))
    prob = PlacementProblem(options, tuple(int(x) for x in rng.integers(1e3, 1e5, 24)), 12288,
                            ("edge", "a", "b"), (10**9,) * 3, ((1.25e6,) * 3,) * 3, ((0.005,) * 3,) * 3, 0.95)
    start = time.perf_counter()
    solve(prob, 0.9)
    return time.perf_counter() - start


def prepare(name: str, adapter: Any, path: str, out: Path, quick: bool) -> dict[str, Any]:
    """Descendants + profiles at both batch sizes + exit heads for one model."""
    t0 = time.perf_counter()
    size = int(adapter.config.image_size)
    data = build_dataset("digits", size=size)
    val, test = list(data.val.batches(256)), list(data.test.batches(256))
    repeats, warmup = (2, 1) if quick else (21, 3)  # medians of many: the 2 cores are shared
    cfg = OffloadBuildConfig(path, widths=WIDTHS, epochs=1 if quick else 6, batch_size=64,
                             profile_batch_size=1, warmup=warmup, repeats=repeats, checks=4)
    desc, prof1 = build_offload(cfg, out, devices=(EMULATED_EDGE, CLOUD), adapter=adapter)
    profiles = {1: prof1, 128: profile_chain(desc, val, (EMULATED_EDGE, CLOUD), 128, warmup, repeats,
                                             checks=0)}
    chain = desc.chain([1.0] * len(desc.names))
    train = list(data.train.batches(64, shuffle=True, seed=0))
    heads = train_exit_heads(chain, train, int(adapter.config.num_labels), epochs=1 if quick else 4, lr=1e-2)
    val_acc, test_acc = exit_accuracies(chain, heads, val), exit_accuracies(chain, heads, test)
    exits = {bs: profile_exits(chain, heads, val_acc, val[0]["pixel_values"][:bs],
                               (EMULATED_EDGE, CLOUD), warmup, repeats) for bs in BATCHES}
    return {"name": name, "desc": desc, "profiles": profiles, "exits": exits, "val": val, "test": test,
            "exit_test": test_acc, "full_test": accuracy(chain, test), "seconds": time.perf_counter() - t0}


def run_cells(m: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (devices, batch, rate, floor) cell of one model: each method's choice and cost."""
    rows: list[dict[str, Any]] = []
    measured: dict[tuple[float, ...], tuple[float, float]] = {}

    def acc_of(widths: tuple[float, ...]) -> tuple[float, float]:
        if widths not in measured:
            c = m["desc"].chain(list(widths))
            measured[widths] = (accuracy(c, m["val"]), accuracy(c, m["test"]))
        return measured[widths]

    base = m["profiles"][1].base_accuracy
    n_val = sum(int(b["labels"].numel()) for b in m["val"])
    floors = [round(base - p, 4) for p in FLOOR_POINTS]
    for setup in ("edge+cloud", "edge+2 helpers"):
        for bs in BATCHES:
            prof, exits = m["profiles"][bs], m["exits"][bs]
            if setup != "edge+cloud":
                prof, exits = with_helpers(prof, exits)
            for rate in RATES_MBIT:
                bw = rate * 1e6 / 8
                problem = prof.problem(bw, RTT_S)
                for fi, floor in enumerate(floors):
                    results: dict[str, Any] = {}
                    t = time.perf_counter()
                    pl, target, tries = solve(problem, floor), floor, 1
                    solve_s = time.perf_counter() - t
                    # verified floor: the additive model can be optimistic, so measure the chosen
                    # composition on val and re-solve with the floor raised by the shortfall
                    while acc_of(pl.widths)[0] < floor - 1e-9 and tries < VERIFY_TRIES:
                        target += floor - acc_of(pl.widths)[0] + 1 / n_val
                        try:
                            pl, tries = solve(problem, target), tries + 1
                        except InfeasibleError:
                            pl, tries = solve(problem, base), VERIFY_TRIES
                    ours = from_placement(problem, pl)
                    val_acc, test_acc = acc_of(pl.widths)
                    results["ours"] = {**ours.to_dict(), "accuracy_val": val_acc, "accuracy_test": test_acc,
                                       "solve_s": solve_s, "solves": tries, "internal_floor": target}
                    ee = early_exit(prof, exits, bw, RTT_S, floor)
                    results["early-exit"] = {**ee.to_dict(), "accuracy_val": ee.accuracy, "accuracy_test":
                                             m["full_test"] if ee.exit_block is None
                                             else m["exit_test"][ee.exit_block]}
                    for fn in (neurosurgeon, edge_only, cloud_only):
                        try:
                            r = fn(problem)
                            results[r.method] = {**r.to_dict(), "accuracy_val": base,
                                                 "accuracy_test": m["full_test"]}
                        except InfeasibleError as exc:
                            results[fn.__name__.replace("_", "-")] = {"latency_s": None, "choice": str(exc)}
                    best = min(v["latency_s"] for k, v in results.items() if k != "ours" and v["latency_s"])
                    rows.append({"model": m["name"], "devices": setup, "batch": bs, "rate_mbit": rate,
                                 "floor": floor, "floor_name": ("tight", "loose")[fi], "methods": results,
                                 "ours_vs_early_exit": ours.latency_s / ee.latency_s,
                                 "ours_vs_best_baseline": ours.latency_s / best})
    return rows


# -- real transfers ----------------------------------------------------------------------------
SERVER = r"""
import socket, struct, sys
def exact(c, n):
    while n > 0:
        b = c.recv(min(n, 1 << 20))
        if not b: raise EOFError
        n -= len(b)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4)
while True:
    c, _ = s.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            head = b""
            while len(head) < 16:
                b = c.recv(16 - len(head))
                if not b: raise EOFError
                head += b
            up, down = struct.unpack("!QQ", head)
            exact(c, up); c.sendall(b"\0" * down)
    except EOFError:
        c.close()
"""

CLIENT = r"""
import json, socket, statistics, struct, sys, time
ip, port, jobs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
for _ in range(100):
    try:
        c = socket.create_connection((ip, port), timeout=60); break
    except OSError:
        time.sleep(0.05)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def exact(n):
    while n > 0:
        b = c.recv(min(n, 1 << 20))
        if not b: raise EOFError
        n -= len(b)
out = []
for up, down, reps in jobs:
    times = []
    for _ in range(reps):
        t = time.perf_counter(); c.sendall(struct.pack("!QQ", up, down) + b"\0" * up); exact(down)
        times.append(time.perf_counter() - t)
    out.append(statistics.median(times))
print(json.dumps(out))
"""


def transfers_veth(rate_mbit: float, jobs: list[tuple[int, int, int]]) -> list[float]:
    """Median seconds of each ``(up bytes, down bytes, repeats)`` exchange between two namespaces
    joined by a tbf-shaped veth pair at ``rate_mbit``."""
    with veth_namespaces(rate_mbit) as pair:
        server = subprocess.Popen(pair.exec(pair.ns_b, [sys.executable, "-c", SERVER, pair.ip_b, "50071"]),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            done = subprocess.run(pair.exec(pair.ns_a, [sys.executable, "-c", CLIENT, pair.ip_b, "50071",
                                                        json.dumps(jobs)]),
                                  capture_output=True, text=True, timeout=300, check=True)
        finally:
            server.terminate()
            server.wait(timeout=10)
        return json.loads(done.stdout)


def transfers_bucket(rate_mbit: float, jobs: list[tuple[int, int, int]]) -> list[float]:
    """The same exchanges through the application :class:`TokenBucket` (no root needed)."""
    rate = rate_mbit * 1e6 / 8
    out = []
    for up, down, reps in jobs:
        times = []
        for _ in range(reps):
            bucket = TokenBucket(rate, 8000)
            t = time.perf_counter()
            bucket.consume(up + 16)
            bucket.consume(down)
            times.append(time.perf_counter() - t)
        out.append(statistics.median(times))
    return out


def real_transfers(rows: list[dict[str, Any]], quick: bool) -> dict[str, Any]:
    """Send every transfer of each method's choice in the ResNet edge + cloud cells (tight floor)
    over the shaped link and compare the measured latency with the predicted one."""
    cells = [r for r in rows if r["model"] == "resnet18-tiny" and r["devices"] == "edge+cloud"
             and r["floor_name"] == "tight"]
    reps = 1 if quick else 3
    mechanism, note = "veth+tbf", ""
    rates, out_rows = [], []
    for rate in RATES_MBIT:
        bw = rate * 1e6 / 8
        probe = int(bw * (0.3 if quick else 1.0))
        sizes = sorted({h[2] for r in cells if r["rate_mbit"] == rate for v in r["methods"].values()
                        for h in v.get("hops", []) if h[2] / bw <= SEND_CAP_S})
        jobs = [(probe, 1, reps)] + [(n, 1, reps) for n in sizes]
        try:
            if mechanism == "veth+tbf":
                times = transfers_veth(rate, jobs)
        except (ConfigError, subprocess.SubprocessError, OSError) as exc:
            mechanism, note = "token-bucket", f"veth namespaces unavailable ({exc}); application token bucket"
        if mechanism == "token-bucket":
            times = transfers_bucket(rate, jobs)
        effective = probe / times[0]
        rates.append({"nominal_mbit": rate, "measured_mbit": effective * 8 / 1e6, "probe_bytes": probe})
        sent = dict(zip(sizes, times[1:]))
        for r in (c for c in cells if c["rate_mbit"] == rate):
            for method, v in r["methods"].items():
                if v.get("latency_s") is None:
                    continue
                hop_s, extrapolated = 0.0, 0
                for _, _, n in v["hops"]:
                    if n in sent:
                        hop_s += RTT_S / 2 + sent[n]
                    else:
                        hop_s += RTT_S / 2 + n / effective
                        extrapolated += 1
                out_rows.append({"batch": r["batch"], "rate_mbit": rate, "method": method,
                                 "predicted_s": v["latency_s"], "measured_s": v["compute_s"] + hop_s,
                                 "transfers": len(v["hops"]), "extrapolated": extrapolated})
    return {"mechanism": mechanism, "note": note, "rates": rates, "rows": out_rows,
            "send_cap_s": SEND_CAP_S, "repeats": reps}


# -- summary -----------------------------------------------------------------------------------
def targets(rows: list[dict[str, Any]], solve_s: float, real: dict[str, Any]) -> list[dict[str, Any]]:
    ratios = [r["ours_vs_early_exit"] for r in rows]
    best = [r["ours_vs_best_baseline"] for r in rows]
    acc_ok = [r["methods"]["ours"]["accuracy_val"] >= r["floor"] - 1e-9 for r in rows]
    rate_err = max(abs(x["measured_mbit"] / x["nominal_mbit"] - 1) for x in real["rates"])
    return [
        {"target": f"ours / early-exit latency <= {ANCHOR:.3f} (LegoDNN 10.00 vs DDPG 13.74 ms), median "
                   "over cells", "met": statistics.median(ratios) <= ANCHOR,
         "value": f"median {statistics.median(ratios):.3f}, max {max(ratios):.3f}; met in "
                  f"{sum(x <= ANCHOR for x in ratios)}/{len(ratios)} cells"},
        {"target": "ours <= 0.7x the best baseline's latency at the same floor, every cell",
         "met": max(best) <= 0.7,
         "value": f"max {max(best):.3f}, median {statistics.median(best):.3f}; met in "
                  f"{sum(x <= 0.7 for x in best)}/{len(best)} cells"},
        {"target": "ours' measured val accuracy meets the floor (additive model), every cell",
         "met": all(acc_ok), "value": f"{sum(acc_ok)}/{len(acc_ok)} cells"},
        {"target": "integer program, 24 blocks x 5 widths x 3 devices, solves in <= 1 s",
         "met": solve_s <= 1.0, "value": f"{solve_s:.3f} s"},
        {"target": "shaped link's measured rate within 10% of nominal", "met": rate_err <= 0.10,
         "value": f"worst {rate_err:.1%} ({real['mechanism']})"},
    ]


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeadapt.tracking import save_figure

    panels = [(m, bs) for m in dict.fromkeys(r["model"] for r in rows) for bs in BATCHES]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (model, bs) in zip(np.atleast_1d(axes), panels):
        cell = [r for r in rows if r["model"] == model and r["batch"] == bs and r["devices"] == "edge+cloud"
                and r["floor_name"] == "tight"]
        for method in METHODS:
            pts = [(r["rate_mbit"], r["methods"][method]["latency_s"]) for r in cell
                   if r["methods"][method].get("latency_s")]
            ax.plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], marker="o", label=method)
        ax.set(xscale="log", yscale="log", xlabel="link (Mbit/s)", ylabel="latency (ms)",
               title=f"{model}, batch {bs}, edge+cloud")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 epoch, few repeats; results to runs/bench-smoke/")
    args = ap.parse_args()
    start = time.perf_counter()
    runs = Path("runs") / ("bench-smoke/offload" if args.quick else "offload-bench")
    resnet_dir = Path("runs/bench-smoke/offload-resnet18" if args.quick else "runs/offload-resnet18")
    resnet = resnet18_tiny(resnet_dir, epochs=2 if args.quick else 8)
    vit, _ = train_source_vit("runs/source-vit", progress=False)
    models = [prepare("resnet18-tiny", resnet, str(resnet_dir), runs / "resnet18-tiny", args.quick),
              prepare("tiny-vit", vit, "runs/source-vit", runs / "tiny-vit", args.quick)]
    rows = [row for m in models for row in run_cells(m)]
    real = real_transfers(rows, args.quick)
    solve_s = solve_time_24x5x3()
    result = {
        "benchmark": "offload", "quick": args.quick,
        "omp_num_threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
        "devices": {"edge": EMULATED_EDGE.to_dict(), "cloud": CLOUD.to_dict(),
                    "helper": {**HELPER.to_dict(), "memory_bytes": "half the full model's weight bytes"}},
        "edge_slowdown": EMULATED_EDGE.slowdown, "edge_threads": EMULATED_EDGE.threads,
        "rtt_s": RTT_S, "rates_mbit": list(RATES_MBIT), "widths": list(WIDTHS), "anchor_ratio": ANCHOR,
        "models": [{"name": m["name"], "blocks": m["desc"].names, "full_accuracy_val":
                    m["profiles"][1].base_accuracy, "full_accuracy_test": m["full_test"],
                    "exit_accuracy_val": [x.accuracy for x in m["exits"][1]], "exit_accuracy_test":
                    m["exit_test"], "additive_error": m["profiles"][1].additive_error,
                    "prepare_s": round(m["seconds"], 1)} for m in models],
        "floor_met_test": {k: sum(r["methods"][k]["accuracy_test"] >= r["floor"] - 1e-9 for r in rows)
                           for k in ("ours", "early-exit")},
        "rows": rows, "real_transfers": real, "solve_24x5x3_s": solve_s,
        "seconds": round(time.perf_counter() - start, 1)}
    result["targets"] = targets(rows, solve_s, real)
    out = (SMOKE if args.quick else RESULTS) / "offload.json"
    write_json(out, result)
    plot(rows, out.with_suffix(".png"))
    for t in result["targets"]:
        print(f"{'met' if t['met'] else 'MISSED'}: {t['target']}: {t['value']}")
    print(f"wrote {out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
