"""A small, config-driven training loop: AdamW, linear warmup + cosine decay, gradient clipping,
per-epoch validation with early stopping, a progress bar with live loss, ``device="auto"``.

It trains through the adapter's ``task_loss`` so any model/task pair works unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.training.device import resolve_device, to_device

Batch = dict[str, torch.Tensor]


class TrainConfig(BaseModel):
    """Hyperparameters of one training run."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1, description="Passes over the training data.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decoupled weight decay.")
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="Share of steps with linear warmup.")
    grad_clip: float = Field(1.0, gt=0, description="Max global gradient norm.")
    patience: int | None = Field(None, ge=1, description="Stop after this many epochs without validation "
                                 "improvement; None disables early stopping.")
    seed: int = Field(0, description="Seed for initialisation-independent randomness (shuffling, dropout).")
    device: str = Field("auto", description="'auto' (CUDA if present), 'cpu' or 'cuda[:N]'.")
    progress: bool = Field(True, description="Show a progress bar.")


@dataclass
class TrainResult:
    """Per-epoch history and the best validation metrics seen."""

    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False


def fit(adapter: ModelAdapter, train: Callable[[int], Iterable[Batch]], cfg: TrainConfig,
        val: Callable[[], Iterable[Batch]] | None = None, monitor: str = "loss") -> TrainResult:
    """Train ``adapter.model`` in place. ``train(epoch)`` yields that epoch's batches (so shuffling
    is seeded per epoch); ``val()`` yields validation batches. ``monitor`` is the validation
    metric for early stopping and best-weight restore (lower is better for ``loss``/``perplexity``)."""
    device = resolve_device(cfg.device)
    model = adapter.model.to(device)
    steps_per_epoch = sum(1 for _ in train(0))
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_fraction * total)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / max(1, warmup) if s < warmup else
                                              0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    lower_better = monitor in ("loss", "perplexity")
    result = TrainResult()
    best_state = None
    bad_epochs = 0
    torch.manual_seed(cfg.seed)
    bar = tqdm(total=total, desc="train", disable=not cfg.progress, leave=False)
    for epoch in range(cfg.epochs):
        model.train()
        running = 0.0
        for i, batch in enumerate(train(epoch)):
            loss = adapter.task_loss(to_device(batch, device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            running += loss.item()
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{running / (i + 1):.4f}")
        row = {"epoch": epoch, "train_loss": running / max(1, steps_per_epoch)}
        if val is not None:
            metrics = adapter.evaluate(to_device(b, device) for b in val())
            row.update({f"val_{k}": v for k, v in metrics.items()})
            value = metrics[monitor]
            best = result.best.get(monitor)
            if best is None or (value < best if lower_better else value > best):
                result.best = dict(metrics)
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                bad_epochs = 0
            else:
                bad_epochs += 1
        result.history.append(row)
        if cfg.patience is not None and bad_epochs >= cfg.patience:
            result.stopped_early = True
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result
