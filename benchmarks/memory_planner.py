"""Memory planner: predicted vs measured peak retraining memory, and accuracy under memory budgets.

For tiny-resnet and tiny-vit (digits; 32×32 and 16×16, batch 32) and tiny-llama (batch 8 × 64
tokens), on CPU with one thread:

1. **Prediction accuracy.** For a handful of plans (no knobs, each knob alone — micro-batch B/4,
   half the blocks frozen, one checkpointed segment per block — square-root checkpointing, ⌈√n⌉ segments
   (Chen et al. 2016), and a combination) the measured steady-state peak
   (:func:`edgeadapt.memory.estimator.measure`: tensor storage accounting) against the peak
   predicted by edgeadapt's estimator (one profile, then :func:`~edgeadapt.memory.estimator.predict`
   per plan), by PyTorch's ``MemTracker`` (``torch.distributed._tools.mem_tracker``; the plan's
   training step run twice on fake tensors under ``FakeTensorMode``; where it cannot run a plan the
   error is recorded) and by accelerate's ``estimate-memory`` ("Training using Adam": weights +
   gradients + two Adam moments, ``accelerate.commands.estimate.estimate_training_usage`` on
   ``accelerate.utils.calculate_maximum_sizes``; it knows no knob and no activation).
2. **Budgets** at 0.25×, 0.5× and 0.75× of the measured no-knob peak: which plans fit (predicted;
   then measured), for no knobs, each knob alone at its least costly setting that fits (largest
   micro-batch; fewest frozen blocks; the fastest checkpoint segment count), square-root
   checkpointing, a smaller effective batch alone (the largest divisor of the batch that fits, no
   accumulation), and the plan chosen by :func:`edgeadapt.memory.search.search` (profile,
   predict, Pareto, successive-halving probes on the drift data's validation split, over the
   retraining time as its horizon, with effective batches B/2, B/4, B/8 offered as a knob).
3. **Accuracy after a fixed retraining time.** A source model (a fixed number of steps on clean
   digits / Python's pydoc topics) is retrained under each plan for the same CPU time (process time
   of the optimizer steps, one thread: robust to other jobs on a shared machine) on a drift domain
   (``digits-c`` fog:3 / ``stdlib-text`` docstrings) and scored on its test split: accuracy for the
   images, perplexity for the LM; the mean over ``--seeds`` retraining seeds (each its own batch
   order and torch seed). The no-knob run at the original batch is the unconstrained reference.

Targets, computed from the rows: our prediction within 5% of measured on every row (prediction and
budget tables); our mean |error| at most MemTracker's on the plans MemTracker ran; no plan chosen to
fit (ours or a knob alone) measured over its budget; at every budget our plan's accuracy at least
the best plan that fits (perplexity at most); at 0.5× within 1 point of the unconstrained run
(images; 1% perplexity for the LM); planning (profile + search) ≤ 60 s.

    python benchmarks/memory_planner.py [--seconds 15] [--seeds 2] [--quick] [--out PATH]

Writes ``benchmarks/results/memory_planner.json`` (``{"models", "prediction": [rows], "budgets":
[rows], "retraining": [rows], "targets", ...}``) and a PNG next to it; ``--quick`` (1 s of
retraining, one seed, short source phase, few evaluation batches) writes to ``runs/bench-smoke/``.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import RESULTS, SMOKE, judge, write_json  # noqa: E402
from readme_tables import memory_planner as readme_table  # noqa: E402

from edgeadapt.data.registry import build_dataset, options_at_size  # noqa: E402
from edgeadapt.errors import InfeasibleError  # noqa: E402
from edgeadapt.memory.estimator import make_optimizer, measure, predict, profile  # noqa: E402
from edgeadapt.memory.knobs import apply_plan, block_chain, micro_batches, split_batch, train_step  # noqa: E402
from edgeadapt.memory.plan import MemoryPlan, task_loss_traits  # noqa: E402
from edgeadapt.memory.search import describe_plan, search  # noqa: E402
from edgeadapt.models.registry import load_adapter  # noqa: E402
from edgeadapt.training.batches import batch_factory  # noqa: E402

SEED = 0
LR = 1e-3
FRACTIONS = (0.25, 0.5, 0.75)
MODELS: dict[str, dict[str, Any]] = {
    "tiny-resnet": {
        "batch": 32,
        "source_steps": 900,  # about 5 s of CPU
        "source": ("digits", {}),
        "drift": ("digits-c", {"corruption": "fog", "severity": 3}),
        "drift_name": "digits-c fog:3",
    },
    "tiny-vit": {
        "batch": 32,
        "source_steps": 450,
        "source": ("digits", {}),
        "drift": ("digits-c", {"corruption": "fog", "severity": 3}),
        "drift_name": "digits-c fog:3",
    },
    "tiny-llama": {
        "batch": 8,
        "seq": 64,
        "source_steps": 350,
        "source": ("stdlib-text", {"source": "pydoc-topics"}),
        "drift": ("stdlib-text", {"source": "docstrings"}),
        "drift_name": "stdlib-text docstrings",
    },
}
BASELINES = ("no knobs", "micro-batch alone", "freeze alone", "checkpoint alone", "sqrt checkpointing",
             "smaller batch alone")
Choice = tuple[MemoryPlan, int | None]  # a plan and its effective batch (None: the data's)


def splits_of(adapter: Any, name: str, options: dict[str, Any]) -> Any:
    if adapter.modality == "image":
        options = options_at_size(name, options, adapter.model.config.image_size, "size")
    return build_dataset(name, **options)


def take(adapter: Any, split: Any, batch: int, n: int, shuffle: bool, seq: int | None) -> list[dict]:
    """The first ``n`` full batches of ``split`` (image batches, or ``seq``-token LM blocks)."""
    out = []
    for b in batch_factory(adapter, split, batch, shuffle=shuffle, seed=SEED, max_length=seq or 128)(0):
        if len(out) == n:
            break
        if next(iter(b.values())).shape[0] == batch:
            out.append(b)
    return out


def evaluate(adapter: Any, batches: list[dict]) -> float:
    """Accuracy (classification) or perplexity (causal LM: exp of the mean next-token loss)."""
    model = adapter.model
    model.eval()
    with torch.no_grad():
        if adapter.task.name == "classification":
            score = float(adapter.task.evaluate(model, batches)["accuracy"])
        else:
            score = math.exp(sum(float(adapter.task.loss(model, b)) for b in batches) / len(batches))
    model.train()
    return score


def retrain(
    adapter: Any,
    start: dict[str, torch.Tensor],
    plan: MemoryPlan,
    batches: list[dict],
    seconds: float,
    seed: int = SEED,
    max_steps: int | None = None,
) -> tuple[int, float]:
    """Train from ``start`` under ``plan`` until the optimizer steps have used ``seconds`` of process
    CPU time (or ``max_steps`` steps); returns (steps, CPU seconds). Same seed, same batch order for
    every plan."""
    model = adapter.model
    model.load_state_dict(start)
    model.train()
    torch.manual_seed(seed)
    used, steps = 0.0, 0
    with apply_plan(model, plan, block_chain(adapter)) as knobs:
        opt = make_optimizer(knobs.trainable_parameters(), "adam", lr=LR)
        while used < seconds and (max_steps is None or steps < max_steps):
            t = time.process_time()
            train_step(adapter, batches[steps % len(batches)], plan, opt)
            used += time.process_time() - t
            steps += 1
    return steps, used


def memtracker_peak(adapter: Any, plan: MemoryPlan, batch: dict) -> tuple[int | None, str | None, float]:
    """PyTorch's MemTracker on the plan's training step (twice, Adam), every tensor fake
    (``FakeTensorMode``: nothing is computed). Returns (peak bytes or None, why not, seconds)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    t0 = time.perf_counter()
    fake = copy.deepcopy(adapter)
    mode = FakeTensorMode()
    memo: dict[int, Any] = {}
    for mod in fake.model.modules():  # parameters and buffers to fake tensors (ties kept)
        for n, p in list(mod._parameters.items()):
            if p is not None:
                if id(p) not in memo:
                    memo[id(p)] = nn.Parameter(mode.from_tensor(p.detach()), requires_grad=p.requires_grad)
                mod._parameters[n] = memo[id(p)]
        for n, b in list(mod._buffers.items()):
            if b is not None:
                memo.setdefault(id(b), mode.from_tensor(b))
                mod._buffers[n] = memo[id(b)]
    # the micro-batches and their loss shares come from the real batch (the token count of an LM
    # micro-batch is data, which fake tensors do not hold)
    parts = [
        ({k: mode.from_tensor(v.contiguous()) for k, v in micro.items()}, share)
        for micro, share in micro_batches(batch, plan, task_loss_traits(adapter.task.name))
    ]
    fake.model.train()
    try:
        with mode, apply_plan(fake.model, plan, block_chain(fake)) as knobs:
            opt = make_optimizer(knobs.trainable_parameters(), "adam", lr=0.0)
            tracker = MemTracker()
            tracker.track_external(fake.model, opt)
            with tracker:
                for _ in range(2):  # the second step is the steady state (optimizer state exists)
                    for micro, share in parts:
                        (fake.task_loss(micro) * share).backward()
                        tracker.reset_mod_stats()  # MemTracker refuses a module run twice otherwise
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            snap = tracker.get_tracker_snapshot("peak")
        total = int(next(iter(snap.values()))["Total"])
        return total, None, time.perf_counter() - t0
    except Exception as exc:  # a peer's limitation is a result here, recorded with its message
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}", time.perf_counter() - t0


