"""The online stage as one library call: adaptation methods side by side over a drift stream.

:func:`adapt` takes a foundation model (any model adapter whose task has a label-free adaptation
loss and a metric), its knowledge base, a :class:`~edgeadapt.data.stream.DriftStream` and method
names, and returns the results dict of :func:`edgeadapt.online.runner.run_stream` (per-method rows,
per-domain rows, the domains) plus the source model's clean metric and the proxy width. The
``edgeadapt adapt`` command (:func:`edgeadapt.online.pipeline.run_adapt`) is config → artifacts →
this call → report.

Example::

    from edgeadapt import adapt, DriftStream
    from edgeadapt.offline.artifacts import load_kb
    from edgeadapt.offline.lora import load_lora_artifact

    fm = load_lora_artifact("runs/offline-vit/lora")
    results = adapt(fm, "runs/offline-vit/kb", DriftStream.parse("fog:5,contrast:4"),
                    methods=["source", "edgeadapt"], budget={"steps": 15})
    print(results["rows"])
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from edgeadapt.artifacts import read_manifest
from edgeadapt.data.config import DataSection, load_splits
from edgeadapt.data.registry import dataset_info
from edgeadapt.data.stream import DriftStream, ModelInputs, for_model
from edgeadapt.errors import ConfigError
from edgeadapt.memory.accounting import parse_bytes
from edgeadapt.memory.plan import ADAPTATION_LOSS, MemoryPlan, check_micro_batching
from edgeadapt.models.inspect import check_context, limits_from_config
from edgeadapt.offline.artifacts import KIND as KB_KIND
from edgeadapt.offline.artifacts import VERSION as KB_VERSION
from edgeadapt.offline.artifacts import load_kb
from edgeadapt.online.edge_plan import (
    CONFIGURED,
    WITHOUT_DISTILLATION,
    PlannedMemory,
    TimeBudget,
    describe_plan,
    loop_seconds,
    plan_for_budget,
    plan_for_memory,
)
from edgeadapt.online.losses import AdaptLossConfig, set_trainable, source_stats
from edgeadapt.online.method_options import check_method_options
from edgeadapt.online.methods import method_names, methods_for
from edgeadapt.online.methods.base import MethodContext, loss_config_for, our_loss
from edgeadapt.online.proxy import extract_proxy, width_for_memory, width_for_params
from edgeadapt.online.retrain import RetrainBudget, unlabeled
from edgeadapt.online.runner import build_methods, run_stream
from edgeadapt.pruning.prune import prune
from edgeadapt.training.config import TrainConfig
from edgeadapt.training.loop import fit

Batch = dict[str, torch.Tensor]
BATCH_SIZE = 64    # source batches for statistics and the static baseline's fine-tuning
EVAL_BATCH = 256   # batches for scoring
# What a result calls the model's quality, in order of preference among what evaluate() returns.
METRICS = ("accuracy", "perplexity", "loss")


@dataclass
class SourceData:
    """The labelled source data: ``train(epoch)`` batches (shuffled by epoch), optional ``val()``
    and ``test()`` batches, and what it is (``name``)."""

    train: Callable[[int], Iterable[Batch]]
    val: Callable[[], Iterable[Batch]] | None = None
    test: Callable[[], Iterable[Batch]] | None = None
    name: str = "batches"


def recorded_source(kb_dir: str | Path) -> tuple[DataSection, int] | None:
    """The ``data:`` section and seed of the offline config recorded in the knowledge base's
    manifest (what the FM and KB were built from), or ``None`` when it records none."""
    manifest = read_manifest(Path(kb_dir), KB_KIND, KB_VERSION, verify=False)
    offline = (manifest.get("config") or {}).get("offline") or {}
    if not isinstance(offline.get("data"), dict):
        return None
    return DataSection(**offline["data"]), int(offline.get("seed", 0))


def source_data(source: Any, inputs: ModelInputs, seed: int = 0, split_seed: int = 0) -> SourceData:
    """Resolve ``source`` into :class:`SourceData`: a registered dataset name, a ``data:`` mapping
    or :class:`~edgeadapt.data.config.DataSection` (built at the model's input size / with its
    tokenizer; ``split_seed`` cuts a missing validation split), a per-epoch batch factory
    ``f(epoch)``, or an iterable of batches (kept in memory)."""
    if isinstance(source, (str, Mapping)):
        try:
            source = DataSection(**({"name": source} if isinstance(source, str) else source))
        except ValidationError as exc:
            why = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            raise ConfigError(f"source: {why}") from None
    if isinstance(source, DataSection):
        image = dataset_info(source.name).task == "image-classification"
        splits = load_splits(source, inputs.image_size if image else None, split_seed)
        train, val, test = (for_model(s, inputs, f"source ({source.name})") for s in splits)
        return SourceData(lambda e: train.batches(BATCH_SIZE, shuffle=True, seed=seed + e),
                          lambda: val.batches(EVAL_BATCH), lambda: test.batches(EVAL_BATCH), source.name)
    if callable(source):
        return SourceData(source)
    if isinstance(source, Iterable):
        batches = list(source)
        if not batches:
            raise ConfigError("source: the batches are empty; give labelled source batches or a dataset name")
        return SourceData(lambda _e: batches)
    raise ConfigError(f"source: expected a registered dataset name, a data mapping, a batch factory or "
                      f"batches, got {type(source).__name__}")


def static_baseline(fm: Any, width: float, epochs: int, train: Callable[[int], Iterable[Batch]],
                    val: Callable[[], Iterable[Batch]] | None = None, seed: int = 0) -> Any:
    """The FM magnitude-pruned once to ``width`` and fine-tuned for ``epochs`` on the labelled
    source batches ``train(epoch)`` (best epoch by ``val()`` accuracy, or loss for tasks without
    accuracy)."""
    model = copy.deepcopy(fm)
    if width < 1:
        prune(model, ["heads", "neurons"], "magnitude", unit_sparsity=1.0 - width, device="cpu")
    if epochs > 0:
        monitor = "accuracy" if getattr(getattr(fm, "task", None), "name", "") == "classification" else "loss"
        fit(model, train, TrainConfig(epochs=epochs, learning_rate=2e-3, seed=seed, progress=False),
            val=val, monitor=monitor if val is not None else "loss")
    model.model.cpu()
    return model


def resolve_width(kb: Any, width: float, proxy_params: int | None, proxy_memory_bytes: int | None,
                  stats: Any, loss_cfg: Any, first: Any, budget: RetrainBudget, fm: Any = None) -> float:
    """The proxy width the budget allows: ``width``, or the widest proxy within ``proxy_params``
    parameters / ``proxy_memory_bytes`` bytes of retraining memory, measured with our loss *for the
    model's task* (``loss_cfg``'s kind: next-token + distillation from ``fm`` for a causal LM, MMD
    (+ masked tokens) for an encoder, MMD + diversity + replay for a classifier) on a batch of the
    first domain, ``first``."""
    if proxy_params is not None and proxy_memory_bytes is not None:
        raise ConfigError("proxy_params and proxy_memory_bytes are alternatives; set one of them")
    if proxy_params is not None:
        return width_for_params(kb, proxy_params)
    if proxy_memory_bytes is not None:
        batch = next(iter(unlabeled(first.adapt.batches(budget.batch_size))))
        loss = our_loss(MethodContext(fm=fm, kb=kb, stats=stats, loss_cfg=loss_cfg, budget=budget))
        return width_for_memory(kb, proxy_memory_bytes, loss, batch, budget.learning_rate, budget.device,
                                budget.gradient_checkpointing)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 1:
        raise ConfigError(f"width: {width!r} is not a fraction of the model; give a number in (0, 1]")
    return float(width)


def without_distillation(loss_cfg: Any) -> Any:
    """``loss_cfg`` with ``distill: 0`` (no frozen-FM teacher forward per step), or ``None`` when it
    distils nothing already (or has no such term)."""
    return loss_cfg.model_copy(update={"distill": 0.0}) if getattr(loss_cfg, "distill", 0) else None


def edge_memory_plan(kb: Any, width: float, memory_bytes: int | None, stats: Any, loss_cfg: Any, first: Any,
                     budget: RetrainBudget, trainable: str = "all", fm: Any = None,
                     time_budget: TimeBudget | None = None) -> PlannedMemory:
    """The memory plan (freezing, checkpointing) of the edge methods' retraining within
    ``memory_bytes``, chosen by :func:`~edgeadapt.online.edge_plan.plan_for_memory` on the proxy at
    ``width`` cut for the first domain ``first``, with our loss on one of its batches (predicted,
    then confirmed by measuring one step); an infeasible budget raises
    :class:`~edgeadapt.errors.InfeasibleError` naming the smallest one.

    With ``time_budget`` (seconds per domain, or a fraction of the unconstrained retraining: ``fm``
    with ``trainable`` retrained with our loss and no knobs for ``budget.steps``, its step measured
    here by :func:`~edgeadapt.online.edge_plan.loop_seconds`)
    :func:`~edgeadapt.online.edge_plan.plan_for_budget` also chooses the edge steps per domain
    and may drop the distillation term (:func:`without_distillation`)."""
    proxy = extract_proxy(kb, unlabeled(first.adapt.batches(256)), width).adapter
    set_trainable(proxy, trainable)
    batch = next(iter(unlabeled(first.adapt.batches(budget.batch_size))))
    loss = our_loss(MethodContext(fm=fm, kb=kb, stats=stats, loss_cfg=loss_cfg, budget=budget))
    if time_budget is None:
        return plan_for_memory(proxy, loss(proxy), batch, memory_bytes or 0, budget.device)
    losses = [(CONFIGURED, loss(proxy))]
    lighter = without_distillation(loss_cfg)
    if lighter is not None:
        light = our_loss(MethodContext(fm=fm, kb=kb, stats=stats, loss_cfg=lighter, budget=budget))
        losses.append((WITHOUT_DISTILLATION, light(proxy)))
    reference = None
    if time_budget.relative:
        whole = copy.deepcopy(fm)
        set_trainable(whole, trainable)
        reference = loop_seconds(whole, loss(whole), batch, budget.device, constrained=False)
    return plan_for_budget(proxy, losses, batch, memory_bytes, time_budget, budget.steps, budget.device,
                           reference)


def check_methods(names: Sequence[str]) -> None:
    """Refuse, before any compute, an empty list, an unknown or a repeated method name
    (:class:`~edgeadapt.errors.ConfigError` listing the registered methods)."""
    known = method_names()
    if not names:
        raise ConfigError(f"methods: the list is empty, so nothing would run; choose from {', '.join(known)}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"methods: unknown {unknown}; choose from {', '.join(known)}")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ConfigError(f"methods: {repeated} listed more than once")


def main_metric(metrics: Mapping[str, float]) -> str:
    """The metric a result is reported in: the first of :data:`METRICS` that ``metrics`` has."""
    for name in METRICS:
        if name in metrics:
            return name
    raise ConfigError(f"the model's evaluate() returned {sorted(metrics)}; it needs one of {list(METRICS)}")


def as_budget(budget: RetrainBudget | Mapping[str, Any] | None) -> RetrainBudget:
    """``budget`` as a :class:`~edgeadapt.online.retrain.RetrainBudget`; bad fields are a
    :class:`~edgeadapt.errors.ConfigError` naming them (``budget.steps: …``), not a pydantic dump."""
    if isinstance(budget, RetrainBudget):
        return budget
    try:
        return RetrainBudget(**dict(budget or {}))
    except ValidationError as exc:
        raise ConfigError("; ".join(f"budget.{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e['input']!r})"
                                    for e in exc.errors())) from None


def model_positions(fm: Any) -> int | None:
    """The number of token positions ``fm``'s config allows (``None``: not bounded or not known)."""
    config = getattr(getattr(fm, "model", None), "config", None)
    config = config.to_dict() if hasattr(config, "to_dict") else config
    return limits_from_config(config if isinstance(config, dict) else {}).positions


