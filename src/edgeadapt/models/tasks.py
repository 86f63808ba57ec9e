"""What a model is trained and judged on: loss, features (the head's input) and evaluation.

Tasks are separate from architecture families so any family can be paired with any task
(a BERT as a classifier or as a sentence encoder). Batches are dicts of tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from edgeadapt.errors import ConfigError


class Task(Protocol):
    """The task seam: an adapter delegates loss, features and evaluation to one of these."""

    name: str
    head: str | None

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def features(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]: ...


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part of a batch the model's forward takes (labels and auxiliary views stripped)."""
    return {k: v for k, v in batch.items() if k not in ("labels",) and not k.startswith("pair_")}


def _head_input(model: nn.Module, head: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run the model and capture what enters ``head`` (a forward pre-hook, not a model fork)."""
    captured: list[torch.Tensor] = []
    handle = model.get_submodule(head).register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        model(**model_inputs(batch))
    finally:
        handle.remove()
    return captured[0]


@dataclass
class Classification:
    """Image or sequence classification. Without labels the loss uses the model's own argmax
    (a common calibration signal when no labels exist)."""

    name: str = "classification"
    head: str | None = "classifier"

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(**model_inputs(batch)).logits
        labels = batch.get("labels")
        if labels is None:
            labels = logits.detach().argmax(-1)
        return F.cross_entropy(logits, labels)

    def features(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return _head_input(model, self.head, batch)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        correct = total = 0
        loss_sum = 0.0
        for batch in batches:
            logits = model(**model_inputs(batch)).logits
            labels = batch["labels"]
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(-1) == labels).sum().item()
            total += labels.numel()
        if total == 0:
            raise ConfigError("evaluate() got no batches")
        return {"accuracy": correct / total, "loss": loss_sum / total}


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mask-aware mean over the sequence axis (the sentence-transformers pooling)."""
    if attention_mask is None:
        return hidden.mean(1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


@dataclass
class SentenceEncoder:
    """A plain encoder whose output is a mean-pooled sentence embedding.

    The loss is in-batch contrastive (InfoNCE, temperature ``temperature``): each sentence's
    positive is its ``pair_*`` view when the batch has one (e.g. the other half of the same
    paragraph), otherwise a second forward pass with dropout (SimCSE).
    """

    name: str = "sentence-embedding"
    head: str | None = None
    temperature: float = 0.05

    def features(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(**model_inputs(batch)).last_hidden_state
        return mean_pool(out, batch.get("attention_mask"))

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        a = self.features(model, batch)
        if "pair_input_ids" in batch:
            pair = {k[len("pair_"):]: v for k, v in batch.items() if k.startswith("pair_")}
            b = self.features(model, pair)
        else:
            b = self.features(model, batch)
        sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / self.temperature
        target = torch.arange(sim.shape[0], device=sim.device)
        return F.cross_entropy(sim, target)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        losses = [self.loss(model, b).item() for b in batches]
        if not losses:
            raise ConfigError("evaluate() got no batches")
        return {"loss": sum(losses) / len(losses)}


@dataclass
class CausalLM:
    """Next-token prediction; padding (attention_mask == 0) is ignored in the loss."""

    name: str = "causal-lm"
    head: str | None = "lm_head"

    @staticmethod
    def _labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch.get("labels", batch["input_ids"]).clone()
        if "attention_mask" in batch:
            labels[batch["attention_mask"] == 0] = -100
        return labels

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**model_inputs(batch), labels=self._labels(batch)).loss

    def features(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return _head_input(model, self.head, batch)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        nll = 0.0
        tokens = 0
        for batch in batches:
            labels = self._labels(batch)
            n = int((labels[:, 1:] != -100).sum())
            nll += model(**model_inputs(batch), labels=labels).loss.item() * n
            tokens += n
        if tokens == 0:
            raise ConfigError("evaluate() got no tokens")
        return {"loss": nll / tokens, "perplexity": math.exp(nll / tokens)}
