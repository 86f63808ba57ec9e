"""Online adaptation over drift streams, per modality: every method, same data, over seeds.

**Image** (``--modality image``, the default): trains (or reuses) the source ViT, then per seed
builds the offline artifacts (LoRA, knowledge base, neuron index; ``configs/offline-vit-digits.yaml``
with that seed) and, on every stream of ``--streams`` (``default``: the built-in 10-domain stream,
``severe``: ``configs/streams/severe-2.yaml``, ``unseen``: ``configs/streams/unseen-corruptions.yaml``,
``shuffled``: the default stream's domains in a fixed random order),
runs source / tent / eata / sar / full / static / edgeadapt / oracle through the stream runner with
the same step budget and that seed. ``oracle`` is registered here: the source model fine-tuned
*with* each domain's labels (its labelled adaptation split, the task loss) for the same steps,
continually like the others; the practical upper limit of adapting on that data.

*Gap closed* — the share of the source→oracle gap a method closes on a stream — is the ratio of
means, per seed: ``(mean_acc(method) − mean_acc(source)) / (mean_acc(oracle) − mean_acc(source))``,
each mean over the stream's domains (``None`` when the oracle is not above the source). The ratio of
means, not the mean of per-domain ratios: on an easy domain the oracle barely beats the source, and a
per-domain ratio with a near-zero denominator would swamp the average.

Image targets, on the means over seeds of paired per-seed values: on each stream, edgeadapt ≥ the
best peer (EATA, SAR, TENT, static; those run), ≥ source + 5 points, and its worst domain no more
than 1 point below source; edgeadapt ≥ every peer on ≥ 3 streams and ≥ source + 5 on ≥ 3 streams
(counts of streams); the gap closed, averaged over streams, ≥ 60%; and on the first stream ≤ 50% of
full's peak retraining memory and time.

**Text** (``--modality text``): the reference LM (``tiny-llama-ref`` on ``builtin-docs``,
``runs/ref-llama``), a knowledge base built on it with ``configs/offline-llama-docs.yaml`` (cached in
``runs/offline-ref-llama-seed<N>``), over the standard-library text stream
(:data:`~edgeadapt.data.text_domains.DEFAULT_TEXT_STREAM`): per-domain perplexity of source, full,
static, edgeadapt and the oracle (trained with the next-token loss on the domain's own held-in text,
its ``train`` split, for the same steps), peak memory and time. Text targets: edgeadapt's mean
perplexity ≤ 0.9× source's, ≤ static's, ≤ 1.03× full's, at ≤ 0.5× full's peak retraining memory.

**Planner** (``--planner``, image): per seed, full and edgeadapt on the default stream without the
planner, then both again with ``adapt(memory_budget=0.5 × full's measured peak, time_budget="0.5x")``
(the edge plan: frozen blocks, checkpoint segments, edge steps per domain and whether distillation
stays; :func:`edgeadapt.online.edge_plan.plan_for_budget`). Targets, paired per seed: the planned
edgeadapt's peak memory and retraining time (median per domain) ≤ 0.5× full's in the same run, and its
mean accuracy within 1 point of edgeadapt without the planner. Writes
``benchmarks/results/online_stream_planner.json``.

    python benchmarks/online_stream.py [--modality image|text] [--seeds 0,1,2] [--steps 30]
                                       [--streams default,severe,unseen,shuffled] [--stream "fog:3"]
                                       [--planner] [--rebuild] [--quick] [--out DIR]

Writes ``benchmarks/results/online_stream.json`` (image) as ``{"seeds", "rows": [{"method",
"mean_accuracy", "gap_closed", "retrain_seconds", "peak_memory_bytes", "params"}], "domains",
"per_domain", "streams": {NAME: {"spec", "rows", "domains", "per_domain"}}, "targets", "per_seed",
...}`` (top-level rows/domains/per_domain are the first stream's; each measured ``x`` is the mean over
seeds, with ``x_std`` and ``x_seeds``; see ``benchlib.py``) and the first run's report in
``benchmarks/results/online_stream/``; or ``online_stream_text.json`` (text) with the same row schema
in perplexity. Image seed 0 reuses the demo's ``runs/offline-vit``; other seeds cache
``runs/offline-vit-seed<N>``; ``--rebuild`` rebuilds them. ``--quick`` (alias ``--smoke``: 2 domains
per stream, 2 steps, 1-epoch offline stage) writes to ``runs/bench-smoke/``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (  # noqa: E402
    REPO,
    RESULTS,
    SMOKE,
    aggregate_rows,
    judge,
    parse_seeds,
    seeds_of,
    summarize,
    write_json,
)
from readme_tables import online_stream as readme_table  # noqa: E402
from readme_tables import online_stream_planner as readme_table_planner  # noqa: E402
from readme_tables import online_stream_text as readme_table_text  # noqa: E402

from edgeadapt.config import parse_config  # noqa: E402
from edgeadapt.data.stream import DEFAULT_STREAM, DomainData, DriftStream, ModelInputs  # noqa: E402
from edgeadapt.data.text_domains import DEFAULT_TEXT_STREAM  # noqa: E402
from edgeadapt.offline.lora import load_lora_artifact  # noqa: E402
from edgeadapt.offline.pipeline import STEPS, run_offline  # noqa: E402
from edgeadapt.online.api import adapt  # noqa: E402
from edgeadapt.online.methods import MethodContext, MethodState, method_names, register_method  # noqa: E402
from edgeadapt.online.pipeline import AdaptConfig, run_adapt  # noqa: E402
from edgeadapt.online.report import domain_table  # noqa: E402
from edgeadapt.recipes.reference_lm import train_reference_lm  # noqa: E402
from edgeadapt.recipes.source import train_source_vit  # noqa: E402
from edgeadapt.training.device import to_device  # noqa: E402

OFFLINE_CONFIG = REPO / "configs" / "offline-vit-digits.yaml"
OFFLINE_TEXT_CONFIG = REPO / "configs" / "offline-llama-docs.yaml"
SMOKE_STREAM = "fog:3,contrast:4"
SHUFFLE_SEED = 13  # the ``shuffled`` stream: the default stream's domains in this seeded random order


def shuffled(spec: Any, seed: int = SHUFFLE_SEED) -> list[dict[str, Any]]:
    """The domains of stream ``spec`` in a random order fixed by ``seed`` (issue 13: random orders)."""
    domains = DriftStream.parse(spec).to_list()
    random.Random(seed).shuffle(domains)
    return domains


STREAMS: dict[str, Any] = {"default": DEFAULT_STREAM,
                           "severe": str(REPO / "configs" / "streams" / "severe-2.yaml"),
                           "unseen": str(REPO / "configs" / "streams" / "unseen-corruptions.yaml"),
                           "shuffled": shuffled(DEFAULT_STREAM)}
IMAGE_METHODS = ["source", "tent", "eata", "sar", "full", "static", "edgeadapt", "oracle"]
PEERS = ("eata", "sar", "tent", "static")  # the methods edgeadapt must match or beat on every stream
TEXT_METHODS = ["source", "full", "static", "edgeadapt", "oracle"]
TEXT_STREAM = [{"dataset": "stdlib-text", "options": {"source": s}, "name": s} for s in DEFAULT_TEXT_STREAM]
TEXT_QUICK_STREAM = [{"dataset": "stdlib-text", "options": {"source": s, "max_chars": 60_000}, "name": s}
                     for s in ("docstrings", "source-code")]
# configs/adapt-llama-text.yaml's edge budget
TEXT_BUDGET = {"steps": 30, "batch_size": 16, "learning_rate": 1e-3, "gradient_checkpointing": True}
TEXT_WIDTH, TEXT_STATIC_EPOCHS, TEXT_MAX_LENGTH = 0.5, 2, 128

Batch = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------------- oracle
class LabelledSteps:
    """The oracle's update (a :data:`~edgeadapt.online.retrain.StepFn`): ignores the unlabeled batch
    the runner hands it and takes the next of ``batches`` (labelled, prepared for the domain) with the
    task loss instead. Stateful but deep-copyable (the memory probe copies it)."""

    def __init__(self, batches: list[Batch]) -> None:
        if not batches:
            raise ValueError("the oracle needs at least one labelled batch")
        self.batches, self.done = batches, 0

    def __call__(self, adapter: Any, batch: Batch, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        device = next(iter(batch.values())).device
        labelled = to_device(self.batches[self.done % len(self.batches)], device)
        self.done += 1
        loss = adapter.task_loss(labelled)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()


class Oracle:
    """Factory of the ``oracle`` method: a copy of the FM fine-tuned, domain after domain (continual),
    on the domain's labelled data with the task loss for the budget's steps. The labelled data is the
    domain rebuilt with ``labelled: true`` on ``split`` (``None``: its own adaptation split, what the
    others see unlabeled; ``"train"``: for text, the domain's held-in text). Set ``seed`` and
    ``max_length`` to the ``adapt`` call's before each run (the stream's corruption noise and
    shuffling use the seed)."""

    def __init__(self) -> None:
        self.seed, self.max_length, self.split = 0, 128, None

    def batches(self, fm: Any, domain: DomainData, batch_size: int, steps: int) -> list[Batch]:
        """``steps`` labelled batches of ``domain`` (cycling shuffled epochs, seeded like the runner)."""
        labelled = replace(domain.domain, labelled=True,
                           **({"adapt_split": self.split} if self.split else {}))
        data = DriftStream((labelled,)).build(inputs=ModelInputs.of(fm, self.max_length), seed=self.seed)[0]
        out: list[Batch] = []
        epoch = 0
        while len(out) < steps:
            before = len(out)
            for b in data.adapt.batches(batch_size, shuffle=True, seed=self.seed + epoch):
                out.append(b)
                if len(out) >= steps:
                    break
            if len(out) == before:
                raise ValueError(f"oracle: the labelled split of {domain.domain} yielded no batch")
            epoch += 1
        return out

    def __call__(self, ctx: MethodContext) -> MethodState:
        model = copy.deepcopy(ctx.fm)
        budget = ctx.budget
        steps: dict[str, LabelledSteps] = {}

        def prepare(domain: DomainData) -> Any:
            size, n = (budget.batch_size, budget.steps) if budget is not None else (64, 30)
            steps["current"] = LabelledSteps(self.batches(ctx.fm, domain, size, n))
            return model

        return MethodState("oracle", prepare, None, trainable="all", step=lambda _m: steps["current"])


ORACLE = Oracle()


def register_oracle() -> None:
    """Register :data:`ORACLE` as the method ``oracle`` (once). Done when a benchmark runs, not on
    import, so importing this script (the unit tests do) leaves the method registry as it was."""
    if "oracle" not in method_names():
        register_method("oracle", ORACLE)


# ------------------------------------------------------------------------------- pure computations
def gap_closed(method: float, source: float, oracle: float) -> float | None:
    """Share of the source→oracle gap ``method`` closes: ``(method − source) / (oracle − source)``
    (1 = as good as the oracle, 0 = no better than source, < 0 = worse); ``None`` when the oracle is
    not above the source (no gap to close). Accuracies, or any higher-is-better metric."""
    gap = oracle - source
    if gap <= 1e-12:
        return None
    return (method - source) / gap


def add_gap_closed(rows: list[dict[str, Any]], key: str = "mean_accuracy") -> list[dict[str, Any]]:
    """``rows`` (aggregated over seeds) with ``gap_closed`` (mean over seeds), ``gap_closed_std`` and
    ``gap_closed_seeds`` per row: per seed the ratio of the stream means (:func:`gap_closed`). Rows are
    returned unchanged without a ``source`` and an ``oracle`` row; a seed with no gap gives ``None``
    and is left out of the mean (``gap_closed`` is ``None`` when every seed is)."""
    by = {r["method"]: r for r in rows}
    if not {"source", "oracle"} <= set(by):
        return rows
    src, orc = seeds_of(by["source"], key), seeds_of(by["oracle"], key)
    out = []
    for r in rows:
        per_seed = [gap_closed(m, s, o) for m, s, o in zip(seeds_of(r, key), src, orc)]
        known = [g for g in per_seed if g is not None]
        mean, std = summarize(known) if known else (None, None)
        out.append({**r, "gap_closed": mean, "gap_closed_std": std, "gap_closed_seeds": per_seed})
    return out


def worst_domain_diff(per_domain: list[dict[str, Any]], method: str, metric: str = "accuracy") -> list[float]:
    """Per seed, the smallest ``metric(method) − metric(source)`` over the domains (negative: the
    method ended below source on some domain by that much)."""
    mine = sorted((r for r in per_domain if r["method"] == method), key=lambda r: r["index"])
    base = {r["index"]: r for r in per_domain if r["method"] == "source"}
    diffs = [[a - b for a, b in zip(seeds_of(r, metric), seeds_of(base[r["index"]], metric))] for r in mine]
    return [min(d[s] for d in diffs) for s in range(len(diffs[0]))]


def stream_targets(name: str, stream: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-stream image targets (paired per seed): edgeadapt ≥ the best peer run, ≥ source + 5 points,
    worst domain ≥ source − 1 point. Empty without an edgeadapt and a source row."""
    r = {row["method"]: row for row in stream["rows"]}
    if not {"edgeadapt", "source"} <= set(r):
        return []
    ours = seeds_of(r["edgeadapt"], "mean_accuracy")
    out = []
    peers = [p for p in PEERS if p in r]
    if peers:
        best = [max(vals) for vals in zip(*(seeds_of(r[p], "mean_accuracy") for p in peers))]
        out.append(judge(f"{name}: edgeadapt >= every peer ({', '.join(peers)})",
                         [a - b for a, b in zip(ours, best)], 0.0))
    out.append(judge(f"{name}: edgeadapt >= source + 5 pts",
                     [a - b for a, b in zip(ours, seeds_of(r["source"], "mean_accuracy"))], 0.05))
    out.append(judge(f"{name}: no domain below source by > 1 pt (worst domain)",
                     worst_domain_diff(stream["per_domain"], "edgeadapt"), -0.01))
    return out


