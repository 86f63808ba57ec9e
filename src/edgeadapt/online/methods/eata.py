"""``eata``: EATA (Niu et al., ICML 2022, "Efficient Test-Time Model Adaptation without Forgetting").

Label-free by definition: on a ``labelled: true`` stream domain it ignores the labels and adapts as
on any other (it cannot learn new classes; ``full``/``static``/``edgeadapt`` train on them).

Entropy minimisation on the norm-layer affine parameters, but only on samples that are

* reliable: prediction entropy ``H(x) < E0`` (the paper's ``E0 = 0.4 · ln C``), and
* not redundant: the cosine similarity of the sample's softmax to the moving average (momentum
  0.9) of the previously selected samples' softmax is below ``ε`` (in absolute value);

each kept sample weighted by ``1 / exp(H(x) − E0)`` (confident samples count more), plus the
anti-forgetting Fisher regulariser ``λ · Σ_i F_i (θ_i − θ_i⁰)²``, with ``F`` the diagonal Fisher
of the source model on the source replay buffer the edge keeps (:class:`~edgeadapt.online.losses.
SourceStats`, pseudo-labelled by the model's own argmax, as the official code does), averaged over
batches of ``fisher_batch``. A batch with no selected sample leaves the model unchanged.

Thresholds for ``C`` classes (the paper's are for ImageNet's 1000): ``E0 = 0.4 · ln C``; ``ε =
0.05 · √(1000 / C)``, because a confident sample against a class-balanced running mean has cosine
``1/√C`` (0.03 at 1000 classes, so 0.05 keeps it; 0.32 at 10 classes, where 0.05 would drop nearly
every sample): the scaling keeps the paper's ratio ε·√C ≈ 1.6; and ``λ = 2000 · ln C / ln 1000``,
the paper's λ scaled like the entropy term it balances (667 for 10 classes). Each is overridable
through ``MethodContext.options["eata"]`` (:class:`EATAConfig`). The update uses the retraining
budget's AdamW optimizer, as every method in the runner does (the paper: SGD, momentum 0.9).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from edgeadapt.models.adapter import HFAdapter
from edgeadapt.models.tasks import model_inputs
from edgeadapt.online.losses import norm_parameters, sample_entropy
from edgeadapt.online.methods.base import MethodContext, MethodState, class_logits, entropy_scale

Batch = dict[str, torch.Tensor]
Fishers = dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (diagonal Fisher, source value θ⁰)


class EATAConfig(BaseModel):
    """EATA's settings; ``None`` thresholds are derived from the class count (module docstring)."""

    model_config = ConfigDict(extra="forbid")

    e_margin: float | None = Field(None, gt=0, description="Entropy margin E0 (nats); default 0.4·ln C.")
    d_margin: float | None = Field(None, gt=0, description="Redundancy threshold ε on the cosine similarity "
                                   "to the running mean prediction; default 0.05·√(1000/C).")
    fisher_alpha: float | None = Field(None, ge=0, description="Weight λ of the Fisher regulariser; default "
                                       "2000·ln C/ln 1000; 0 disables it (the paper's ETA).")
    fisher_batch: int = Field(64, ge=1, description="Replay samples per Fisher batch.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum of the running mean prediction.")


