"""Data-parallel training through accelerate, used when a run is launched on several processes.

``accelerate launch --multi_gpu train.py`` (or ``torchrun``) starts one process per GPU;
``Accelerator`` sets up the process group and the device of each rank. Every rank then takes its
own share of the batches and gradients are averaged with ``Accelerator.reduce`` before each
optimizer step, so all ranks stay identical. The model object itself is not wrapped, which keeps
adapters, hooks and pruning code working on the plain module. A single process never imports
accelerate.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch


class Distributed:
    """One rank of a multi-process run."""

    def __init__(self, accelerator: Any):
        self.accelerator = accelerator
        self.rank = accelerator.process_index
        self.world = accelerator.num_processes
        self.device = accelerator.device

    @classmethod
    def from_env(cls, device: str = "auto") -> Distributed | None:
        """A rank when launched with WORLD_SIZE > 1 (accelerate launch / torchrun), else None."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        from accelerate import Accelerator

        return cls(Accelerator(cpu=device == "cpu" or not torch.cuda.is_available()))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batches: Iterable[dict]) -> Iterator[dict]:
        """Every ``world``-th batch starting at this rank; the ragged tail is dropped on every
        rank so all ranks take the same number of steps (otherwise a collective would hang)."""
        items = list(batches)
        usable = len(items) // self.world * self.world
        return itertools.islice(iter(items), self.rank, usable, self.world)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Mean of every parameter's gradient over ranks, in one flat collective."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
            offset += g.numel()