def image_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every image target: :func:`stream_targets` per stream; the number of streams (counted per
    seed) where edgeadapt ≥ every peer and where it is ≥ source + 5 points, each ≥ 3; edgeadapt's gap
    closed averaged over the streams (per seed) ≥ 60%; and memory/time ≤ 50% of full's on the first
    stream."""
    streams = result["streams"]
    out: list[dict[str, Any]] = []
    peer_diffs, source_diffs, gaps = [], [], []
    for name, stream in streams.items():
        out += stream_targets(name, stream)
        r = {row["method"]: row for row in stream["rows"]}
        if not {"edgeadapt", "source"} <= set(r):
            continue
        ours = seeds_of(r["edgeadapt"], "mean_accuracy")
        peers = [seeds_of(r[p], "mean_accuracy") for p in PEERS if p in r]
        if peers:
            peer_diffs.append([a - max(vals) for a, vals in zip(ours, zip(*peers))])
        source_diffs.append([a - b for a, b in zip(ours, seeds_of(r["source"], "mean_accuracy"))])
        gap = r["edgeadapt"].get("gap_closed_seeds")
        if gap is not None:
            gaps.append(gap)
    if peer_diffs:
        out.append(judge("streams where edgeadapt >= every peer: >= 3",
                         [sum(d[i] >= 0 for d in peer_diffs) for i in range(len(peer_diffs[0]))], 3,
                         fmt="{:.1f}"))
    if source_diffs:
        out.append(judge("streams where edgeadapt >= source + 5 pts: >= 3",
                         [sum(d[i] >= 0.05 for d in source_diffs) for i in range(len(source_diffs[0]))], 3,
                         fmt="{:.1f}"))
    if gaps and all(g is not None for s in gaps for g in s):
        out.append(judge("edgeadapt closes >= 60% of the source->oracle gap (mean over streams)",
                         [statistics.fmean(s[i] for s in gaps) for i in range(len(gaps[0]))], 0.6,
                         fmt="{:+.1%}"))
    first = next(iter(streams.values()))
    out += [t for t in targets({"rows": first["rows"]}) if t["target"].startswith(("memory", "time"))]
    return out


def targets(result: dict) -> list[dict]:
    """The five round-1 targets on one stream's rows, each on paired per-seed differences or ratios
    (empty when a method is missing)."""
    r = {row["method"]: row for row in result["rows"]}
    if not {"edgeadapt", "source", "static", "full"} <= set(r):
        return []

    def diff(method: str) -> list[float]:
        return [a - b for a, b in zip(seeds_of(r["edgeadapt"], "mean_accuracy"),
                                      seeds_of(r[method], "mean_accuracy"))]

    def ratio(key: str) -> list[float]:
        return [a / b for a, b in zip(seeds_of(r["edgeadapt"], key), seeds_of(r["full"], key))]

    return [judge("edgeadapt >= source + 10 pts", diff("source"), 0.10),
            judge("edgeadapt >= static + 3 pts", diff("static"), 0.03),
            judge("edgeadapt within 3 pts of full", diff("full"), -0.03),
            judge("memory <= 50% of full", ratio("peak_memory_bytes"), 0.5, False, "{:.2f}x"),
            judge("time <= 50% of full", ratio("retrain_seconds"), 0.5, False, "{:.2f}x")]


def text_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Text targets on paired per-seed ratios of mean perplexity (lower is better): edgeadapt ≤ 0.9×
    source, ≤ 1.0× static, ≤ 1.03× full, peak retraining memory ≤ 0.5× full's. Empty when a method is
    missing."""
    r = {row["method"]: row for row in result["rows"]}
    if not {"edgeadapt", "source", "static", "full"} <= set(r):
        return []

    def ratio(other: str, key: str = "mean_perplexity") -> list[float]:
        return [a / b for a, b in zip(seeds_of(r["edgeadapt"], key), seeds_of(r[other], key))]

    return [judge("edgeadapt perplexity <= 0.9x source (>= 10% lower)", ratio("source"), 0.9, False,
                  "{:.3f}x"),
            judge("edgeadapt perplexity <= static", ratio("static"), 1.0, False, "{:.3f}x"),
            judge("edgeadapt perplexity within 3% of full", ratio("full"), 1.03, False, "{:.3f}x"),
            judge("memory <= 50% of full", ratio("full", "peak_memory_bytes"), 0.5, False, "{:.2f}x")]