def accelerate_estimate(model: nn.Module) -> tuple[int, str]:
    """accelerate's ``estimate-memory`` "Training using Adam" figure for float32 (the largest of
    model, gradients, optimizer and step: the step, 4× the weights) and where it came from."""
    try:
        from accelerate.commands.estimate import estimate_training_usage
        from accelerate.utils import calculate_maximum_sizes
    except ImportError:
        size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        return 4 * size, "formula (accelerate not installed): 4 x (parameter + buffer bytes)"
    total, _ = calculate_maximum_sizes(model)
    return int(
        max(estimate_training_usage(total, "float32").values())
    ), "accelerate.commands.estimate.estimate_training_usage(calculate_maximum_sizes(model), 'float32')"


def error(predicted: int | None, measured: int) -> float | None:
    return None if predicted is None else round(predicted / measured - 1, 5)


def prediction_plans(n: int, batch: int) -> dict[str, MemoryPlan]:
    sqrt = math.ceil(math.sqrt(n))
    return {
        "no knobs": MemoryPlan(),
        f"micro-batch {batch // 4}": MemoryPlan(micro_batch_size=batch // 4),
        "freeze half": MemoryPlan(freeze_fraction=0.5),
        f"checkpoint per block ({n})": MemoryPlan(checkpoint_segments=n),
        f"sqrt checkpointing ({sqrt})": MemoryPlan(checkpoint_segments=sqrt),
        "combination": MemoryPlan(micro_batch_size=batch // 4, freeze_fraction=0.5, checkpoint_segments=1),
    }


def baselines(
    prof: Any, n: int, batch: int, budget: int, measured: Callable[[MemoryPlan, int | None], int]
) -> dict[str, Choice | None]:
    """Each knob alone at its least costly setting that fits, predicted and then measured (as the
    search confirms its probes; None: none fits); the smaller batch alone is the largest divisor
    of the batch (B/2 … B/8) that fits without another knob."""

    def fits(plan: MemoryPlan, rows: int = batch) -> bool:
        if predict(prof, plan, rows).predicted_bytes > budget:
            return False
        return measured(plan, None if rows == batch else rows) <= budget

    sizes = [d for d in range(batch - 1, 0, -1) if batch % d == 0]
    micro = next(
        (MemoryPlan(micro_batch_size=d) for d in sizes if fits(MemoryPlan(micro_batch_size=d))), None
    )
    freeze = next(
        (MemoryPlan(freeze_blocks=m) for m in range(1, n + 1) if fits(MemoryPlan(freeze_blocks=m))), None
    )
    ckpts = [
        MemoryPlan(checkpoint_segments=s) for s in range(1, n + 1) if fits(MemoryPlan(checkpoint_segments=s))
    ]
    ckpt = min(ckpts, key=lambda p: predict(prof, p, batch).step_seconds) if ckpts else None
    sqrt = MemoryPlan(checkpoint_segments=math.ceil(math.sqrt(n)))
    smaller = next((b for b in smaller_batches(batch) if fits(MemoryPlan(), b)), None)
    plans = {
        "no knobs": MemoryPlan() if fits(MemoryPlan()) else None,
        "micro-batch alone": micro,
        "freeze alone": freeze,
        "checkpoint alone": ckpt,
        "sqrt checkpointing": sqrt if fits(sqrt) else None,
    }
    out: dict[str, Choice | None] = {k: None if p is None else (p, None) for k, p in plans.items()}
    out["smaller batch alone"] = None if smaller is None else (MemoryPlan(), smaller)
    return out


def smaller_batches(batch: int) -> list[int]:
    """The effective batches offered besides the data's: B/2, B/4, B/8 (those >= 1)."""
    return [batch // k for k in (2, 4, 8) if batch // k >= 1 and batch % k == 0]


def describe(choice: Choice) -> str:
    return describe_plan(choice[0], choice[1])


def choice_key(choice: Choice) -> str:
    return f"{choice[0].model_dump_json()}@{choice[1]}"


def run_model(name: str, spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One model: source phase, prediction rows (every peer), budget rows (knobs alone and the
    search's plan), then a fixed-time retraining run per distinct plan. Returns the model's
    summary and its rows of each table."""
    torch.manual_seed(SEED)
    adapter = load_adapter(name)
    batch_size, seq = spec["batch"], spec.get("seq")
    chain = block_chain(adapter)
    n = len(chain.blocks)
    source = splits_of(adapter, *spec["source"])
    drift = splits_of(adapter, *spec["drift"])
    n_eval = 2 if args.quick else 16  # images: every full test batch
    train = take(adapter, drift.train, batch_size, 4 if args.quick else 400, True, seq)  # all of it
    val = take(adapter, drift.val, batch_size, 2 if args.quick else 5, False, seq)
    test = take(adapter, drift.test, batch_size, n_eval, False, seq)
    # the source model: a fixed number of plain steps on the source domain (not a time: the same
    # start in every run), the same start for all plans
    retrain(
        adapter,
        {k: v.clone() for k, v in adapter.model.state_dict().items()},
        MemoryPlan(),
        take(adapter, source.train, batch_size, 24, True, seq),
        float("inf"),
        max_steps=20 if args.quick else spec["source_steps"],
    )
    start = {k: v.detach().clone() for k, v in adapter.model.state_dict().items()}
    source_score = evaluate(adapter, test)
    batch = train[0]

    t0 = time.perf_counter()
    prof = profile(adapter, batch, "adam", chain=chain)
    profile_seconds = time.perf_counter() - t0
    acc_bytes, acc_source = accelerate_estimate(adapter.model)
    measured_cache: dict[str, int] = {}

    def measured(plan: MemoryPlan, rows: int | None = None) -> int:
        key = choice_key((plan, rows))
        if key not in measured_cache:
            part = split_batch(batch, rows)[0] if rows else batch
            measured_cache[key] = measure(adapter, plan, part, "adam", chain=chain).total_bytes
        return measured_cache[key]

    prediction = []
    for label, plan in prediction_plans(n, batch_size).items():
        t = time.perf_counter()
        ours = predict(prof, plan, batch_size).predicted_bytes
        ours_s = time.perf_counter() - t
        real = measured(plan)
        mt, why, mt_s = memtracker_peak(adapter, plan, batch)
        prediction.append(
            {
                "model": name,
                "plan": label,
                "describe": describe_plan(plan),
                "plan_json": plan.model_dump(),
                "measured_bytes": real,
                "ours_bytes": ours,
                "ours_error": error(ours, real),
                "ours_seconds": round(profile_seconds + ours_s, 4),
                "memtracker_bytes": mt,
                "memtracker_error": error(mt, real),
                "memtracker_seconds": round(mt_s, 4),
                "memtracker_failure": why,
                "accelerate_bytes": acc_bytes,
                "accelerate_error": error(acc_bytes, real),
            }
        )
        print(
            f"{name:<12} {label:<26} measured {real:>10,} ours {prediction[-1]['ours_error']:+.2%} "
            f"memtracker {'-' if mt is None else format(prediction[-1]['memtracker_error'], '+.2%')} "
            f"accelerate {prediction[-1]['accelerate_error']:+.1%}",
            file=sys.stderr,
        )

    full = measured(MemoryPlan())
    budgets: list[dict[str, Any]] = []
    trained: dict[str, Choice] = {}
    for f in FRACTIONS:
        budget = int(f * full)
        chosen = dict(baselines(prof, n, batch_size, budget, measured))
        t = time.perf_counter()
        try:
            result = search(
                adapter,
                budget,
                train,
                val,
                lr=LR,
                seed=SEED,
                prof=prof,
                horizon_seconds=args.seconds,
                batch_sizes=smaller_batches(batch_size),
                max_probes=12,  # with smaller batches offered there are more classes of updates
                max_probe_seconds=15.0,  # predicted; probes run slower under load (planning <= 60 s)
            )
            ours, note, cand = (result.chosen.plan, result.chosen.batch_size), None, result.chosen
            search_seconds = result.planning_seconds
        except InfeasibleError as exc:
            ours, note, cand, search_seconds = None, str(exc), None, time.perf_counter() - t
        chosen["ours"] = ours
        for method, pick in chosen.items():
            plan, rows = pick if pick is not None else (None, None)
            row = {
                "model": name,
                "fraction": f,
                "budget_bytes": budget,
                "method": method,
                "fits": pick is not None,
                "plan": None if pick is None else describe(pick),
                "plan_json": None if plan is None else plan.model_dump(),
                "batch": rows,
            }
            if pick is not None:
                pred = predict(prof, plan, rows or batch_size).predicted_bytes
                real = measured(plan, rows)
                row.update(
                    predicted_bytes=pred,
                    measured_bytes=real,
                    ours_error=error(pred, real),
                    measured_within_budget=real <= budget,
                )
                trained.setdefault(choice_key(pick), pick)
            if method == "ours":
                row.update(
                    planning_seconds=round(profile_seconds + search_seconds, 3),
                    infeasible=note,
                    search_status=None if cand is None else cand.status,
                )
            budgets.append(row)
        print(
            f"{name:<12} budget {f:.2f}x = {budget:,} B: "
            + ", ".join(f"{m}: {'-' if p is None else describe(p)}" for m, p in chosen.items()),
            file=sys.stderr,
        )

    trained.setdefault(choice_key((MemoryPlan(), None)), (MemoryPlan(), None))
    retraining = []
    for key, (plan, rows) in trained.items():
        data = [part for b in train for part in split_batch(b, rows)] if rows else train
        scores, runs = [], []
        for seed in range(args.seeds):
            order = list(data)
            if seed:  # each seed its own batch order (seed 0: the order the search probed)
                random.Random(seed).shuffle(order)
            steps, used = retrain(adapter, start, plan, order, args.seconds, seed=SEED + seed)
            scores.append(evaluate(adapter, test))
            runs.append({"steps": steps, "cpu_seconds": round(used, 2)})
        score = sum(scores) / len(scores)
        retraining.append(
            {
                "model": name,
                "plan": describe((plan, rows)),
                "plan_json": plan.model_dump(),
                "batch": rows,
                "steps": round(sum(r["steps"] for r in runs) / len(runs)),
                "cpu_seconds": round(sum(r["cpu_seconds"] for r in runs) / len(runs), 2),
                "score": round(score, 4),
                "scores": [round(v, 4) for v in scores],
            }
        )
        print(
            f"{name:<12} retrain {describe((plan, rows)):<22} {retraining[-1]['steps']:>5} steps in "
            f"{retraining[-1]['cpu_seconds']:.1f} s CPU: "
            f"{'accuracy' if adapter.modality == 'image' else 'perplexity'} {score:.4f} "
            f"(seeds {', '.join(f'{v:.4f}' for v in scores)})",
            file=sys.stderr,
        )
    adapter.model.load_state_dict(start)
    return {
        "model": {
            "name": name,
            "params": sum(p.numel() for p in adapter.model.parameters()),
            "blocks": n,
            "batch": batch_size,
            "seq": seq,
            "drift": spec["drift_name"],
            "metric": "accuracy" if adapter.modality == "image" else "perplexity",
            "source_score": round(source_score, 4),
            "no_knob_peak_bytes": full,
            "profile_seconds": round(profile_seconds, 3),
            "accelerate_source": acc_source,
        },
        "prediction": prediction,
        "budgets": budgets,
        "retraining": retraining,
    }


def score_of(
    result: dict[str, Any], model: str, plan_json: dict | None, batch: int | None = None
) -> float | None:
    """The mean score of ``plan_json`` at effective ``batch`` (None: the data's) for ``model``."""
    for r in result["retraining"]:
        if r["model"] == model and r["plan_json"] == plan_json and r.get("batch") == batch:
            return r["score"]
    return None


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    pred = result["prediction"]
    fitted = [r for r in result["budgets"] if r["fits"]]
    errors = [abs(r["ours_error"]) for r in pred] + [abs(r["ours_error"]) for r in fitted]
    out = [
        judge(
            "ours: predicted peak within 5% of measured on every row (max |error|)",
            [max(errors)],
            0.05,
            higher_is_better=False,
            fmt="{:.2%}",
        )
    ]
    both = [r for r in pred if r["memtracker_error"] is not None]
    ours_mean = sum(abs(r["ours_error"]) for r in both) / max(1, len(both))
    mt_mean = sum(abs(r["memtracker_error"]) for r in both) / max(1, len(both))
    t = judge(
        f"ours more accurate than MemTracker (mean |error| on the {len(both)} of {len(pred)} plans "
        f"MemTracker ran; ours {ours_mean:.3%}, MemTracker {mt_mean:.3%}; ours minus MemTracker)",
        [ours_mean - mt_mean],
        0.0,
        higher_is_better=False,
        fmt="{:+.4%}",
    )
    out.append(t)
    over = [r for r in fitted if not r["measured_within_budget"]]
    worst = max(r["measured_bytes"] / r["budget_bytes"] for r in fitted)
    out.append(
        judge(
            f"no plan chosen to fit (ours or a knob alone) measured over its budget ({len(over)} over; "
            "worst measured / budget)",
            [worst],
            1.0,
            higher_is_better=False,
            fmt="{:.3f}",
        )
    )
    by_model = {m["name"]: m for m in result["models"]}
    gaps, near = [], []
    for model, info in by_model.items():
        lower = info["metric"] == "perplexity"
        for f in FRACTIONS:
            rows = {r["method"]: r for r in result["budgets"] if r["model"] == model and r["fraction"] == f}
            ours = (
                score_of(result, model, rows["ours"]["plan_json"], rows["ours"].get("batch"))
                if rows["ours"]["fits"]
                else None
            )
            base = [
                score_of(result, model, rows[m]["plan_json"], rows[m].get("batch"))
                for m in BASELINES
                if rows[m]["fits"] and rows[m]["measured_within_budget"]
            ]
            if ours is None or not base:
                continue
            best = min(base) if lower else max(base)
            gaps.append((best / ours - 1) if lower else (ours - best))  # >= 0: ours at least as good
        half = {r["method"]: r for r in result["budgets"] if r["model"] == model and r["fraction"] == 0.5}[
            "ours"
        ]
        unconstrained = score_of(result, model, MemoryPlan().model_dump())
        ours_half = score_of(result, model, half["plan_json"], half.get("batch")) if half["fits"] else None
        if ours_half is not None:
            near.append(
                (model, lower, (ours_half / unconstrained - 1) if lower else (ours_half - unconstrained))
            )
    if gaps:
        out.append(
            judge(
                "our plan >= the best plan that fits, at every model and budget (worst: accuracy "
                "difference, or best perplexity / ours - 1)",
                [min(gaps)],
                0.0,
                fmt="{:+.4f}",
            )
        )
    for model, lower, diff in near:
        if lower:
            out.append(
                judge(
                    f"{model} at 0.5x: our perplexity within 1% of the unconstrained run (ours / "
                    "unconstrained - 1)",
                    [diff],
                    0.01,
                    higher_is_better=False,
                    fmt="{:+.2%}",
                )
            )
        else:
            out.append(
                judge(
                    f"{model} at 0.5x: our accuracy within 1 point of the unconstrained run",
                    [diff],
                    -0.01,
                    fmt="{:+.4f}",
                )
            )
    planning = max(r["planning_seconds"] for r in result["budgets"] if r["method"] == "ours")
    out.append(
        judge(
            "planning (profile + search) <= 60 s (slowest)",
            [planning],
            60.0,
            higher_is_better=False,
            fmt="{:.1f} s",
        )
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--seconds", type=float, default=None, help="retraining CPU seconds per plan (default 15; --quick 1)"
    )
    ap.add_argument(
        "--seeds", type=int, default=None, help="retraining seeds per plan, mean score (default 2; --quick 1)"
    )
    ap.add_argument("--models", default=",".join(MODELS), help=f"subset of {','.join(MODELS)}")
    ap.add_argument(
        "--quick", action="store_true", help="1 s retraining, few batches; results to runs/bench-smoke/"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="result JSON (default benchmarks/results/memory_planner.json)"
    )
    args = ap.parse_args()
    args.seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 15.0)
    args.seeds = args.seeds if args.seeds is not None else (1 if args.quick else 2)
    out = args.out or (SMOKE if args.quick else RESULTS) / "memory_planner.json"
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    start = time.perf_counter()
    result: dict[str, Any] = {
        "seed": SEED,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "retrain_cpu_seconds": args.seconds,
        "seeds": list(range(SEED, SEED + args.seeds)),  # retraining seeds; the search uses SEED
        "source_steps": {name: spec["source_steps"] for name, spec in MODELS.items()},
        "optimizer": f"adam lr {LR}",
        "fractions": list(FRACTIONS),
        "our_plan_source": "edgeadapt.memory.search.search (profile, predict, Pareto, "
        "successive-halving probes on the drift validation split over the retraining time; "
        "effective batches B/2, B/4, B/8 offered; up to 12 classes probed, 15 s of predicted probing)",
        "models": [],
        "prediction": [],
        "budgets": [],
        "retraining": [],
    }
    for name in args.models.split(","):
        part = run_model(name, MODELS[name], args)
        result["models"].append(part["model"])
        for k in ("prediction", "budgets", "retraining"):
            result[k] += part[k]
    result["targets"] = targets(result)
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    print("\n".join(readme_table(result)))
    write_json(out, result)
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')} ({result['wall_seconds']:.0f} s)")


def plot(result: dict[str, Any], path: Path) -> None:
    """Left: prediction error per plan (ours, MemTracker, accelerate). Right panels: the score after
    the fixed retraining time per budget, one line per method, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m["name"] for m in result["models"]]
    fig, axes = plt.subplots(1, 1 + len(models), figsize=(5 * (1 + len(models)), 4), squeeze=False)
    axes = axes[0]
    pred = result["prediction"]
    x = range(len(pred))
    for k, (key, label) in enumerate(
        (("ours_error", "edgeadapt"), ("memtracker_error", "MemTracker"), ("accelerate_error", "accelerate"))
    ):
        ys = [max(1e-3, 100 * abs(r[key])) if r[key] is not None else float("nan") for r in pred]
        axes[0].bar([i + 0.27 * (k - 1) for i in x], ys, width=0.27, label=label)
    axes[0].set_xticks(list(x), [f"{r['model'][5:]}: {r['describe']}" for r in pred], rotation=90, fontsize=6)
    axes[0].set_ylabel("|predicted / measured peak - 1| (%)")
    axes[0].axhline(5, color="k", lw=0.8, ls="--")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    axes[0].set_title("peak-memory prediction error")
    for ax, model in zip(axes[1:], models):
        info = next(m for m in result["models"] if m["name"] == model)
        for method in ("ours", *BASELINES[1:]):
            pts = []
            for r in result["budgets"]:
                if r["model"] == model and r["method"] == method and r["fits"]:
                    pts.append((r["fraction"], score_of(result, model, r["plan_json"], r.get("batch"))))
            if pts:
                ax.plot(*zip(*pts), marker="o", lw=2.5 if method == "ours" else 1, label=method)
        ax.axhline(
            score_of(result, model, MemoryPlan().model_dump()),
            color="k",
            ls="--",
            lw=0.8,
            label="no knobs (unconstrained)",
        )
        ax.set_xlabel("budget (fraction of the no-knob peak)")
        ax.set_ylabel(info["metric"] + f" after {result['retrain_cpu_seconds']:g} s CPU")
        ax.set_title(f"{model} on {info['drift']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
