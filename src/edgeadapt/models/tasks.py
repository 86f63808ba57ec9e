"""What a model is trained and judged on: loss, features (the head's input) and evaluation.

Tasks are separate from architecture families so any family can be paired with any task
(a BERT as a classifier or as a sentence encoder). Batches are dicts of tensors.

Each task names its headline ``metric`` (a key of what ``evaluate`` returns) and whether
``higher_is_better``, so reports and model selection need no per-task code:

==================  ======================  ================
task                metric                  higher_is_better
==================  ======================  ================
Classification      ``accuracy``            True
CausalLM            ``perplexity``          False
SentenceEncoder     ``retrieval_accuracy``  True
==================  ======================  ================
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
    metric: str  # the headline key of evaluate()'s result
    higher_is_better: bool  # whether a larger ``metric`` is better

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
    metric: str = "accuracy"
    higher_is_better: bool = True

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


def token_halves(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Two views of each row of a token batch: its first and second half of real tokens
    (``attention_mask`` == 1; all tokens when there is no mask), each left-aligned and zero-padded
    to the longest half. Rows with fewer than 2 tokens give an empty second half."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask", torch.ones_like(ids))
    rows = [ids[i][mask[i].bool()] for i in range(len(ids))]
    views = []
    for part in (lambda r: r[: len(r) // 2 or len(r)], lambda r: r[len(r) // 2 or len(r):]):
        pieces = [part(r) for r in rows]
        width = max(1, max(len(p) for p in pieces))
        out_ids = torch.zeros(len(rows), width, dtype=ids.dtype, device=ids.device)
        out_mask = torch.zeros(len(rows), width, dtype=mask.dtype, device=ids.device)
        for i, p in enumerate(pieces):
            out_ids[i, : len(p)] = p
            out_mask[i, : len(p)] = 1
        views.append({"input_ids": out_ids, "attention_mask": out_mask})
    return views[0], views[1]


@dataclass
class SentenceEncoder:
    """A plain encoder whose output is a mean-pooled sentence embedding.

    The loss is in-batch contrastive (InfoNCE, temperature ``temperature``): each sentence's
    positive is its ``pair_*`` view when the batch has one (e.g. the other half of the same
    paragraph), otherwise a second forward pass with dropout (SimCSE).

    The metric is ``retrieval_accuracy``: on held-out text, the share of paragraphs whose first
    half's embedding finds its own second half (the ``pair_*`` view, else the second half of its
    tokens, :func:`token_halves`) as the nearest by cosine among the batch's second halves. It is
    what a sentence encoder is for (semantic search: text about the same thing lands close), needs
    neither labels nor a reference model on the device, is measured on the domain's own text, and
    cannot be won by collapse (identical embeddings retrieve at chance, 1/batch). Cosine fidelity
    to the foundation model was the alternative; it rewards not moving at all, so adapting to a
    domain could only lower it. Batches of one row are skipped (retrieval among one is trivial).
    """

    name: str = "sentence-embedding"
    head: str | None = None
    temperature: float = 0.05
    metric: str = "retrieval_accuracy"
    higher_is_better: bool = True

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
        """``{"loss", "retrieval_accuracy"}``: mean contrastive loss per batch and the share of
        rows (in batches of at least 2) whose first view retrieves its own second view."""
        losses = []
        hits = rows = 0
        for batch in batches:
            losses.append(self.loss(model, batch).item())
            if len(batch["input_ids"]) < 2:
                continue
            if "pair_input_ids" in batch:
                first = batch
                second = {k[len("pair_"):]: v for k, v in batch.items() if k.startswith("pair_")}
            else:
                first, second = token_halves(batch)
            a = F.normalize(self.features(model, first).float(), dim=-1)
            b = F.normalize(self.features(model, second).float(), dim=-1)
            target = torch.arange(len(a), device=a.device)
            hits += int(((a @ b.T).argmax(-1) == target).sum())
            rows += len(a)
        if not losses:
            raise ConfigError("evaluate() got no batches")
        if rows == 0:
            raise ConfigError("evaluate(): retrieval_accuracy needs batches of at least 2 texts; raise the "
                              "batch size")
        return {"loss": sum(losses) / len(losses), "retrieval_accuracy": hits / rows}


@dataclass
class CausalLM:
    """Next-token prediction; padding (attention_mask == 0) is ignored in the loss."""

    name: str = "causal-lm"
    head: str | None = "lm_head"
    metric: str = "perplexity"
    higher_is_better: bool = False

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