def aggregate_stream(runs: list[dict], metric: str = "accuracy") -> dict[str, Any]:
    """One stream's seeds' runs merged: rows and per-domain rows as mean, std and per-seed values."""
    rows = aggregate_rows([r["rows"] for r in runs], key=("method",),
                          metrics=(f"mean_{metric}", "retrain_seconds", "peak_memory_bytes"))
    per_domain = aggregate_rows([r["per_domain"] for r in runs], key=("method", "index"),
                                metrics=(f"{metric}_before", metric, "retrain_seconds", "peak_memory_bytes"))
    if metric == "accuracy":
        rows = add_gap_closed(rows)
    return {"rows": rows, "domains": runs[0]["domains"], "per_domain": per_domain}


def aggregate(runs: list[dict]) -> dict:
    """One image result from the runs (one per seed and stream, each with ``seed`` and ``stream``):
    per stream the aggregated rows; the first stream's also at the top level (the round-1 schema)."""
    names = list(dict.fromkeys(r.get("stream", "default") for r in runs))
    streams = {}
    for name in names:
        mine = [r for r in runs if r.get("stream", "default") == name]
        streams[name] = {"spec": mine[0].get("spec"), **aggregate_stream(mine)}
    first = runs[0]
    config = {k: v for k, v in first["config"].items() if k not in ("seed", "out", "offline", "stream")}
    seeds = list(dict.fromkeys(r["seed"] for r in runs))
    result = {"seeds": seeds, **{k: streams[names[0]][k] for k in ("rows", "domains", "per_domain")},
              "streams": streams, "config": config, "clean_accuracy": first["clean_accuracy"],
              "proxy_width": first["proxy_width"],
              "gap_closed": "per seed (mean_acc - source) / (oracle - source) of the stream means",
              "per_seed": [{"seed": r["seed"], "stream": r.get("stream", "default"),
                            "offline": r["config"]["offline"], "report": r["config"]["out"],
                            "proxy_width": r["proxy_width"], "seconds": r["seconds"]} for r in runs]}
    result["targets"] = image_targets(result)
    return result