def adapt(fm: Any, kb: Any, stream: DriftStream | str | Path | Sequence[Any] | None = None,
          methods: Sequence[str] | None = None, budget: RetrainBudget | Mapping[str, Any] | None = None,
          width: float = 0.75, source: Any = None, seed: int = 0, progress: bool = True, *,
          loss: AdaptLossConfig | Mapping[str, Any] | None = None, trainable: str = "all",
          static_epochs: int = 8, proxy_params: int | None = None, proxy_memory_bytes: int | None = None,
          max_length: int | None = None, method_options: Mapping[str, Mapping[str, Any]] | None = None,
          logger: Any = None, memory_budget: int | str | None = None,
          time_budget: float | str | None = None) -> dict[str, Any]:
    """Run ``methods`` (default: every registered method that can adapt ``fm``'s task,
    :func:`~edgeadapt.online.methods.methods_for`) side by side over ``stream``; return the results.

    - ``fm``: the foundation model (a model adapter; its task's loss and ``evaluate`` are used).
    - ``kb``: its knowledge base, or the directory ``edgeadapt offline kb`` wrote (then checked
      against ``fm`` and, without ``source``, the source dataset recorded there is used).
    - ``stream``: a :class:`DriftStream` or anything :meth:`DriftStream.parse` takes (``None``:
      the default stream); its data is built for ``fm`` (image side, tokenizer, ``max_length``).
    - ``budget``: retraining per domain (:class:`~edgeadapt.online.retrain.RetrainBudget` fields).
    - ``width`` or ``proxy_params``/``proxy_memory_bytes``: the proxy's (and static baseline's) size.
    - ``memory_budget``: peak bytes (or ``"8MiB"``) of the edge methods' retraining step; a memory
      plan (frozen blocks, checkpoint segments) is chosen for it (:func:`edge_memory_plan`) instead
      of ``budget.gradient_checkpointing`` and recorded as ``memory_plan`` in the results and in
      those methods' rows. An infeasible budget fails before retraining, naming the smallest one.
    - ``time_budget``: the edge methods' retraining time per domain, seconds (``1.5``, ``"1500ms"``)
      or a fraction of the unconstrained retraining (``"0.5x"``: ``fm`` retrained whole with our loss,
      no knobs, ``budget.steps`` steps — what ``full`` runs; its step is measured first). The plan
      then also sets the edge steps (``budget.edge_steps``: as many as fit) and may drop our loss's
      distillation term for the edge methods (``memory_plan.loss``: ``"without distillation"``) when
      too few steps fit with it; freezing is its last resort
      (:func:`~edgeadapt.online.edge_plan.plan_for_budget`).
    - ``source``: the labelled source data for the statistics the edge keeps and the static
      baseline's fine-tuning — a registered dataset name, a ``data:`` mapping, a batch factory or
      batches; default: the dataset recorded in the knowledge base directory.
    - ``loss``: :class:`~edgeadapt.online.losses.AdaptLossConfig` fields of our loss;
      ``trainable``: which parameters retrain; ``static_epochs``: the static baseline's fine-tuning;
      ``method_options``: per-method settings by name (e.g. ``{"eata": {"d_margin": 0.4}}``).

    Returns :func:`~edgeadapt.online.runner.run_stream`'s dict (``rows``, ``per_domain``,
    ``domains``) plus ``proxy_width``, ``source`` (its name) and ``clean_<metric>`` (the FM on the
    source test split, e.g. ``clean_accuracy``) when the source has a test split. Bad input is a
    :class:`~edgeadapt.errors.ConfigError` raised before any training; ``method_options`` is checked
    first, as ``edgeadapt adapt`` checks it (:func:`~edgeadapt.online.method_options.check_method_options`:
    a misspelt setting names the closest known one)."""
    task = getattr(getattr(fm, "task", None), "name", None)
    names = list(methods_for(task) if methods is None else methods)
    check_methods(names)
    if method_options is not None:
        if not isinstance(method_options, Mapping):
            raise ConfigError(f"method_options: a mapping of method name -> settings, got {method_options!r}")
        check_method_options({name: dict(settings) if isinstance(settings, Mapping) else settings
                              for name, settings in method_options.items()})
    for needed in ("evaluate", "task_loss", "model"):
        if not hasattr(fm, needed):
            raise ConfigError(f"fm: {type(fm).__name__} is not a model adapter (it has no {needed!r}); wrap "
                              "the model with edgeadapt.models.registry.wrap or implement ModelAdapter")
    split_seed = 0
    if isinstance(kb, (str, Path)):
        kb_dir = Path(kb)
        if source is None:
            recorded = recorded_source(kb_dir)
            if recorded is None:
                raise ConfigError(f"source: {kb_dir} records no source dataset; pass source= (a registered "
                                  "dataset name or labelled batches)")
            source, split_seed = recorded
        kb = load_kb(kb_dir, expect_base_hash=fm.base_hash() if hasattr(fm, "base_hash") else None)
    elif source is None:
        raise ConfigError("source: give the source data (a registered dataset name or labelled batches), or "
                          "pass the knowledge base as its directory, whose manifest records the dataset")
    budget = as_budget(budget)
    loss_cfg = loss_config_for(task, loss)
    memory_bytes = None if memory_budget is None else parse_bytes(memory_budget)
    step_time = None if time_budget is None else TimeBudget.parse(time_budget)
    if getattr(loss_cfg, "mmd", 0):  # MMD needs 2 samples a batch: refuse now, not mid-stream
        check_micro_batching(budget.memory or MemoryPlan(), budget.batch_size, ADAPTATION_LOSS)
    stream = DriftStream.parse(stream)
    if max_length is not None:  # an explicit length must fit; the default is 128 capped at the positions
        check_context(max_length, model_positions(fm), "max_length")
    inputs = ModelInputs.of(fm, 128 if max_length is None else max_length)

    domains = stream.build(inputs=inputs, seed=seed)  # a domain the model cannot take fails here, cheaply
    src = source_data(source, inputs, seed, split_seed)
    stats = source_stats(fm, src.train(0), seed=seed)
    width = resolve_width(kb, width, proxy_params, proxy_memory_bytes, stats, loss_cfg, domains[0], budget,
                          fm=fm)
    plan = None
    if memory_bytes is not None or step_time is not None:
        plan = edge_memory_plan(kb, width, memory_bytes, stats, loss_cfg, domains[0], budget, trainable, fm,
                                step_time)
        budget = budget.model_copy(update={"memory": plan.plan, "edge_steps": plan.steps})
    static = functools.cache(lambda: static_baseline(fm, width, static_epochs, src.train, src.val, seed)) \
        if "static" in names else None
    states = build_methods(names, fm, kb, stats, loss_cfg, width, static, trainable, budget=budget,
                           options=method_options)
    if plan is not None and plan.variant == WITHOUT_DISTILLATION:  # the edge methods' loss, rebuilt
        edge = build_methods([m.name for m in states if m.constrained], fm, kb, stats,
                             without_distillation(loss_cfg), width, static, trainable, budget=budget,
                             options=method_options)
        states = [next((e for e in edge if e.name == m.name), m) for m in states]
    results = run_stream(states, domains, budget, seed=seed, logger=logger, progress=progress,
                         on_labelled=lambda batches, k: stats.absorb(batches, 1 / (k + 1), seed=seed + k))
    results.update(proxy_width=width, source=src.name)
    if plan is not None:
        edge = {m.name for m in states if m.constrained}
        results["memory_plan"] = describe_plan(plan, memory_bytes)
        for row in [*results["rows"], *results["per_domain"]]:
            if row["method"] in edge:
                row["memory_plan"] = results["memory_plan"]
    if src.test is not None:
        metrics = fm.evaluate(src.test())
        metric = main_metric(metrics)
        results[f"clean_{metric}"] = metrics[metric]
    return results
