"""Retraining on the edge: a few hundred steps on the current window, within a step or time budget.

It is the shared training loop with an adaptation loss (:mod:`edgeadapt.online.losses`), a
choice of trainable parameters, and a peak-memory measurement of one representative step
(tensor accounting on CPU, ``max_memory_allocated`` on CUDA), so every method in the stream
runner is trained and measured the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from edgeadapt.errors import ConfigError
from edgeadapt.memory.accounting import measure_peak
from edgeadapt.models.adapter import HFAdapter
from edgeadapt.numerics import upcast
from edgeadapt.training.config import TrainConfig
from edgeadapt.training.device import resolve_device, to_device
from edgeadapt.training.loop import fit, set_checkpointing

Batch = dict[str, torch.Tensor]
LossFn = Callable[[HFAdapter, Batch], torch.Tensor]


class RetrainBudget(BaseModel):
    """How much retraining one domain gets."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(30, ge=1, description="Optimizer steps per domain.")
    seconds: float | None = Field(None, gt=0, description="Optional wall-clock cap per domain.")
    batch_size: int = Field(64, ge=1, description="Samples per step.")
    learning_rate: float = Field(3e-4, gt=0, description="AdamW learning rate (constant after warmup).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:N]'.")
    gradient_checkpointing: bool = Field(True, description="Recompute block activations in backward on "
                                         "the edge (static and edgeadapt): less memory, more time. The "
                                         "unconstrained baselines (full, tent) never use it.")


@dataclass
class RetrainResult:
    seconds: float
    steps: int
    peak_memory_bytes: int
    trainable_params: int


def step_memory(adapter: HFAdapter, loss_fn: LossFn, batch: Batch, lr: float, device: torch.device,
                checkpointing: bool = False) -> int:
    """Peak bytes of one retraining step (forward, backward, AdamW update) including parameters,
    gradients and optimizer state, measured on a throwaway copy so training is unaffected. A
    bf16/fp16 model is measured on float32 master weights, as :func:`fit` trains it."""
    import copy

    probe = copy.deepcopy(adapter)
    probe.model.to(device).train()
    upcast(probe.model)
    set_checkpointing(probe.model, checkpointing)
    params = [p for p in probe.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    batch = to_device(batch, device)

    def step() -> None:
        loss_fn(probe, batch).backward()
        opt.step()

    _, report = measure_peak(step, device=device, modules=[probe.model], optimizer=opt)
    return report.total_bytes


def retrain(adapter: HFAdapter, batches: Callable[[int], Iterable[Batch]], loss_fn: LossFn,
            budget: RetrainBudget, seed: int = 0, measure: bool = True, constrained: bool = True
            ) -> RetrainResult:
    """Train ``adapter`` (its ``requires_grad`` parameters) on ``batches(epoch)`` with ``loss_fn``
    for ``budget.steps`` optimizer steps (or ``budget.seconds``). ``constrained`` methods run under
    the edge's memory measures (``budget.gradient_checkpointing``)."""
    checkpointing = budget.gradient_checkpointing and constrained
    device = resolve_device(budget.device)
    trainable = sum(p.numel() for p in adapter.model.parameters() if p.requires_grad)
    if trainable == 0:
        raise ConfigError("trainable: no parameter of the model is trainable; choose another 'trainable' set")
    peak = step_memory(adapter, loss_fn, next(iter(batches(0))), budget.learning_rate, device,
                       checkpointing) if measure else 0
    per_epoch = sum(1 for _ in batches(0))
    cfg = TrainConfig(epochs=max(1, -(-budget.steps // per_epoch)), max_steps=budget.steps,
                      max_seconds=budget.seconds, learning_rate=budget.learning_rate,
                      weight_decay=budget.weight_decay, schedule="constant", warmup_fraction=0.0,
                      seed=seed, device=budget.device, progress=False, gradient_checkpointing=checkpointing)
    start = time.perf_counter()
    result = fit(adapter, batches, cfg, loss_fn=loss_fn)
    adapter.model.eval()
    return RetrainResult(time.perf_counter() - start, result.steps, peak, trainable)


def unlabeled(batches: Iterable[Batch]) -> Iterable[Batch]:
    """The same batches without labels (what an edge device sees)."""
    for b in batches:
        yield {k: v for k, v in b.items() if k != "labels"}


def describe(result: RetrainResult) -> dict[str, Any]:
    return {"retrain_seconds": result.seconds, "steps": result.steps,
            "peak_memory_bytes": result.peak_memory_bytes,
            "trainable_params": result.trainable_params}