# ----------------------------------------------------------------------------------------- image
def offline_artifacts(source: Path, out: Path, seed: int, epochs: int | None = None,
                      rebuild: bool = False, config: Path = OFFLINE_CONFIG,
                      max_steps: int | None = None) -> Path:
    """``config`` on ``source`` with ``seed`` into ``out``; steps whose artifact exists are reused
    unless ``rebuild``. ``epochs`` / ``max_steps`` override both training sections."""
    if rebuild:
        shutil.rmtree(out, ignore_errors=True)
    data = yaml.safe_load(config.read_text())
    data.update(model=str(source), out=str(out), seed=seed)
    for step in ("lora", "kb"):
        if epochs is not None:
            data[step]["train"]["epochs"] = epochs
        if max_steps is not None:
            data[step]["train"]["max_steps"] = max_steps
    todo = [s for s in STEPS if not (out / s / "manifest.json").is_file()]
    if todo:
        run_offline(parse_config(data), todo)
    return out


def stream_spec(name: str, quick: bool) -> Any:
    """The stream called ``name`` (:data:`STREAMS`), its first 2 domains when ``quick``."""
    if name not in STREAMS:
        raise SystemExit(f"--streams: unknown {name!r}; choose from {', '.join(STREAMS)}")
    spec = STREAMS[name]
    return DriftStream.parse(spec).to_list()[:2] if quick else spec


