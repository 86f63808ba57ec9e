"""The stream runner: adaptation methods side by side over a drift stream, domain after domain.

For every domain of the stream, each method sees the domain's unlabeled adaptation data, adapts
within the same step budget, and is scored on the domain's held-out evaluation data with the
task's metric (``accuracy`` for classifiers). Methods are *continual*: what a model learned on one
domain carries into the next.

A domain flagged ``labelled`` (new classes, or a new task, arriving with labels) hands every
adapting method its *labelled* adaptation batches; elsewhere labels are stripped. Our loss
(:func:`~edgeadapt.online.methods.base.our_loss`: ``full``, ``static``, ``edgeadapt``) then trains
on the task loss — cross-entropy for a classifier — plus the same source replay that guards the
unsupervised loss against collapse (for a causal LM nothing changes: its next-token loss needs no
labels). Label-free methods (``tent``, ``eata``, ``sar``) ignore the labels and keep their update;
``source`` is never adapted. A method's label-free ``settle`` check (edgeadapt's safeguard) is
skipped on a labelled domain: the update was trained on ground truth. Every per-domain row
records ``labelled``. The edge methods (``static``, ``edgeadapt``) retrain under the edge
budget's memory measures (activation checkpointing by default); the others are unconstrained
references. The methods live in a registry (:mod:`edgeadapt.online.methods`, one module each):

- ``source``: the source model, never adapted.
- ``tent``: entropy minimisation on the full model's norm parameters (TENT).
- ``full``: the whole source model retrained with our adaptation loss, no memory budget.
- ``static``: the source model pruned once to the proxy's width (magnitude), fine-tuned on the
  source data, then retrained on every domain with our loss.
- ``edgeadapt``: per domain, a proxy cut from the knowledge base for the current window,
  retrained with our loss, synced back into the knowledge base (and foundation model).
- ``eata``: EATA, entropy on reliable, non-redundant samples plus a Fisher anti-forgetting term.
- ``sar``: SAR, sharpness-aware entropy on reliable samples with a reset on collapse.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from tqdm.auto import tqdm

from edgeadapt.data.stream import DomainData
from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import HFAdapter
from edgeadapt.online.losses import set_trainable
from edgeadapt.online.methods import MethodContext, MethodState, build, method_names
from edgeadapt.online.retrain import RetrainBudget, retrain, unlabeled
from edgeadapt.progress import bar_enabled
from edgeadapt.training.device import to_device

__all__ = ["METHODS", "MethodState", "accuracy", "adaptation_batches", "build_methods", "metric_name",
           "run_stream", "score", "summarize"]

METHODS = method_names()  # the built-ins, registered on import (a method registered later is still accepted)


def metric_name(adapter: HFAdapter) -> tuple[str, bool]:
    """The task's headline metric and whether higher is better (``("accuracy", True)`` for a task that
    does not say)."""
    return getattr(adapter.task, "metric", "accuracy"), getattr(adapter.task, "higher_is_better", True)


def score(adapter: HFAdapter, batches: Iterable[dict[str, torch.Tensor]], metric: str | None = None) -> float:
    """``adapter.evaluate(batches)[metric]`` on the model's device; ``metric`` defaults to the task's.
    A metric the task does not produce raises :class:`~edgeadapt.errors.ConfigError` naming those it does."""
    metric = metric or metric_name(adapter)[0]
    device = next(adapter.model.parameters()).device
    result = adapter.evaluate(to_device(b, device) for b in batches)
    if metric not in result:
        raise ConfigError(f"metric: the task's evaluation gives {sorted(result)}, not {metric!r}")
    return float(result[metric])


def accuracy(adapter: HFAdapter, batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """Classification accuracy (:func:`score` with ``metric="accuracy"``)."""
    return score(adapter, batches, "accuracy")


def run_stream(methods: list[MethodState], domains: list[DomainData], budget: RetrainBudget, seed: int = 0,
               logger: Any = None, progress: bool = True,
               on_labelled: Callable[[Iterable[dict[str, torch.Tensor]], int], None] | None = None
               ) -> dict[str, Any]:
    """Run every method over ``domains``; returns per-domain rows and per-method summaries.

    ``on_labelled(batches, k)`` is called once after every method has run a labelled domain, with
    that domain's labelled adaptation batches and ``k``, the number of labelled domains so far
    (1, 2, …): :func:`~edgeadapt.online.api.adapt` folds them into the shared source statistics
    (:meth:`~edgeadapt.online.losses.SourceStats.absorb`) so later domains see the new classes.

    Each per-domain row names the task's ``metric`` and holds its value after adaptation under that
    name (``accuracy``, ``perplexity``, …) and before it under ``<metric>_before``, and ``labelled``:
    whether the domain arrived with labels (then its adaptation batches keep them)."""
    bar = tqdm(total=len(domains) * len(methods), desc="stream", disable=not bar_enabled(progress),
               leave=False)
    seen = 0
    for i, domain in enumerate(domains):
        test = list(domain.test.batches(256))
        labelled = bool(getattr(domain, "labelled", False))
        adapt = lambda epoch, d=domain, keep=labelled: adaptation_batches(  # noqa: E731
            d, budget.batch_size, seed + epoch, keep)
        for m in methods:
            bar.set_postfix(domain=str(domain.domain), method=m.name)
            start = time.perf_counter()
            model = m.prepare(domain)
            metric, higher = metric_name(model)
            row: dict[str, Any] = {"method": m.name, "domain": str(domain.domain), "index": i,
                                   "metric": metric, "higher_is_better": higher, "labelled": labelled,
                                   f"{metric}_before": score(model, test, metric),
                                   "retrain_seconds": 0.0, "peak_memory_bytes": 0,
                                   "params": sum(p.numel() for p in model.model.parameters())}
            if m.adapts:
                set_trainable(model, m.trainable)  # type: ignore[arg-type]
                result = retrain(model, adapt, m.loss(model) if m.loss is not None else None, budget,
                                 seed=seed + i, constrained=m.constrained,
                                 step=m.step(model) if m.step is not None else None)
                row.update(retrain_seconds=result.seconds, peak_memory_bytes=result.peak_memory_bytes,
                           steps=result.steps, trainable_params=result.trainable_params)
                if m.settle is not None and not labelled:  # a label-free check: moot when labels came
                    model = m.settle(model, unlabeled(adapt(0)))
                    row.update(m.notes)
                    m.notes.clear()
            row[metric] = score(model, test, metric)
            m.finish(model)
            row["total_seconds"] = time.perf_counter() - start
            m.rows.append(row)
            if logger is not None:
                logger.log_metrics({f"{m.name}/{metric}": row[metric],
                                    f"{m.name}/retrain_seconds": row["retrain_seconds"]}, i)
            bar.update(1)
        if labelled and on_labelled is not None:
            seen += 1
            on_labelled(adapt(0), seen)
    bar.close()
    return summarize(methods, domains)


def adaptation_batches(domain: DomainData, batch_size: int, seed: int, labelled: bool
                       ) -> Iterable[dict[str, torch.Tensor]]:
    """One shuffled epoch (order seeded by ``seed``) of ``domain``'s adaptation split in batches of
    ``batch_size``: with its labels when ``labelled`` (the domain arrived with them), else stripped
    (what an edge device sees)."""
    batches = domain.adapt.batches(batch_size, shuffle=True, seed=seed)
    return batches if labelled else unlabeled(batches)


def summarize(methods: list[MethodState], domains: list[DomainData]) -> dict[str, Any]:
    """The benchmark schema: per method the task's ``metric`` and its mean over domains as
    ``mean_<metric>`` (``mean_accuracy`` for classifiers), the median per-domain retraining seconds
    (robust to a noisy shared machine; methods alternate within every domain), peak memory,
    parameters; plus every per-domain row."""
    rows = []
    for m in methods:
        if not m.rows:
            continue
        metric = m.rows[0].get("metric", "accuracy")
        adapted = [r for r in m.rows if r["retrain_seconds"] > 0] or m.rows
        rows.append({"method": m.name, "metric": metric,
                     "higher_is_better": m.rows[0].get("higher_is_better", True),
                     f"mean_{metric}": statistics.mean(r[metric] for r in m.rows),
                     "retrain_seconds": statistics.median(r["retrain_seconds"] for r in adapted),
                     "peak_memory_bytes": max(r["peak_memory_bytes"] for r in m.rows),
                     "params": max(r["params"] for r in m.rows)})
    return {"rows": rows, "domains": [str(d.domain) for d in domains],
            "per_domain": [r for m in methods for r in m.rows]}


def build_methods(names: list[str], fm: HFAdapter, kb: Any, stats: Any, loss_cfg: Any, width: float,
                  static_model: Callable[[], HFAdapter] | None, trainable: str = "all", *,
                  budget: RetrainBudget | None = None, options: dict[str, dict[str, Any]] | None = None
                  ) -> list[MethodState]:
    """The named methods from the registry (:mod:`edgeadapt.online.methods`), each built from one
    :class:`~edgeadapt.online.methods.MethodContext`; ``options`` holds per-method settings by name
    (e.g. ``{"eata": {"d_margin": 0.4}}``). Unknown, repeated or no names raise ConfigError."""
    ctx = MethodContext(fm=fm, kb=kb, stats=stats, loss_cfg=loss_cfg, width=width, static_model=static_model,
                        trainable=trainable, budget=budget, options=dict(options or {}))
    return build(list(names), ctx)
