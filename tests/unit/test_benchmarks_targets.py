"""Each benchmark's targets are computed from its measured rows: means over seeds, paired per seed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    """Import a benchmark script by path (``benchmarks/`` is not a package)."""
    if name not in sys.modules:
        sys.path.insert(0, str(BENCH))
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _by_name(targets: list[dict]) -> dict[str, dict]:
    return {t["target"]: t for t in targets}


def test_kb_widths_aggregates_seeds_and_judges_kb_against_static_per_seed():
    kb_widths = _load("kb_widths")

    def run(seed: int, kb: float, static: float) -> dict:
        rows = [{"width": w, "kb": kb, "kb_dynamic": kb, "static": static, "static_kd": static,
                 "params_ratio": w} for w in (0.25, 1.0)]
        return {"fm": 0.95, "rows": rows, "epochs": 8, "seed": seed, "test_images": 360, "seconds": 1.0}

    result = kb_widths.aggregate([run(0, 0.96, 0.92), run(1, 0.94, 0.95), run(2, 0.95, 0.93)])
    assert result["seeds"] == [0, 1, 2] and len(result["per_seed"]) == 3
    row = result["rows"][0]
    assert row["kb"] == 0.95 and row["kb_seeds"] == [0.96, 0.94, 0.95] and row["kb_std"] == 0.01
    targets = _by_name(result["targets"])
    at25 = targets["kb >= static at 25% width"]
    assert at25["met"] and at25["seeds"] == pytest.approx([0.04, -0.01, 0.02])
    assert at25["within_std"]  # +0.017 mean, 0.025 std: met only within noise
    assert targets["kb within 1 pt of the FM at 100% width"]["met"]


def test_online_stream_targets_use_paired_per_seed_differences_and_ratios():
    online_stream = _load("online_stream")

    def row(method: str, acc: list[float], seconds: list[float], memory: list[float]) -> dict:
        return {"method": method, "mean_accuracy": sum(acc) / len(acc), "mean_accuracy_seeds": acc,
                "retrain_seconds": sum(seconds) / len(seconds), "retrain_seconds_seeds": seconds,
                "peak_memory_bytes": sum(memory) / len(memory), "peak_memory_bytes_seeds": memory}

    result = {"rows": [row("source", [0.60, 0.58], [0, 0], [0, 0]),
                       row("full", [0.70, 0.72], [2.0, 2.0], [100, 100]),
                       row("static", [0.69, 0.69], [2.2, 2.2], [30, 30]),
                       row("edgeadapt", [0.74, 0.71], [0.8, 1.2], [28, 28])]}
    targets = _by_name(online_stream.targets(result))
    assert targets["edgeadapt >= source + 10 pts"]["seeds"] == pytest.approx([0.14, 0.13])
    static = targets["edgeadapt >= static + 3 pts"]  # +0.05 and +0.02: met on the mean, within noise
    assert static["met"] and static["within_std"]
    memory = targets["memory <= 50% of full"]
    assert memory["met"] and memory["value"] == "0.28x ± 0.00x"
    assert targets["time <= 50% of full"]["seeds"] == pytest.approx([0.4, 0.6])
    assert online_stream.targets({"rows": result["rows"][:2]}) == []


def test_prune_fidelity_targets_compare_our_best_with_the_peers_best():
    prune_fidelity = _load("prune_fidelity")
    rows = [{"method": m, "target": "heads", "sparsity": 0.5, "cosine": c, "cosine_seeds": s}
            for m, c, s in (("magnitude", 0.70, [0.70, 0.70]), ("taylor", 0.76, [0.75, 0.77]),
                            ("tp-magnitude", 0.71, [0.71, 0.71]), ("tp-taylor", 0.765, [0.77, 0.76]))]
    (t,) = prune_fidelity.targets({"rows": rows})
    assert t["target"] == "ours (taylor) >= tp-taylor at heads@0.50"
    assert not t["met"] and t["seeds"] == pytest.approx([-0.02, 0.01]) and t["within_std"]


def test_llm_prune_targets_pick_the_lowest_perplexity_of_each_side():
    llm_prune = _load("llm_prune")
    rows = []
    measured = (("ours-taylor", 121.0, [116.0, 117.0]), ("ours-fisher", 122.0, [118.0, 118.0]),
                ("tp-magnitude", 122.5, [115.0, 116.0]), ("random", 140.0, [123.0, 124.0]))
    for method, before, after in measured:
        base = {"method": method, "sparsity": 0.2, "params": 1, "tokens_per_s_ratio": 1.1,
                "train_tokens_per_s_ratio": 0.9}
        rows += [{**base, "recovered": False, "ppl": before},
                 {**base, "recovered": True, "ppl": sum(after) / 2, "ppl_seeds": after}]
    targets = _by_name(llm_prune.targets({"rows": rows, "dense_ppl": 120.0}))
    before = targets["ours (ours-taylor) <= tp-magnitude ppl before recovery at 20%"]
    after = targets["ours (ours-taylor) <= tp-magnitude ppl after recovery at 20%"]
    assert before["met"] and before["mean"] == pytest.approx(-1.5)
    assert not after["met"] and after["seeds"] == pytest.approx([1.0, 1.0])
    assert targets["ours (ours-taylor) <= 1.05x dense ppl after recovery at 20%"]["met"]
    assert targets["ours (ours-taylor) faster than dense in inference at 20%"]["met"]
    assert not targets["ours (ours-taylor) faster than dense in training at 20%"]["met"]