def run(args: argparse.Namespace, seed: int, stream: str, spec: Any, report: Path) -> dict:
    """One seed on one stream: offline artifacts, then every method; the report goes to ``report``."""
    start = time.perf_counter()
    offline = image_offline(args, seed)
    shutil.rmtree(report, ignore_errors=True)  # no stale plots or event files from an earlier run
    ORACLE.seed, ORACLE.max_length, ORACLE.split = seed, 128, None
    cfg = AdaptConfig(offline=offline, stream=spec, width=args.width, seed=seed, methods=IMAGE_METHODS,
                      static_epochs=1 if args.smoke else AdaptConfig.model_fields["static_epochs"].default,
                      budget={"steps": args.steps}, out=report, loss=args.loss)
    results = run_adapt(cfg)
    write_json(report / "results.json", results)  # run_adapt wrote it with absolute paths
    return {**results, "seed": seed, "stream": stream, "spec": spec,
            "seconds": round(time.perf_counter() - start, 1)}


def main_image(args: argparse.Namespace, seeds: list[int], out: Path) -> dict:
    names = ["custom"] if args.stream else [s.strip() for s in args.streams.split(",") if s.strip()]
    specs = {"custom": args.stream} if args.stream else {n: stream_spec(n, args.smoke) for n in names}
    others = SMOKE if args.smoke else args.runs / "bench-online"  # reports other than the first
    runs, first = [], True
    for seed in seeds:
        for name in names:
            report = out / "online_stream" if first else others / f"report-{name}-seed{seed}"
            runs.append(run(args, seed, name, specs[name], report))
            first = False
    result = aggregate(runs)
    for name, stream in result["streams"].items():
        print(f"\n## {name}\n", domain_table(stream), sep="\n")
    return result


