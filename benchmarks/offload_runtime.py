"""Offload runtime benchmark: the real ``offload serve`` / ``offload run`` processes, not the cost model.

Four measurements on tiny-resnet (2 epochs on digits, 32×32) and its descendants at widths 1 and
0.5 (``edgeadapt.offload.build.build_offload``, cached in ``runs/offload-runtime/built``):

1. **Malformed frames.** 1,000 seeded corruptions of a valid ``Run`` frame
   (``edgeadapt.offload.fuzz.fuzz_server``: truncation, bit flips, wrong dtype/shape/size, oversize,
   bad token, garbage headers, bad fields) sent to an ``offload serve`` process, then a valid
   request whose answer must equal the local chain's; a crash is no answer, an ``INTERNAL``, a dead
   process or a wrong final answer.
2. **Latency of real request streams.** ``offload run`` processes against that server, batch 1,
   requests one after another: p50/p95 per request as the edge measured them, over loopback and —
   with root and iproute2 — over a veth pair between two namespaces shaped to 10 Mbit/s by tc tbf
   (``edgeadapt.offload.netem.veth_namespaces``; no added delay).
3. **Early exits in real processes.** ``run --floor --emulate-edge`` (the edge's blocks run at its
   profile's slowdown, as the plan assumes) on the measured profile with the artifact's exit heads
   (trained 2 epochs by ``build_offload(exit_epochs=2)``) and with ``--no-exits``: the same floor,
   real requests; the re-plan and fast-cloud rows use ``--no-exits`` (whole chain).
4. **Re-plan time.** ``run --floor`` while the link steps down and back up: seconds from each step to
   the first placement change after it. With the application token bucket
   (``edgeadapt.offload.netem.SteppedBucket``: loopback → 0.16 Mbit/s after 1 s, back after 2 s more;
   three runs) and on the veth pair (100 → 1 → 100 Mbit/s by ``tc qdisc change``). The measured
   profile puts every block on the edge on loopback (this machine's 2-thread "cloud" is slower than
   the 1-thread emulated edge under load), so there would be nothing to re-plan: these runs use a
   profile in which the edge is 20× the emulated edge's latencies and the cloud this machine at one
   thread (``fast-cloud.json``, stated in the JSON) — offloading pays on a fast link and not on a
   slow one.

    OMP_NUM_THREADS=1 python benchmarks/offload_runtime.py          # ~3 min on 2 shared cores
    python benchmarks/offload_runtime.py --quick         # 200 frames, short runs: runs/bench-smoke/
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import REPO, RESULTS, SMOKE, write_json  # noqa: E402

from edgeadapt.data.registry import build_dataset  # noqa: E402
from edgeadapt.errors import ConfigError  # noqa: E402
from edgeadapt.models.registry import load_adapter  # noqa: E402
from edgeadapt.offload.build import OffloadBuildConfig, build_offload  # noqa: E402
from edgeadapt.offload.fuzz import fuzz_server  # noqa: E402
from edgeadapt.offload.netem import SteppedBucket, namespaces_available, set_rate, veth_namespaces  # noqa: E402
from edgeadapt.offload.profile import EMULATED_EDGE, LOCAL_CLOUD, ChainProfile  # noqa: E402
from edgeadapt.offload.run import OffloadRunConfig, run_offload  # noqa: E402
from edgeadapt.offload.serve import load_chain  # noqa: E402
from edgeadapt.offload.transport import encode_frame  # noqa: E402
from edgeadapt.training.loop import TrainConfig, fit  # noqa: E402

TOKEN = "offload-runtime-benchmark-token"
MAX_FRAME = 1 << 20
REPLAN_TARGET_S = 2.0
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def build(out: Path, quick: bool) -> Path:
    """tiny-resnet trained on digits and its descendants + profile (cached), and ``fast-cloud.json``."""
    built = out / "built"
    if not (built / "exits.json").is_file():  # (a cache from before exits: rebuilt)
        shutil.rmtree(built, ignore_errors=True)
        adapter = load_adapter("tiny-resnet")
        splits = build_dataset("digits", size=32)
        fit(adapter, lambda e: splits.train.batches(64, shuffle=True, seed=e),
            TrainConfig(epochs=1 if quick else 2, learning_rate=3e-3, seed=0, progress=False, device="cpu"))
        adapter.model.cpu().eval()
        cfg = OffloadBuildConfig("tiny-resnet", widths=(1.0, 0.5), epochs=1 if quick else 2, batch_size=128,
                                 warmup=1, repeats=3 if quick else 7, checks=0, exit_epochs=1 if quick else 2)
        build_offload(cfg, built, devices=[EMULATED_EDGE, LOCAL_CLOUD], adapter=adapter)
    data = json.loads((built / "profile.json").read_text())
    for row in data["rows"]:
        for r in row:
            edge = r["latency_s"]["edge"]
            r["latency_s"] = {"edge": edge * 20, "cloud": edge / EMULATED_EDGE.slowdown}
    (built / "fast-cloud.json").write_text(json.dumps(data))
    return built


class Server:
    """An ``offload serve`` process (``prefix``: e.g. ``ip netns exec NS``) on ``host``, a free port."""

    def __init__(self, model: Path, token_file: Path, host: str = "127.0.0.1", prefix: Sequence[str] = ()):
        command = [*prefix, sys.executable, "-m", "edgeadapt", "offload", "serve", "--model", str(model),
                   "--host", host, "--port", "0", "--token-file", str(token_file),
                   "--max-frame-bytes", str(MAX_FRAME)]
        self.proc = subprocess.Popen(command,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        line = self.proc.stdout.readline()
        if not line.startswith("serving"):
            self.proc.kill()
            raise RuntimeError(f"offload serve did not start: {line}{self.proc.stderr.read()}")
        self.address = f"{host}:{int(line.rsplit(':', 1)[1])}"
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # never block on a full pipe

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def cli_run(model: Path, server: str, token_file: Path, args: list[str], prefix: Sequence[str] = (),
            timeout: float = 600) -> dict[str, Any]:
    """One ``offload run ... --json`` process; its report plus ``process_s`` (wall, import included)."""
    t0 = time.time()
    command = [*prefix, sys.executable, "-m", "edgeadapt", "offload", "run", "--model", str(model),
               "--server", server, "--token-file", str(token_file), *args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"offload run {args} failed ({done.returncode}): {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    report.update(process_s=time.time() - t0, launched_at=t0, stderr=done.stderr.strip()[-500:])
    return report


def latency_row(link: str, case: str, r: dict[str, Any]) -> dict[str, Any]:
    return {"link": link, "case": case, "mode": r["mode"], "requests_by_mode": r["requests_by_mode"],
            "requests": r["requests"], "batch_size": r["batch_size"], "p50_ms": r["latency_ms"]["p50"],
            "p95_ms": r["latency_ms"]["p95"], "accuracy": r["accuracy"], "bytes_sent": r["bytes_sent"],
            "probe_bytes_sent": r["probe_bytes"]["sent"], "bandwidth_estimate_mbps": r["bandwidth_mbps"],
            "rtt_ms": r["rtt_ms"], "replans": len(r["replans"]), "replan_checks": r["replan_checks"],
            "placement": [f"{b['width']}@{b['device']}" for b in r["placement"]["blocks"]],
            "exit_block": r.get("exit_block"), "requests_by_exit": r.get("requests_by_exit")}


def latencies(built: Path, server: str, token_file: Path, link: str, floor: float, limit: int,
              prefix: Sequence[str] = ()) -> list[dict[str, Any]]:
    n = len(json.loads((built / "profile.json").read_text())["blocks"])
    cases = [("edge-only (--split %d)" % n, ["--split", str(n)]),
             ("--split 2 (blocks 0-1 on the edge)", ["--split", "2"]),
             ("cloud-only (--split 0)", ["--split", "0"]),
             (f"--floor {floor} (fast-cloud profile)", ["--floor", str(floor), "--no-exits", "--profile",
                                                        str(built / "fast-cloud.json")]),
             (f"--floor {floor}, whole chain (--no-exits), emulated edge",
              ["--floor", str(floor), "--no-exits", "--emulate-edge"]),
             (f"--floor {floor} with early exits, emulated edge", ["--floor", str(floor), "--emulate-edge"])]
    rows = []
    for case, args in cases:
        r = cli_run(built, server, token_file, [*args, "--batch-size", "1", "--limit", str(limit)], prefix)
        rows.append(latency_row(link, case, r))
        row = rows[-1]
        print(f"  {link:<22} {case:<38} p50 {row['p50_ms']:7.2f} ms  p95 {row['p95_ms']:7.2f} ms  "
              f"{row['mode']}", flush=True)
    return rows


def replan_delays(replans: list[dict[str, Any]], changes: list[float]) -> list[float | None]:
    """Seconds from each link change to the first placement change after it (``None``: none before
    the next link change or the end)."""
    out: list[float | None] = []
    for k, t in enumerate(changes):
        end = changes[k + 1] if k + 1 < len(changes) else float("inf")
        after = [r["time"] for r in replans if t <= r["time"] < end]
        out.append(min(after) - t if after else None)
    return out


def replan_bucket(built: Path, server: str, floor: float, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for k in range(repeats):
        link = SteppedBucket(1e12, 1 << 30, steps=[(1.0, 2e4), (2.0, 1e12)])
        cfg = OffloadRunConfig(str(built), server, TOKEN.encode(), floor=floor,
                               profile=str(built / "fast-cloud.json"), duration_s=5.0, use_exits=False)
        r = run_offload(cfg, link).to_dict()
        drop, recover = replan_delays(r["replans"], link.changed_at) + [None] * (2 - len(link.changed_at))
        rows.append({"run": k, "drop_s": drop, "recover_s": recover, "placement_changes": len(r["replans"]),
                     "requests": r["requests"], "requests_by_mode": r["requests_by_mode"],
                     "replans": [{k2: v for k2, v in x.items() if k2 != "link"} for x in r["replans"]]})
        print(f"  token bucket run {k}: drop -> re-plan {fmt_s(drop)}, recovery -> re-plan {fmt_s(recover)} "
              f"({len(r['replans'])} placement changes, {r['requests']} requests)", flush=True)
    return rows


def fmt_s(x: float | None) -> str:
    return "none" if x is None else f"{x:.2f} s"


def veth(built: Path, token_file: Path, floor: float, limit: int, quick: bool) -> dict[str, Any]:
    """Latencies at 10 Mbit/s and the re-plan time on 100 -> 1 -> 100 Mbit/s, over a shaped veth pair."""
    if not namespaces_available("eart"):
        return {"skipped": "needs root and `ip netns` (iproute2)"}
    out: dict[str, Any] = {}
    with veth_namespaces(10, prefix="eart", subnet="10.231.9") as pair:
        server = Server(built, token_file, pair.ip_b, pair.exec(pair.ns_b, []))
        edge = pair.exec(pair.ns_a, [])
        try:
            out["latency"] = latencies(built, server.address, token_file, "veth 10 Mbit/s (tbf)", floor,
                                       limit, edge)
            set_rate(pair, 100)
            # the run process imports for a few seconds: time its start from a first short run
            probe = cli_run(built, server.address, token_file, ["--split", "2", "--limit", "1"], edge)
            start_s = 1.5 * (probe["started_at"] - probe["launched_at"])  # import + load, with a margin
            duration = 12.0
            proc_args = [*edge, sys.executable, "-m", "edgeadapt", "offload", "run", "--model", str(built),
                         "--server", server.address, "--token-file", str(token_file), "--floor", str(floor),
                         "--no-exits", "--profile", str(built / "fast-cloud.json"),
                         "--duration", str(duration), "--json"]
            launched = time.time()
            proc = subprocess.Popen(proc_args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=ENV)
            time.sleep(max(0.0, launched + start_s + 2.0 - time.time()))
            changes = [set_rate(pair, 1)]
            time.sleep(3.0)
            changes.append(set_rate(pair, 100))
            stdout, stderr = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"veth re-plan run failed: {stderr[-2000:]}")
            r = json.loads(stdout)
            valid = r["started_at"] is not None and r["started_at"] < changes[0]
            drop, recover = replan_delays(r["replans"], changes)
            out["replan"] = {"rates_mbit": [100, 1, 100],
                             "changes_at_s": [c - r["started_at"] for c in changes],
                             "drop_s": drop, "recover_s": recover, "valid": valid,
                             "placement_changes": len(r["replans"]), "requests": r["requests"],
                             "requests_by_mode": r["requests_by_mode"],
                             "replans": [{k: v for k, v in x.items() if k != "link"} for x in r["replans"]]}
            print(f"  veth: 100 -> 1 Mbit/s -> re-plan {fmt_s(drop)}; 1 -> 100 Mbit/s -> re-plan "
                  f"{fmt_s(recover)}{'' if valid else ' (INVALID: the run started after the first change)'}",
                  flush=True)
        finally:
            server.stop()
    return out


def targets(fuzz: dict[str, Any], bucket: list[dict[str, Any]], vth: dict[str, Any],
            loop_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = loop_rows + vth.get("latency", [])
    delays = [d for r in bucket for d in (r["drop_s"], r["recover_s"])]
    worst = None if any(d is None for d in delays) else max(delays)
    out = [{"target": f"zero server crashes across {fuzz['frames']:,} malformed frames",
            "met": fuzz["crashes"] == 0,
            "value": f"{fuzz['crashes']} crashes; statuses {fuzz['by_status']}; final valid request "
                     f"{'correct' if fuzz['final_ok'] else 'WRONG'}; "
                     f"process {'alive' if fuzz['process_alive'] else 'DEAD'}"},
           {"target": f"re-plan within {REPLAN_TARGET_S:g} s after the bandwidth changes (token bucket, "
                      f"drop and recovery, {len(bucket)} runs)",
            "met": worst is not None and worst <= REPLAN_TARGET_S,
            "value": "worst " + fmt_s(worst) + "; " + ", ".join(fmt_s(d) for d in delays)}]
    rep = vth.get("replan")
    if rep is not None:
        vd = [rep["drop_s"], rep["recover_s"]]
        vworst = None if any(d is None for d in vd) else max(vd)
        out.append({"target": f"re-plan within {REPLAN_TARGET_S:g} s on the shaped veth "
                              "(100 -> 1 -> 100 Mbit/s)",
                    "met": rep["valid"] and vworst is not None and vworst <= REPLAN_TARGET_S,
                    "value": f"drop {fmt_s(rep['drop_s'])}, recovery {fmt_s(rep['recover_s'])}"
                             + ("" if rep["valid"] else " (run started late: not timed)")})
    floor_row = next(r for r in loop_rows if r["case"].startswith("--floor"))
    out.append({"target": "steady loopback: no placement change over a run of requests (hysteresis)",
                "met": floor_row["replans"] == 0,
                "value": f"{floor_row['replans']} changes over {floor_row['requests']} requests "
                         f"({floor_row['replan_checks']} re-solves kept the placement)"})
    for link in dict.fromkeys(r["link"] for r in rows):
        whole = next(r for r in rows if r["link"] == link and "whole chain" in r["case"])
        exits = next(r for r in rows if r["link"] == link and "early exits" in r["case"])
        out.append({"target": f"real processes, {link}, emulated edge: early exits at least as fast as the "
                              "whole chain at the same floor (p50)",
                    "met": exits["p50_ms"] <= whole["p50_ms"],
                    "value": f"{exits['p50_ms']:.2f} ms (exit {exits['exit_block']}, accuracy "
                             f"{exits['accuracy']:.3f}) vs {whole['p50_ms']:.2f} ms (accuracy "
                             f"{whole['accuracy']:.3f}): {exits['p50_ms'] / whole['p50_ms']:.2f}x"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="200 frames, short runs; results in runs/bench-smoke/")
    ap.add_argument("--no-veth", action="store_true", help="skip the namespace runs")
    args = ap.parse_args()
    t0 = time.time()
    work = (SMOKE if args.quick else REPO / "runs") / "offload-runtime"
    built = build(work, args.quick)
    profile = ChainProfile.load(built / "profile.json")
    floor = round(profile.base_accuracy - 0.05, 3)
    token_file = work / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    frames, limit = (200, 60) if args.quick else (1000, 300)

    print("malformed frames against an `offload serve` process", flush=True)
    server = Server(built, token_file)
    try:
        chain = load_chain(built)
        x = torch.randn(2, *chain.input_shapes[1], generator=torch.Generator().manual_seed(0))
        frame = encode_frame(x, {"start": 1, "end": len(chain), "widths": [0.5] * (len(chain) - 1)})
        half = [0.5] * (len(chain) - 1)
        fuzz = fuzz_server(server.address, TOKEN.encode(), frame, chain.run(1, len(chain), x, half), n=frames,
                           seed=0, max_frame_bytes=MAX_FRAME, alive=server.alive).to_dict()
        print(f"  {fuzz['frames']} frames in {fuzz['seconds']:.1f} s: {fuzz['crashes']} crashes, statuses "
              f"{fuzz['by_status']}", flush=True)
        print("latency of `offload run` processes, batch 1, loopback", flush=True)
        loop_rows = latencies(built, server.address, token_file, "loopback", floor, limit)
        print("re-plan time, token bucket (loopback -> 0.16 Mbit/s -> loopback)", flush=True)
        bucket = replan_bucket(built, server.address, floor, 1 if args.quick else 3)
    finally:
        fuzz_exit = server.stop()
    print("shaped veth pair", flush=True)
    try:
        vth = {"skipped": "--no-veth"} if args.no_veth else veth(built, token_file, floor, limit, args.quick)
    except (ConfigError, RuntimeError, subprocess.TimeoutExpired) as exc:
        vth = {"skipped": f"failed: {exc}"}
    result = {
        "benchmark": "offload_runtime", "quick": args.quick, "omp_num_threads": ENV["OMP_NUM_THREADS"],
        "model": "tiny-resnet (digits 32x32), descendants at widths 1, 0.5", "floor": floor,
        "base_accuracy": profile.base_accuracy, "devices": [d.to_dict() for d in profile.devices],
        "fast_cloud_profile": "re-plan and --floor latency runs: edge latencies x20 the emulated edge's, "
                              "cloud = this machine at 1 thread (the measured profile keeps every block on "
                              "the edge)",
        "fuzz": fuzz, "server_exit_code": fuzz_exit, "latency": loop_rows + vth.get("latency", []),
        "replan_token_bucket": bucket, "veth": {k: v for k, v in vth.items() if k != "latency"},
        "seconds": time.time() - t0}
    result["targets"] = targets(fuzz, bucket, vth, loop_rows)
    path = (SMOKE if args.quick else RESULTS) / "offload_runtime.json"
    write_json(path, result)
    print(f"\n{'link':<22} {'case':<38} {'p50 ms':>8} {'p95 ms':>8} {'mode':<10} {'sent':>10} {'probes':>8}")
    for r in result["latency"]:
        print(f"{r['link']:<22} {r['case']:<38} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['mode']:<10} "
              f"{r['bytes_sent']:>10,} {r['probe_bytes_sent']:>8,}")
    print()
    for t in result["targets"]:
        print(f"[{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['value']}")
    print(f"\nwrote {path} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
