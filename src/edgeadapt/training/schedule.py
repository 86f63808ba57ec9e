"""Learning-rate schedules: linear warmup, then cosine decay, a plateau-cut constant, or constant.

One multiplier function drives ``torch.optim.lr_scheduler.LambdaLR`` so warmup composes with every
schedule; the plateau cut is a factor that the loop lowers from validation results. Its state is
part of the checkpoint, so a resumed run follows the same learning-rate curve.
"""

from __future__ import annotations

import math

import torch


class LRSchedule:
    """``lr(step) = peak * warmup(step) * decay(step) * plateau_factor``."""

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int,
                 plateau_factor: float = 0.5, plateau_patience: int = 1, lower_is_better: bool = True):
        self.kind = kind
        self.total = max(1, total_steps)
        self.warmup = warmup_steps
        self.cut = plateau_factor
        self.patience = plateau_patience
        self.lower_is_better = lower_is_better
        self.factor = 1.0
        self.best: float | None = None
        self.stale = 0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._multiplier)

    def _multiplier(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "cosine":
            progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
            return 0.5 * (1 + math.cos(math.pi * progress))
        return self.factor

    def step(self) -> None:
        """Advance one optimizer step."""
        self.scheduler.step()

    def observe(self, value: float) -> bool:
        """Feed one validation result; for the plateau schedule cut the rate when it stalls.
        Returns True when the rate was cut."""
        if self.kind != "plateau":
            return False
        improved = self.best is None or (value < self.best if self.lower_is_better else value > self.best)
        if improved:
            self.best, self.stale = value, 0
            return False
        self.stale += 1
        if self.stale > self.patience:
            self.factor *= self.cut
            self.stale = 0
            # LambdaLR only re-evaluates on step(); refresh the current rate now.
            for group, base in zip(self.scheduler.optimizer.param_groups, self.scheduler.base_lrs):
                group["lr"] = base * self._multiplier(self.scheduler.last_epoch)
            return True
        return False

    @property
    def lr(self) -> float:
        return self.scheduler.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"factor": self.factor, "best": self.best, "stale": self.stale,
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.factor, self.best, self.stale = state["factor"], state["best"], state["stale"]
        self.scheduler.load_state_dict(state["scheduler"])