# --------------------------------------------------------------------------------------- planner
PLANNER_METHODS = ["full", "edgeadapt"]
PLANNER_SHARE = 0.5  # the edge plan's memory and time budgets, as a share of full's
PLAIN, PLANNED = "edgeadapt (no planner)", "edgeadapt + planner"


def image_offline(args: argparse.Namespace, seed: int) -> Path:
    """The seed's offline artifacts (the demo's ``runs/offline-vit`` for seed 0), built when missing."""
    source = args.runs / "source-vit"
    train_source_vit(source)
    if args.smoke:
        return offline_artifacts(source, SMOKE / f"offline-seed{seed}", seed, epochs=1, rebuild=args.rebuild)
    name = "offline-vit" if seed == 0 else f"offline-vit-seed{seed}"
    return offline_artifacts(source, args.runs / name, seed, rebuild=args.rebuild)


def planner_rows(plain: dict[str, Any], planned: dict[str, Any]) -> list[dict[str, Any]]:
    """One seed's rows: full (from the planned run), edgeadapt without and with the planner, each with
    ``time_ratio`` / ``memory_ratio`` to full's in its own run and ``steps`` (median per domain)."""
    out = []
    for name, run, method in (("full", planned, "full"), (PLAIN, plain, "edgeadapt"),
                              (PLANNED, planned, "edgeadapt")):
        rows = {r["method"]: r for r in run["rows"]}
        row, full = rows[method], rows["full"]
        steps = statistics.median(r["steps"] for r in run["per_domain"] if r["method"] == method)
        out.append({"method": name, "mean_accuracy": row["mean_accuracy"],
                    "retrain_seconds": row["retrain_seconds"], "peak_memory_bytes": row["peak_memory_bytes"],
                    "time_ratio": row["retrain_seconds"] / full["retrain_seconds"],
                    "memory_ratio": row["peak_memory_bytes"] / full["peak_memory_bytes"], "steps": steps})
    return out


