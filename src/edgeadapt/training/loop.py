"""The one training loop every stage reuses.

``fit`` trains ``adapter.model`` in place through a loss function (the adapter's task loss by
default, or a stage's own: distillation, MMD, entropy). It owns what every stage needs and no
stage should re-implement: optimizer and warmup schedule (cosine, plateau cut, constant), autocast
(bf16 on CPU/CUDA, fp16 with loss scaling on CUDA), float32 master weights for a bf16/fp16 model,
gradient accumulation, gradient checkpointing, a memory plan (``cfg.memory``: micro-batches, frozen
leading blocks, checkpointed segments; :mod:`edgeadapt.memory.knobs`), clipping, early stopping with
best-weight restore, step/time budgets, crash-safe checkpoints that resume to the same result, live
progress, metric logging, and data-parallel training through accelerate when launched on several processes
(``accelerate launch``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from edgeadapt.errors import ConfigError
from edgeadapt.memory.knobs import apply_plan, block_chain, micro_batches
from edgeadapt.memory.plan import LossTraits, MemoryPlan, task_loss_traits
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.numerics import fp32_master, missing_kernel
from edgeadapt.progress import bar_enabled, lines_enabled, progress_line
from edgeadapt.training.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from edgeadapt.training.config import TrainConfig
from edgeadapt.training.device import resolve_device, to_device
from edgeadapt.training.distributed import Distributed
from edgeadapt.training.schedule import LRSchedule

__all__ = ["TrainConfig", "TrainResult", "fit", "loss_traits_for", "memory_plan", "own_rng",
           "seed_everything", "set_checkpointing", "LOWER_IS_BETTER"]

Batch = dict[str, torch.Tensor]
LossFn = Callable[[ModelAdapter, Batch], torch.Tensor]
LOWER_IS_BETTER = ("loss", "perplexity", "nll")


@dataclass
class TrainResult:
    """Per-epoch history, the best validation metrics, and why training stopped."""

    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    stop_reason: str = "epochs"
    steps: int = 0
    resumed_from_step: int | None = None


@dataclass
class StepInfo:
    """What callbacks see after each optimizer step."""

    step: int
    epoch: int
    loss: float
    lr: float


def _optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=0.9, nesterov=True,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("precision: fp16 autocast needs CUDA; use 'bf16' on CPU")
        return torch.float16
    if cfg.precision == "bf16":
        return torch.bfloat16
    if cfg.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def set_checkpointing(model: torch.nn.Module, on: bool) -> None:
    """Turn activation (gradient) checkpointing of a Hugging Face model on or off.

    With it on, block activations are recomputed in backward instead of stored, trading compute
    for memory; ``fit`` uses it for ``cfg.gradient_checkpointing`` and memory probes use it to
    measure the same step. Turning it off on a model without the feature is a no-op; turning it
    on raises :class:`~edgeadapt.errors.ConfigError`."""
    # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_*.
    enable = getattr(model, "activation_checkpointing_enable", None) \
        or getattr(model, "gradient_checkpointing_enable", None)
    if enable is None:
        if on:
            raise ConfigError("gradient_checkpointing: this model is not a Hugging Face model with "
                             "activation checkpointing; set gradient_checkpointing: false")
        return
    if on:
        key = "activation_checkpointing_kwargs" if hasattr(model, "activation_checkpointing_enable") \
            else "gradient_checkpointing_kwargs"
        enable(**{key: {"use_reentrant": False}})
    elif getattr(model, "is_activation_checkpointing", False):
        model.activation_checkpointing_disable()


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                             "python_pos": random.getstate()[2]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


@contextmanager
def own_rng(device: torch.device) -> Iterator[None]:
    """Run a block on private copies of the process-wide RNG streams (torch CPU, the CUDA device's,
    Python's ``random``): whatever the block seeds or draws, the caller's streams are exactly as
    they were when it returns. ``fit`` trains inside it, so seeding the loop with ``cfg.seed``
    (dropout, random widths, anything a loss draws) is reproducible without reseeding the caller.
    Seed the whole process explicitly with :func:`seed_everything` when you want that."""
    python_state = random.getstate()
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            random.setstate(python_state)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every CUDA device) and Python's ``random`` process-wide.

    The explicit, opt-in step for scripts that want one seed to govern everything they do;
    library functions never call it (``fit`` seeds only its own private streams)."""
    random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def memory_plan(adapter: ModelAdapter, plan: MemoryPlan | None) -> Iterator[None]:
    """Apply ``plan``'s freezing, checkpointing and BatchNorm policy to ``adapter.model`` for the
    block (:func:`~edgeadapt.memory.knobs.apply_plan` over the adapter's block chain) and undo it
    afterwards; ``None`` changes nothing. Build the optimizer inside, over ``requires_grad``
    parameters, so frozen blocks get no optimizer state. Raises
    :class:`~edgeadapt.errors.ConfigError` for a plan the model cannot take (more frozen blocks or
    segments than it has)."""
    if plan is None:
        yield
        return
    with apply_plan(adapter.model, plan, block_chain(adapter)):
        yield


def loss_traits_for(adapter: ModelAdapter, loss_fn: LossFn | None, traits: LossTraits | None) -> LossTraits:
    """What micro-batching may assume about the training loss: ``traits`` when given, else the
    adapter's task loss's (:func:`~edgeadapt.memory.plan.task_loss_traits`), else (a stage's own
    loss without traits) a per-sample mean, as :func:`~edgeadapt.memory.knobs.train_step` assumes."""
    if traits is not None:
        return traits
    task = getattr(getattr(adapter, "task", None), "name", None)
    return task_loss_traits(task) if loss_fn is None and task else LossTraits("the loss")


def _improved(value: float, best: float | None, lower: bool) -> bool:
    return best is None or (value < best if lower else value > best)


def fit(adapter: ModelAdapter, train: Callable[[int], Iterable[Batch]], cfg: TrainConfig,
        val: Callable[[], Iterable[Batch]] | None = None, monitor: str = "loss", *,
        loss_fn: LossFn | None = None, evaluate: Callable[[], dict[str, float]] | None = None,
        logger: Any | None = None, checkpoint_dir: str | Path | None = None, resume: bool = True,
        callbacks: Sequence[Callable[[StepInfo], None]] = (), modules: Sequence[torch.nn.Module] = (),
        loss_traits: LossTraits | None = None) -> TrainResult:
    """Train ``adapter.model`` in place and return its history.

    ``train(epoch)`` yields that epoch's batches (so shuffling is seeded per epoch). Validation
    runs after every epoch on ``val()`` batches through ``adapter.evaluate`` (or ``evaluate()``
    when given); ``monitor`` names the metric for early stopping, plateau cuts and best-weight
    restore (lower is better for loss/perplexity/nll). With ``checkpoint_dir`` the run saves a
    checkpoint every epoch (and every ``cfg.checkpoint_every`` steps) and, with ``resume``, picks
    up from the last one. ``logger`` is any :class:`edgeadapt.tracking.MetricLogger`. ``modules``
    are extra trainable modules outside the model (e.g. the knowledge base's gates); they are
    optimized, checkpointed and best-restored together with it.

    Memory: with ``cfg.memory`` (a :class:`~edgeadapt.memory.plan.MemoryPlan`) the plan's leading
    blocks are frozen and its trainable blocks checkpointed for the run (restored afterwards), the
    optimizer covers only the parameters left trainable, and every batch runs in the plan's
    micro-batches, each loss weighted by the micro-batch's share of the batch (rows, or target
    tokens for a causal LM), so the step's gradient is the whole batch's. ``loss_traits`` say what
    the loss is (default: the task loss's traits, or a per-sample mean for a given ``loss_fn``); a
    loss that is not per-sample (MMD, in-batch negatives) is refused when the plan would split it
    (:class:`~edgeadapt.errors.ConfigError`, before its first backward).

    Precision: a bf16/fp16 model trains on float32 master weights (an update smaller than the half
    dtype's resolution would be lost) under ``cfg.precision``'s autocast, and leaves ``fit`` in
    its own dtype again (its checkpoints hold the float32 state, so a resumed run is exact). An
    op the device has no half kernel for raises :class:`~edgeadapt.errors.ConfigError` naming the
    dtype and the fix (:func:`~edgeadapt.numerics.missing_kernel`).

    Randomness: the loop seeds torch and ``random`` with ``cfg.seed`` (a resumed run restores the
    checkpoint's streams instead) on private copies of the RNGs (:func:`own_rng`), so a run is
    reproducible and the caller's RNG state is the same after ``fit`` as before it.

    Example::

        fit(adapter, lambda e: image_batches(x, y, 64, shuffle=True, seed=e),
            TrainConfig(epochs=5, precision="bf16"), val=lambda: image_batches(vx, vy, 256),
            monitor="accuracy", checkpoint_dir="runs/src")
    """
    given, loss_fn = loss_fn, loss_fn or (lambda a, b: a.task_loss(b))
    if cfg.patience is not None and val is None and evaluate is None:
        raise ConfigError("patience: early stopping needs validation data; pass val= or set patience: null")
    dist = Distributed.from_env(cfg.device)
    device = dist.device if dist else resolve_device(cfg.device)
    # own_rng: the loop's randomness never leaks into the caller's streams; fp32_master: a bf16/fp16
    # model trains on float32 master weights and is rounded back to its dtype once, at the end
    try:
        with own_rng(device), fp32_master(adapter.model, *modules), memory_plan(adapter, cfg.memory):
            return _fit(adapter, train, cfg, val, monitor, loss_fn, evaluate, logger, checkpoint_dir, resume,
                        callbacks, modules, dist, device, loss_traits_for(adapter, given, loss_traits))
    except RuntimeError as exc:  # a half-precision op the device lacks is the user's to fix, by name
        error = missing_kernel(exc, device)
        if error is None:
            raise
        raise error from exc


def _fit(adapter: ModelAdapter, train: Callable[[int], Iterable[Batch]], cfg: TrainConfig,
         val: Callable[[], Iterable[Batch]] | None, monitor: str, loss_fn: LossFn,
         evaluate: Callable[[], dict[str, float]] | None, logger: Any | None,
         checkpoint_dir: str | Path | None, resume: bool, callbacks: Sequence[Callable[[StepInfo], None]],
         modules: Sequence[torch.nn.Module], dist: Distributed | None, device: torch.device,
         traits: LossTraits) -> TrainResult:
    model = adapter.model.to(device)
    for extra in modules:
        extra.to(device)
    # One container so optimizer, checkpoints and best-weight restore cover everything trained.
    trained = torch.nn.ModuleList([model, *modules]) if modules else model
    amp = _autocast_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None

    def batches(epoch: int) -> Iterator[Batch]:
        return dist.shard(train(epoch)) if dist else iter(train(epoch))

    n_micro = sum(1 for _ in batches(0))
    if n_micro == 0:
        raise ConfigError("train data is empty: the first epoch yielded no batches")
    steps_per_epoch = math.ceil(n_micro / cfg.grad_accum_steps)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(cfg.max_steps, total)
    params = [p for p in trained.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters (all requires_grad=False)")
    opt = _optimizer(cfg, params)
    lower = monitor in LOWER_IS_BETTER
    sched = LRSchedule(opt, cfg.schedule, total, int(cfg.warmup_fraction * total), cfg.plateau_factor,
                       cfg.plateau_patience, lower)
    st: dict[str, Any] = {"epoch": 0, "micro": 0, "step": 0, "history": [], "best": {}, "bad_epochs": 0,
                          "loss_sum": 0.0, "elapsed": 0.0, "stop_reason": "epochs"}
    result = TrainResult()
    best_state: dict[str, torch.Tensor] | None = None
    found = find_checkpoint(checkpoint_dir) if checkpoint_dir is not None and resume else None
    if found is not None:
        saved, best_state = load_checkpoint(found, trained)
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["schedule"])
        if scaler is not None and "scaler" in saved:
            scaler.load_state_dict(saved["scaler"])
        _set_rng_state(saved["rng"], device)
        st.update(saved["loop"])
        result.resumed_from_step = st["step"]
    else:
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
    if st["stop_reason"] != "epochs" or st["epoch"] >= cfg.epochs:  # a finished run: nothing to do
        return _finish(trained, st, best_state, result)

    def checkpoint() -> None:
        if checkpoint_dir is None or (dist and not dist.is_main):
            return
        state = {"optimizer": opt.state_dict(), "schedule": sched.state_dict(), "rng": _rng_state(device),
                 "loop": dict(st)}
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        save_checkpoint(checkpoint_dir, trained, state, best_state)

    main = dist is None or dist.is_main
    log = logger if (logger is not None and main) else None
    set_checkpointing(model, cfg.gradient_checkpointing)
    # A live bar on a terminal; one line per epoch in a log or pipe; nothing when quiet.
    bar = tqdm(total=total, initial=st["step"], desc="train", disable=not bar_enabled(cfg.progress and main),
               leave=False)
    epoch_lines = lines_enabled(cfg.progress and main)
    start = time.perf_counter() - st["elapsed"]
    try:
        for epoch in range(st["epoch"], cfg.epochs):
            trained.train()
            for i, batch in enumerate(batches(epoch)):
                if i < st["micro"]:  # consumed before the checkpoint we resumed from
                    continue
                batch = to_device(batch, device)
                # a memory plan's micro-batches, each weighted by its share of the batch's mean loss
                parts = [(batch, 1.0)] if cfg.memory is None else micro_batches(batch, cfg.memory, traits)
                batch_loss = 0.0
                for part, share in parts:
                    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                        loss = loss_fn(adapter, part)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"loss is {loss.item()} at step {st['step']} "
                                                 f"(epoch {epoch}); lower learning_rate or use "
                                                 "precision: fp32")
                    scaled = loss * share / cfg.grad_accum_steps
                    (scaler.scale(scaled) if scaler else scaled).backward()
                    batch_loss += loss.item() * share
                st["micro"], st["loss_sum"] = i + 1, st["loss_sum"] + batch_loss
                if (i + 1) % cfg.grad_accum_steps and i + 1 != n_micro:
                    continue
                if dist:
                    dist.average_gradients(params)
                if scaler:
                    scaler.unscale_(opt)
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                if scaler:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                opt.zero_grad(set_to_none=True)
                sched.step()
                st["step"] += 1
                st["elapsed"] = time.perf_counter() - start
                avg = st["loss_sum"] / st["micro"]
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{avg:.4f}", lr=f"{sched.lr:.2e}")
                if log is not None and st["step"] % cfg.log_every == 0:
                    log.log_metrics({"train/loss": batch_loss, "train/lr": sched.lr}, st["step"])
                if cfg.max_steps is not None and st["step"] >= cfg.max_steps:
                    st["stop_reason"] = "max_steps"
                elif cfg.max_seconds is not None and st["elapsed"] >= cfg.max_seconds:
                    st["stop_reason"] = "max_seconds"
                periodic = cfg.checkpoint_every and st["step"] % cfg.checkpoint_every == 0
                if periodic and st["stop_reason"] == "epochs":
                    checkpoint()
                for callback in callbacks:
                    callback(StepInfo(st["step"], epoch, batch_loss, sched.lr))
                if st["stop_reason"] != "epochs":
                    break
            row: dict[str, float] = {"epoch": epoch, "step": st["step"],
                                     "train_loss": st["loss_sum"] / max(1, st["micro"]), "lr": sched.lr}
            if val is not None or evaluate is not None:
                metrics = evaluate() if evaluate is not None \
                    else adapter.evaluate(to_device(b, device) for b in val())
                if monitor not in metrics:
                    raise ConfigError(f"monitor: validation produced {sorted(metrics)}, not {monitor!r}; "
                                      f"set monitor to one of them")
                row.update({f"val_{k}": v for k, v in metrics.items()})
                bar.set_postfix(epoch=epoch, loss=f"{row['train_loss']:.4f}",
                                **{f"val_{monitor}": f"{metrics[monitor]:.4f}"})
                if _improved(metrics[monitor], st["best"].get(monitor), lower):
                    st["best"], st["bad_epochs"] = dict(metrics), 0
                    best_state = {k: v.detach().to("cpu", copy=True)
                                  for k, v in trained.state_dict().items()}
                else:
                    st["bad_epochs"] += 1
                sched.observe(metrics[monitor])
                patience_out = cfg.patience is not None and st["bad_epochs"] >= cfg.patience
                if patience_out and st["stop_reason"] == "epochs":
                    st["stop_reason"] = "patience"
            if log is not None:
                log.log_metrics({f"epoch/{k}": v for k, v in row.items() if k not in ("epoch", "step")},
                                st["step"])
            st["history"].append(row)
            if epoch_lines:
                summary = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "step"))
                progress_line(f"train: epoch {epoch + 1}/{cfg.epochs}, step {st['step']}/{total}, {summary}")
            st["epoch"], st["micro"], st["loss_sum"] = epoch + 1, 0, 0.0
            checkpoint()
            if st["stop_reason"] != "epochs":
                break
    finally:
        bar.close()
        set_checkpointing(model, False)
    return _finish(trained, st, best_state, result)


def _finish(model: torch.nn.Module, st: dict[str, Any],
            best_state: dict[str, torch.Tensor] | None, result: TrainResult) -> TrainResult:
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.history, result.best, result.steps = list(st["history"]), dict(st["best"]), st["step"]
    result.stop_reason = st["stop_reason"]
    result.stopped_early = st["stop_reason"] == "patience"
    return result