def eata_entropy_loss(logits: torch.Tensor, e_margin: float, d_margin: float,
                      running_probs: torch.Tensor | None, momentum: float = 0.9
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """EATA's sample-efficient entropy on class ``logits`` ``[B, C]``.

    Returns the loss (mean over selected samples of ``H · exp(E0 − H)``, weights detached; ``0``
    attached to the graph when none is selected), the boolean selection ``[B]`` and the updated
    running mean prediction ``[C]`` (``None`` until a first sample is selected)."""
    ent = sample_entropy(logits)
    probs = F.softmax(logits.detach().float(), -1)
    keep = ent.detach() < e_margin
    if running_probs is not None:
        cos = F.cosine_similarity(running_probs.to(probs).unsqueeze(0), probs, dim=1)
        keep = keep & (cos.abs() < d_margin)
    if keep.any():
        mean = probs[keep].mean(0)
        running_probs = mean if running_probs is None \
            else momentum * running_probs.to(mean) + (1 - momentum) * mean
        weight = torch.exp(e_margin - ent.detach())
        loss = (ent * weight)[keep].mean()
    else:
        loss = ent.sum() * 0.0
    return loss, keep, running_probs


def fisher_information(adapter: HFAdapter, batches: Iterable[Batch], names: list[str]) -> Fishers:
    """Diagonal Fisher of the parameters ``names`` on ``batches`` (unlabeled: each sample is labelled
    by the model's own argmax): the mean over batches of the squared gradient of the batch-mean
    cross-entropy, with each parameter's current value as ``θ⁰``. The model is left as it was."""
    model = adapter.model
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    was_training = model.training
    sums: dict[str, torch.Tensor] = {}
    count = 0
    try:
        model.eval()
        for n, p in params.items():
            p.requires_grad_(n in names)
            p.grad = None
        device = next(model.parameters()).device
        for batch in batches:
            logits = class_logits(adapter, {k: v.to(device) for k, v in batch.items()}).float()
            F.cross_entropy(logits, logits.argmax(-1)).backward()
            for n in names:
                g = params[n].grad
                square = torch.zeros_like(params[n]) if g is None else g.detach().float() ** 2
                sums[n] = square if n not in sums else sums[n] + square
                params[n].grad = None
            count += 1
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        model.train(was_training)
    if count == 0:
        return {}
    return {n: ((sums[n] / count).cpu(), params[n].detach().float().cpu().clone()) for n in names}


def fisher_penalty(model: nn.Module, fishers: Fishers, alpha: float) -> torch.Tensor:
    """``alpha · Σ_i F_i (θ_i − θ_i⁰)²`` over the parameters in ``fishers`` (a scalar tensor)."""
    params = dict(model.named_parameters())
    total = next(iter(params.values())).new_zeros((), dtype=torch.float32)
    for n, (fisher, theta0) in fishers.items():
        p = params[n]
        total = total + (fisher.to(p.device) * (p.float() - theta0.to(p.device)) ** 2).sum()
    return alpha * total


class EATAStep:
    """EATA's update (a :data:`~edgeadapt.online.retrain.StepFn`): filtered, re-weighted entropy plus
    the Fisher penalty; no optimizer step when no sample is selected. Keeps the running mean
    prediction and counts of reliable (``reliable``) and selected (``selected``) samples across calls."""

    def __init__(self, e_margin: float, d_margin: float, fishers: Fishers | None = None,
                 fisher_alpha: float = 0.0, momentum: float = 0.9) -> None:
        self.e_margin, self.d_margin, self.momentum = e_margin, d_margin, momentum
        self.fishers, self.fisher_alpha = fishers or {}, fisher_alpha
        self.running_probs: torch.Tensor | None = None
        self.reliable = self.selected = 0

    def __call__(self, adapter: HFAdapter, batch: Batch, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        logits = class_logits(adapter, batch)
        loss, keep, self.running_probs = eata_entropy_loss(logits, self.e_margin, self.d_margin,
                                                           self.running_probs, self.momentum)
        self.reliable += int((sample_entropy(logits.detach()) < self.e_margin).sum())
        self.selected += int(keep.sum())
        if self.fishers and self.fisher_alpha > 0:
            loss = loss + fisher_penalty(adapter.model, self.fishers, self.fisher_alpha)
        if keep.any():
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def replay_batches(replay: dict[str, torch.Tensor], size: int) -> list[Batch]:
    """The replay buffer's model inputs (labels dropped) in batches of ``size``."""
    inputs = model_inputs(replay)
    n = len(next(iter(inputs.values())))
    return [{k: v[i:i + size] for k, v in inputs.items()} for i in range(0, n, size)]


def eata(ctx: MethodContext) -> MethodState:
    """A copy of ``ctx.fm`` adapted continually by EATA on its norm affines (see the module docstring)."""
    classes = ctx.num_classes("eata")
    cfg = EATAConfig(**ctx.options.get("eata", {}))
    scale = entropy_scale(classes)
    alpha = 2000.0 * scale if cfg.fisher_alpha is None else cfg.fisher_alpha
    model = copy.deepcopy(ctx.fm)
    names = norm_parameters(model)
    replay = getattr(ctx.stats, "replay", None)
    fishers: Fishers | None = None
    if alpha > 0 and replay:
        fishers = fisher_information(model, replay_batches(replay, cfg.fisher_batch), names)
    elif alpha > 0:
        warnings.warn("eata: the source stats hold no replay buffer, so there is no Fisher regulariser "
                      "(EATA runs as ETA); compute source_stats with replay_size > 0", stacklevel=2)
    step = EATAStep(0.4 * math.log(classes) if cfg.e_margin is None else cfg.e_margin,
                    0.05 * math.sqrt(1000 / classes) if cfg.d_margin is None else cfg.d_margin,
                    fishers, alpha, cfg.momentum)
    return MethodState("eata", lambda d, m=model: m, None, trainable=names, step=lambda _a: step)