def planner_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The planner's targets on paired per-seed values: memory and time ≤ 0.5× full's, accuracy within
    1 point of edgeadapt without the planner."""
    r = {row["method"]: row for row in rows}
    acc = [a - b for a, b in zip(seeds_of(r[PLANNED], "mean_accuracy"), seeds_of(r[PLAIN], "mean_accuracy"))]
    return [judge(f"{PLANNED}: memory <= {PLANNER_SHARE}x full's", seeds_of(r[PLANNED], "memory_ratio"),
                  PLANNER_SHARE, False, "{:.2f}x"),
            judge(f"{PLANNED}: time <= {PLANNER_SHARE}x full's", seeds_of(r[PLANNED], "time_ratio"),
                  PLANNER_SHARE, False, "{:.2f}x"),
            judge(f"{PLANNED}: accuracy within 1 pt of {PLAIN}", acc, -0.01)]


def main_planner(args: argparse.Namespace, seeds: list[int]) -> dict[str, Any]:
    """Per seed: full + edgeadapt without, then with the planner's memory and time budgets (0.5× full's
    measured peak, ``"0.5x"``), on the default stream; rows over seeds, the plans, the targets."""
    spec = stream_spec("default", args.smoke)
    runs, plans = [], []
    for seed in seeds:
        start = time.perf_counter()
        offline = image_offline(args, seed)
        fm = load_lora_artifact(offline / "lora")
        common = dict(methods=PLANNER_METHODS, budget={"steps": args.steps}, width=args.width, seed=seed,
                      progress=False, loss=args.loss)
        plain = adapt(fm, offline / "kb", spec, **common)
        peak = next(r for r in plain["rows"] if r["method"] == "full")["peak_memory_bytes"]
        planned = adapt(fm, offline / "kb", spec, memory_budget=int(PLANNER_SHARE * peak),
                        time_budget=f"{PLANNER_SHARE}x", **common)
        runs.append(planner_rows(plain, planned))
        plans.append({"seed": seed, "offline": str(offline), **planned["memory_plan"],
                      "seconds": round(time.perf_counter() - start, 1)})
        print(f"seed {seed}: " + "; ".join(f"{r['method']} {r['mean_accuracy']:.3f} acc, "
                                           f"{r['time_ratio']:.2f}x time, {r['memory_ratio']:.2f}x memory"
                                           for r in runs[-1]), flush=True)
    rows = aggregate_rows(runs, key=("method",), metrics=("mean_accuracy", "retrain_seconds",
                                                          "peak_memory_bytes", "time_ratio", "memory_ratio",
                                                          "steps"))
    return {"seeds": seeds, "rows": rows, "plans": plans, "domains": DriftStream.parse(spec).to_list(),
            "config": {"steps": args.steps, "width": args.width, "methods": PLANNER_METHODS,
                       "share": PLANNER_SHARE, "loss": args.loss, "time_budget": f"{PLANNER_SHARE}x",
                       "memory_budget": f"{PLANNER_SHARE} x full's measured peak"},
            "targets": planner_targets(rows)}


# ------------------------------------------------------------------------------------------ text
def text_run(args: argparse.Namespace, seed: int) -> dict:
    """One seed of the text benchmark: the reference LM, its KB, every text method over the stream."""
    start = time.perf_counter()
    train_reference_lm(args.runs / "ref-llama", progress=False)
    where = SMOKE if args.smoke else args.runs
    offline = offline_artifacts(args.runs / "ref-llama", where / f"offline-ref-llama-seed{seed}", seed,
                                epochs=1 if args.smoke else None, rebuild=args.rebuild,
                                config=OFFLINE_TEXT_CONFIG, max_steps=20 if args.smoke else None)
    fm = load_lora_artifact(offline / "lora")
    ORACLE.seed, ORACLE.max_length, ORACLE.split = seed, TEXT_MAX_LENGTH, "train"
    stream = TEXT_QUICK_STREAM if args.smoke else TEXT_STREAM
    budget = {**TEXT_BUDGET, "steps": args.steps}
    results = adapt(fm, offline / "kb", stream, methods=TEXT_METHODS, budget=budget, width=TEXT_WIDTH,
                    seed=seed, static_epochs=1 if args.smoke else TEXT_STATIC_EPOCHS,
                    max_length=TEXT_MAX_LENGTH, progress=False)
    results["config"] = {"offline": str(offline), "stream": stream, "budget": budget, "width": TEXT_WIDTH,
                         "static_epochs": 1 if args.smoke else TEXT_STATIC_EPOCHS,
                         "max_length": TEXT_MAX_LENGTH, "methods": TEXT_METHODS}
    return {**results, "seed": seed, "seconds": round(time.perf_counter() - start, 1)}


def aggregate_text(runs: list[dict]) -> dict:
    """One text result from the seeds' runs (perplexity rows as mean, std and per-seed values)."""
    first = runs[0]
    result = {"seeds": [r["seed"] for r in runs], **aggregate_stream(runs, "perplexity"),
              "config": {k: v for k, v in first["config"].items() if k != "offline"},
              "clean_perplexity": first.get("clean_perplexity"), "proxy_width": first["proxy_width"],
              "per_seed": [{"seed": r["seed"], "offline": r["config"]["offline"], "seconds": r["seconds"]}
                           for r in runs]}
    result["targets"] = text_targets(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modality", choices=("image", "text"), default="image")
    parser.add_argument("--seeds", default="0,1,2", help="comma list; rows are means ± std over seeds")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--width", type=float, default=AdaptConfig.model_fields["width"].default)
    parser.add_argument("--streams", default="default,severe,unseen,shuffled",
                        help=f"image: comma list of {', '.join(STREAMS)}")
    parser.add_argument("--stream", default=None, help="image: one custom stream instead of --streams")
    parser.add_argument("--runs", type=Path, default=Path("runs"),
                        help="where the source models and the offline artifacts are cached")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached offline artifacts")
    parser.add_argument("--quick", "--smoke", dest="smoke", action="store_true",
                        help="2 domains per stream, 2 steps, short offline stage; results to "
                        "runs/bench-smoke/")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--planner", action="store_true",
                        help="image: full and edgeadapt with and without the memory/time planner (0.5x "
                        "full's peak memory and time) on the default stream; writes "
                        "online_stream_planner.json")
    parser.add_argument("--loss", type=json.loads, default={},
                        help='image: fields of our loss as JSON, e.g. \'{"distill": 1.0}\' '
                        '(default: the shipped loss)')
    args = parser.parse_args()
    if args.smoke:
        args.steps = 2
    out = args.out or (SMOKE if args.smoke else RESULTS)
    seeds = parse_seeds(args.seeds)
    start = time.perf_counter()
    register_oracle()
    if args.planner:
        result, name, render = main_planner(args, seeds), "online_stream_planner", readme_table_planner
    elif args.modality == "image":
        result, name, render = main_image(args, seeds, out), "online_stream", readme_table
    else:
        result, name, render = aggregate_text([text_run(args, s) for s in seeds]), "online_stream_text", \
            readme_table_text
        print(domain_table(result))
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / f"{name}.json", result)
    print("", "\n".join(render(result)), "", sep="\n")
    print(f"wrote {out / f'{name}.json'} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
