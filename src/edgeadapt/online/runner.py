"""The stream runner: adaptation methods side by side over a drift stream, domain after domain.

For every domain of the stream, each method sees the domain's unlabeled adaptation images,
adapts within the same step budget, and is scored on the domain's labeled test images.
Methods are *continual*: what a model learned on one domain carries into the next. The two edge
methods (``static``, ``edgeadapt``) retrain under the edge budget's memory measures (activation
checkpointing by default); ``full`` and ``tent`` are the unconstrained references.

- ``source``: the source model, never adapted.
- ``tent``: entropy minimisation on the full model's norm parameters (TENT).
- ``full``: the whole source model retrained with our adaptation loss, no memory budget.
- ``static``: the source model pruned once to the proxy's width (magnitude), fine-tuned on the
  source data, then retrained on every domain with our loss.
- ``edgeadapt``: per domain, a proxy cut from the knowledge base for the current window,
  retrained with our loss, synced back into the knowledge base (and foundation model).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from edgeadapt.data.stream import DomainData
from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import HFAdapter
from edgeadapt.online.losses import adaptation_loss, set_trainable, tent_loss
from edgeadapt.online.proxy import extract_proxy
from edgeadapt.online.retrain import RetrainBudget, retrain, unlabeled
from edgeadapt.online.sync import sync
from edgeadapt.progress import bar_enabled
from edgeadapt.training.device import to_device

METHODS = ("source", "tent", "full", "static", "edgeadapt")


def accuracy(adapter: HFAdapter, batches: Iterable[dict[str, torch.Tensor]]) -> float:
    device = next(adapter.model.parameters()).device
    return adapter.evaluate(to_device(b, device) for b in batches)["accuracy"]


@dataclass
class MethodState:
    """What one method carries from domain to domain."""

    name: str
    prepare: Callable[[DomainData], HFAdapter]          # the model to adapt on this domain
    loss: Callable[[HFAdapter], Any] | None              # adaptation loss factory (None: no adaptation)
    trainable: str = "all"
    finish: Callable[[HFAdapter], None] = lambda _a: None  # e.g. sync the proxy back
    constrained: bool = False                            # runs under the edge budget's memory measures
    rows: list[dict[str, Any]] = field(default_factory=list)


def run_stream(methods: list[MethodState], domains: list[DomainData], budget: RetrainBudget, seed: int = 0,
               logger: Any = None, progress: bool = True) -> dict[str, Any]:
    """Run every method over ``domains``; returns per-domain rows and per-method summaries."""
    bar = tqdm(total=len(domains) * len(methods), desc="stream", disable=not bar_enabled(progress),
               leave=False)
    for i, domain in enumerate(domains):
        test = list(domain.test.batches(256))
        adapt = lambda epoch, d=domain: unlabeled(d.adapt.batches(budget.batch_size, shuffle=True,  # noqa: E731
                                                                  seed=seed + epoch))
        for m in methods:
            bar.set_postfix(domain=str(domain.domain), method=m.name)
            start = time.perf_counter()
            model = m.prepare(domain)
            before = accuracy(model, test)
            row: dict[str, Any] = {"method": m.name, "domain": str(domain.domain), "index": i,
                                   "accuracy_before": before, "retrain_seconds": 0.0, "peak_memory_bytes": 0,
                                   "params": sum(p.numel() for p in model.model.parameters())}
            if m.loss is not None:
                set_trainable(model, m.trainable)
                result = retrain(model, adapt, m.loss(model), budget, seed=seed + i,
                                 constrained=m.constrained)
                row.update(retrain_seconds=result.seconds, peak_memory_bytes=result.peak_memory_bytes,
                           steps=result.steps, trainable_params=result.trainable_params)
            row["accuracy"] = accuracy(model, test)
            m.finish(model)
            row["total_seconds"] = time.perf_counter() - start
            m.rows.append(row)
            if logger is not None:
                logger.log_metrics({f"{m.name}/accuracy": row["accuracy"],
                                    f"{m.name}/retrain_seconds": row["retrain_seconds"]}, i)
            bar.update(1)
    bar.close()
    return summarize(methods, domains)


def summarize(methods: list[MethodState], domains: list[DomainData]) -> dict[str, Any]:
    """The benchmark schema: per-method mean accuracy, median per-domain retraining seconds (robust
    to a noisy shared machine; methods alternate within every domain), peak memory, every row."""
    import statistics

    rows = []
    for m in methods:
        adapted = [r for r in m.rows if r["retrain_seconds"] > 0] or m.rows
        rows.append({"method": m.name,
                     "mean_accuracy": statistics.mean(r["accuracy"] for r in m.rows),
                     "retrain_seconds": statistics.median(r["retrain_seconds"] for r in adapted),
                     "peak_memory_bytes": max(r["peak_memory_bytes"] for r in m.rows),
                     "params": max(r["params"] for r in m.rows)})
    return {"rows": rows, "domains": [str(d.domain) for d in domains],
            "per_domain": [r for m in methods for r in m.rows]}


def build_methods(names: list[str], fm: HFAdapter, kb: Any, stats: Any, loss_cfg: Any, width: float,
                  static_model: Callable[[], HFAdapter] | None, trainable: str = "all") -> list[MethodState]:
    """The method table: each entry knows how to get its model for a domain and how to adapt it."""
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ConfigError(f"methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    ours = lambda model: adaptation_loss(model, stats, loss_cfg)  # noqa: E731
    out = []
    for name in names:
        if name == "source":
            out.append(MethodState(name, lambda d, m=fm: m, None))
        elif name == "tent":
            model = copy.deepcopy(fm)
            out.append(MethodState(name, lambda d, m=model: m, lambda a: tent_loss(a), trainable="norm"))
        elif name == "full":
            model = copy.deepcopy(fm)
            out.append(MethodState(name, lambda d, m=model: m, ours, trainable=trainable))
        elif name == "static":
            if static_model is None:
                raise ConfigError("methods: 'static' needs a statically pruned model")
            model = static_model()
            out.append(MethodState(name, lambda d, m=model: m, ours, trainable=trainable, constrained=True))
        else:
            edge_fm = copy.deepcopy(fm)
            holder: dict[str, Any] = {}

            def prepare(d: DomainData, holder=holder) -> HFAdapter:
                holder["proxy"] = extract_proxy(kb, unlabeled(d.adapt.batches(256)), width)
                return holder["proxy"].adapter

            def finish(_model: HFAdapter, holder=holder, edge_fm=edge_fm) -> None:
                holder["proxy"].adapter.model.cpu()
                sync(kb, holder["proxy"], edge_fm)

            out.append(MethodState(name, prepare, ours, trainable=trainable, finish=finish, constrained=True))
    return out
