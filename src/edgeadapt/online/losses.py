"""Adaptation objectives under drift, built to resist collapse (DESIGN.md §5).

Entropy minimisation alone, or confident pseudo-labels on all parameters, drives a model on a
hard domain (low contrast, fog) to predict one class. :func:`adaptation_loss` therefore anchors
the target features to what the device stored about the source (:class:`SourceStats`): a
multi-kernel MMD to a bank of source features, a diversity term that keeps the batch-mean
prediction near the source class prior, and cross-entropy on a small labeled source replay
buffer. Entropy and pseudo-labels are available but off by default. With labels the loss is plain
cross-entropy (plus replay). :func:`tent_loss` is the TENT baseline (entropy on norm affines).

Every loss here has the ``loss_fn(adapter, batch)`` signature of :func:`edgeadapt.training.loop.fit`::

    stats = source_stats(fm, source.train.batches(64))
    set_trainable(fm, "all")
    fit(fm, lambda e: domain.adapt.batches(64, shuffle=True, seed=e),
        TrainConfig(epochs=10, learning_rate=3e-4, max_steps=30), loss_fn=adaptation_loss(fm, stats))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from edgeadapt.artifacts import atomic_write_bytes
from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import HFAdapter
from edgeadapt.offline.knowledge_base import outputs

Batch = dict[str, torch.Tensor]
LossFn = Callable[[HFAdapter, Batch], torch.Tensor]
KIND, VERSION = "source-stats", 1
BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


# -- what the edge device keeps about the source domain ---------------------------------------
@dataclass
class SourceStats:
    """Source-domain summary stored on the device: a feature bank ``[M, D]`` for MMD, per-dimension
    feature ``mean``/``var``, the source ``class_prior`` ``[C]`` (empty for encoders) and an optional
    labeled ``replay`` buffer (model inputs + ``labels``)."""

    features: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    class_prior: torch.Tensor
    replay: dict[str, torch.Tensor] | None = None

    def to_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors (replay entries prefixed ``replay.``), ready for safetensors."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "replay"}
        out.update({f"replay.{k}": v for k, v in (self.replay or {}).items()})
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    @classmethod
    def from_dict(cls, tensors: dict[str, torch.Tensor]) -> SourceStats:
        missing = {"features", "mean", "var", "class_prior"} - set(tensors)
        if missing:
            raise ConfigError(f"source stats lack {sorted(missing)}")
        replay = {k.removeprefix("replay."): v for k, v in tensors.items() if k.startswith("replay.")}
        return cls(tensors["features"], tensors["mean"], tensors["var"], tensors["class_prior"],
                   replay or None)

    def save(self, path: str | Path) -> Path:
        """One safetensors file (no pickle), written atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save(self.to_dict(), metadata={"kind": KIND, "version": str(VERSION)}))
        return path

    @torch.no_grad()
    def absorb(self, batches: Iterable[Batch], weight: float, seed: int = 0) -> None:
        """Fold a *labelled* stream domain into the statistics, in place, so that later unlabelled
        domains are judged against everything the device has been taught, not the source alone.

        EdgeTA-style class-incremental streams bring new classes with labels; without this the
        diversity term keeps pulling predictions towards the *source* class prior (which gives the
        new classes zero mass) and the replay buffer rehearses only the old classes.

        ``weight`` in (0, 1] is the new domain's share: the class prior becomes
        ``(1 - weight) * prior + weight * label_histogram`` and that share of the replay buffer is
        replaced by a seeded random sample of the domain's labelled examples (the buffer keeps its
        size). The feature bank (MMD target) is kept: it is a distribution of FM features, which
        does not know the new classes either way. Batches without ``labels`` are ignored.

        Raises :class:`~edgeadapt.errors.ConfigError` for a weight outside (0, 1].
        """
        if not 0 < weight <= 1:
            raise ConfigError(f"weight: {weight!r} must be in (0, 1]")
        kept = [{k: v.cpu() for k, v in b.items()} for b in batches if "labels" in b]
        if not kept:
            return
        labels = torch.cat([b["labels"].flatten() for b in kept])
        if self.class_prior.numel():
            size = max(self.class_prior.numel(), int(labels.max()) + 1)
            hist = torch.bincount(labels, minlength=size).double()
            prior = F.pad(self.class_prior.double(), (0, size - self.class_prior.numel()))
            self.class_prior = ((1 - weight) * prior + weight * hist / hist.sum()).float()
        if self.replay:
            g = torch.Generator().manual_seed(seed)
            n = len(next(iter(self.replay.values())))
            new = {k: _stack([b[k] for b in kept]) for k in self.replay if all(k in b for b in kept)}
            if set(new) != set(self.replay):
                return  # the domain's inputs are not the replay's (another task): keep the old buffer
            take = min(max(1, round(n * weight)), len(labels))
            old_idx = torch.randperm(n, generator=g)[:n - take]
            new_idx = torch.randperm(len(labels), generator=g)[:take]
            self.replay = {k: _stack([self.replay[k][old_idx], new[k][new_idx]]) for k in self.replay}

    @classmethod
    def load(cls, path: str | Path) -> SourceStats:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("kind") != KIND or meta.get("version") != str(VERSION):
                raise ConfigError(f"{path}: not {KIND} version {VERSION} (found {meta.get('kind')!r} "
                                 f"version {meta.get('version')!r})")
            return cls.from_dict({k: f.get_tensor(k) for k in f.keys()})


def _pool(features: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``[B, D]`` features: token features ``[B, T, D]`` are mean-pooled over the attention mask."""
    if features.dim() == 2:
        return features
    mask = batch.get("attention_mask")
    mask = torch.ones(features.shape[:2], device=features.device) if mask is None else mask
    mask = mask.to(features.dtype).unsqueeze(-1)
    return (features * mask).sum(1) / mask.sum(1).clamp_min(1)


def _stack(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0, right-padding dim 1 with zeros when lengths differ (token batches)."""
    if len({p.shape[1:] for p in parts}) > 1:
        longest = max(p.shape[1] for p in parts)
        parts = [F.pad(p, (0, longest - p.shape[1])) if p.dim() == 2 else p for p in parts]
    return torch.cat(parts)


@torch.no_grad()
def source_stats(adapter: HFAdapter, batches: Iterable[Batch], bank_size: int = 256, replay_size: int = 64,
                 seed: int = 0) -> SourceStats:
    """Summarise labeled (or unlabeled: the prior then comes from predictions) source ``batches``.

    The bank and the replay buffer are seeded random subsets; ``replay_size=0`` stores no images.
    """
    was_training = adapter.model.training
    adapter.model.eval()
    device = next(adapter.model.parameters()).device
    feats, counts, kept = [], None, []
    try:
        for batch in batches:
            batch_dev = {k: v.to(device) for k, v in batch.items()}
            logits, f = outputs(adapter, batch_dev)
            feats.append(_pool(f, batch_dev).float().cpu())
            if logits is not None:
                labels = batch_dev.get("labels", logits.argmax(-1))
                c = torch.bincount(labels.flatten().cpu(), minlength=logits.shape[-1]).double()
                counts = c if counts is None else counts + c
            if replay_size > 0:
                kept.append({k: v.cpu() for k, v in batch.items()})
    finally:
        adapter.model.train(was_training)
    if not feats:
        raise ConfigError("source_stats got no batches")
    features = torch.cat(feats)
    g = torch.Generator().manual_seed(seed)
    bank = features[torch.randperm(len(features), generator=g)[:bank_size]]
    prior = torch.empty(0) if counts is None else (counts / counts.sum()).float()
    replay = None
    if replay_size > 0:
        if any("labels" not in b for b in kept):
            raise ConfigError("replay_size: a replay buffer needs labeled source batches; pass replay_size=0")
        pick = torch.randperm(len(features), generator=g)[:replay_size]
        replay = {k: _stack([b[k] for b in kept])[pick] for k in kept[0]}
    return SourceStats(bank, features.mean(0), features.var(0, unbiased=False), prior, replay)


# -- the terms ------------------------------------------------------------------------------
def mmd(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] | None = None,
        unbiased: bool = True) -> torch.Tensor:
    """Multi-kernel Gaussian MMD² between samples ``x [N, D]`` and ``y [M, D]`` (N, M ≥ 2).

    The kernel is the mean of ``exp(-|a - b|² / h)`` over the ``bandwidths`` h (squared-distance
    scales). By default h = median pairwise squared distance of the pooled sample (detached) ×
    (0.25, 0.5, 1, 2, 4). The default estimator is the unbiased U-statistic (diagonals of the
    within-sample kernels excluded), so it is ≈0, possibly slightly negative, for samples of one
    distribution; ``unbiased=False`` gives the biased V-statistic (always ≥ 0).
    """
    x, y = x.float().flatten(1), y.float().flatten(1)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ConfigError(f"mmd needs at least 2 samples on each side, got {n} and {m}")
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    if bandwidths is None:
        med = d2.detach()[~torch.eye(n + m, dtype=torch.bool, device=z.device)].median().clamp_min(1e-8)
        bandwidths = [float(med) * f for f in BANDWIDTH_FACTORS]
    k = sum(torch.exp(-d2 / h) for h in bandwidths) / len(bandwidths)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    if unbiased:
        xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    else:
        xx, yy = kxx.mean(), kyy.mean()
    return xx + yy - 2 * kxy.mean()


def sample_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of the softmax over the last dimension, one value per sample (``[...]``
    for logits ``[..., C]``): what EATA and SAR filter samples by."""
    logp = F.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the softmax over the last dimension."""
    return sample_entropy(logits).mean()


def diversity(logits: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
    """KL(batch-mean prediction ‖ ``prior``), uniform by default (then = log C − H(mean prediction),
    the negative entropy of the mean shifted to be ≥ 0). Zero for a batch that matches the prior,
    large for one that predicts a single class: it penalises collapse."""
    mean = F.softmax(logits.float(), -1).reshape(-1, logits.shape[-1]).mean(0)
    if prior is None or prior.numel() == 0:
        prior = torch.full_like(mean, 1.0 / mean.numel())
    prior = prior.to(mean).clamp_min(1e-8)
    return (mean * (mean.clamp_min(1e-8).log() - prior.log())).sum()


def pseudo_label_loss(logits: torch.Tensor, threshold: float = 0.9) -> torch.Tensor:
    """Cross-entropy on the argmax for samples whose max probability is ≥ ``threshold``, averaged
    over those samples; 0 (still attached to the graph) when none qualifies."""
    logits = logits.float().reshape(-1, logits.shape[-1])
    prob, label = F.softmax(logits.detach(), -1).max(-1)
    keep = prob >= threshold
    if not keep.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], label[keep])


def teacher_probs(teacher: Any, batch: Batch, classes: int) -> torch.Tensor:
    """The frozen teacher's class probabilities ``[B, C]`` (float32) on ``batch``, computed without
    gradients in eval mode (its mode is restored afterwards)."""
    was = teacher.model.training
    teacher.model.eval()
    try:
        with torch.no_grad():
            return F.softmax(teacher.logits(batch).float().reshape(-1, classes), -1)
    finally:
        teacher.model.train(was)


def confident_distillation(logits: torch.Tensor, teacher: Any, batch: Batch, threshold: float,
                           target: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher ‖ student) averaged over the samples whose teacher max-probability is at least
    ``threshold``; ``logits`` ``[B, C]`` are the student's, the teacher runs without gradients on
    ``batch`` (:func:`teacher_probs`) unless its probabilities ``target`` ``[B, C]`` are given.
    0 (attached to the graph) when no sample qualifies."""
    if target is None:
        target = teacher_probs(teacher, batch, logits.shape[-1])
    keep = target.max(-1).values >= threshold
    logits = logits.float().reshape(-1, logits.shape[-1])
    if not keep.any():
        return logits.sum() * 0.0
    return F.kl_div(F.log_softmax(logits[keep], -1), target[keep], reduction="batchmean")


def domain_gate(target: torch.Tensor, prior: torch.Tensor, marginal: dict[str, Any],
                temperature: float) -> float:
    """How much to trust the teacher on the current domain, in (0, 1]: ``exp(-KL / temperature)``
    where KL is from the teacher's running mean prediction over the domain so far (``marginal``
    accumulates ``target`` ``[B, C]``) to the class ``prior`` ``[C]``, minus the KL a sample of
    that size shows by chance, ``(C - 1) / 2n``. A shift that makes the teacher predict a few
    classes for everything (confidently wrong) moves its mean prediction away from the prior; one
    it still handles does not. ``temperature == 0`` (or no prior) turns the gate off (1.0)."""
    if temperature == 0 or prior.numel() != target.shape[-1]:
        return 1.0
    batch_sum = target.sum(0)
    marginal["sum"] = batch_sum if marginal["sum"] is None else marginal["sum"] + batch_sum
    marginal["n"] += len(target)
    mean = (marginal["sum"] / marginal["n"]).clamp_min(1e-8)
    p = prior.float().clamp_min(1e-8)
    kl = float((mean * (mean.log() - p.log())).sum()) - (len(p) - 1) / (2 * marginal["n"])
    return math.exp(-max(kl, 0.0) / temperature)


# -- the combined objective -----------------------------------------------------------------
class AdaptLossConfig(BaseModel):
    """Weights of the adaptation objective (defaults: tuned on digits-c with the tiny ViT)."""

    model_config = ConfigDict(extra="forbid")

    mmd: float = Field(3.0, ge=0, description="Multi-kernel MMD² between target features and the "
                       "source feature bank (feature alignment).")
    entropy: float = Field(0.0, ge=0, description="Mean prediction entropy (TENT's objective; "
                           "collapses on low-contrast/fog domains when used alone).")
    diversity: float = Field(1.0, ge=0, description="KL of the batch-mean prediction to the source "
                             "class prior (anti-collapse).")
    pseudo_label: float = Field(0.0, ge=0, description="Cross-entropy on confident argmax labels.")
    pseudo_threshold: float = Field(0.9, gt=0, le=1, description="Min max-probability for a pseudo-label.")
    replay: float = Field(1.0, ge=0, description="Cross-entropy on the labeled source replay buffer "
                          "(ignored when the stats hold none).")
    replay_batch: int = Field(32, ge=1, description="Replay samples drawn per step.")
    distill: float = Field(2.0, ge=0, description="KL from the frozen FM's (teacher's) predictions on "
                           "the target batch, on the samples where the FM is confident (the FM as a "
                           "reference: keeps the proxy near the source where the source is still right).")
    distill_threshold: float = Field(0.9, gt=0, le=1, description="Min FM max-probability for a "
                                     "sample to be distilled.")
    distill_gate: float = Field(0.02, ge=0, description="Temperature (nats) of the domain gate on "
                                "distillation: the term is scaled by exp(-KL(FM's mean prediction on "
                                "this domain so far ‖ the class prior) / gate), so a domain on which the "
                                "FM's predictions collapse onto a few classes (the FM is confidently "
                                "wrong) is not distilled. 0 turns the gate off.")
    supervised: bool = Field(False, description="When a batch carries labels, train on cross-entropy "
                             "to them (plus replay) instead of the unsupervised terms.")
    seed: int = Field(0, description="Seed of the replay sampling generator.")

    @model_validator(mode="after")
    def _check(self) -> AdaptLossConfig:
        weights = (self.mmd, self.entropy, self.diversity, self.pseudo_label, self.replay, self.distill)
        if not self.supervised and sum(weights) == 0:
            raise ConfigError("adaptation loss: every weight is 0; set at least one of mmd, entropy, "
                             "diversity, pseudo_label, replay, distill, or supervised: true")
        return self


def adaptation_loss(adapter: HFAdapter, stats: SourceStats, cfg: AdaptLossConfig | None = None,
                    teacher: Any = None) -> LossFn:
    """A ``loss_fn`` for :func:`~edgeadapt.training.loop.fit`: one forward on the target batch, then
    the weighted MMD, entropy, diversity and pseudo-label terms (or CE on labels when ``supervised``),
    plus replay CE on a seeded random draw from ``stats.replay``, plus (``cfg.distill > 0``) the KL
    from ``teacher``'s (the frozen FM's) predictions on the samples it is confident about, in the
    manner of knowledge distillation (Hinton et al., 2015) restricted to confident samples.

    Without a ``teacher`` the distillation term is left out when ``distill`` is at its default;
    raises :class:`~edgeadapt.errors.ConfigError` when ``distill`` was set explicitly and no
    teacher is given."""
    cfg = cfg or AdaptLossConfig()
    marginal: dict[str, Any] = {"sum": None, "n": 0}  # the FM's running mean prediction on this domain
    if teacher is None and "distill" not in cfg.model_fields_set:
        cfg = cfg.model_copy(update={"distill": 0.0})
    if cfg.distill and teacher is None:
        raise ConfigError("loss.distill: distillation needs the FM as the teacher; pass teacher= or set "
                          "distill: 0")
    g = torch.Generator().manual_seed(cfg.seed)
    cache: dict[str, object] = {}

    def on(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
        if cache.get("device") != device:  # move the stats once per device, not per step
            replay = {k: v.to(device) for k, v in stats.replay.items()} if stats.replay else None
            cache.update(device=device, bank=stats.features.to(device), prior=stats.class_prior.to(device),
                         replay=replay)
        return cache["bank"], cache["prior"], cache["replay"]  # type: ignore[return-value]

    def loss_fn(a: HFAdapter, batch: Batch) -> torch.Tensor:
        bank, prior, replay = on(next(a.model.parameters()).device)
        logits, feats = outputs(a, batch)
        if cfg.supervised and "labels" in batch:
            total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch["labels"].flatten())
        else:
            total = cfg.mmd * mmd(_pool(feats, batch), bank) if cfg.mmd else feats.sum() * 0.0
            if logits is not None:
                if cfg.entropy:
                    total = total + cfg.entropy * entropy(logits)
                if cfg.diversity:
                    total = total + cfg.diversity * diversity(logits, prior)
                if cfg.pseudo_label:
                    total = total + cfg.pseudo_label * pseudo_label_loss(logits, cfg.pseudo_threshold)
                if cfg.distill:
                    target = teacher_probs(teacher, batch, logits.shape[-1])
                    gate = domain_gate(target, prior, marginal, cfg.distill_gate)
                    total = total + cfg.distill * gate * confident_distillation(
                        logits, teacher, batch, cfg.distill_threshold, target=target)
        if cfg.replay and replay is not None:
            n = len(replay["labels"])
            pick = torch.randperm(n, generator=g)[:cfg.replay_batch].to(bank.device)
            sub = {k: v[pick] for k, v in replay.items()}
            r_logits = a.logits(sub)  # the ModelAdapter protocol: custom models too
            total = total + cfg.replay * F.cross_entropy(r_logits.float().reshape(-1, r_logits.shape[-1]),
                                                         sub["labels"].flatten())
        return total

    return loss_fn


def tent_loss(adapter: HFAdapter) -> LossFn:
    """TENT: the mean prediction entropy of the target batch (pair with ``set_trainable(a, "norm")``)."""
    return lambda a, batch: entropy(outputs(a, batch)[0])


# -- what is trained -------------------------------------------------------------------------
_TORCH_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase,
                *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
Trainable = Literal["all", "norm", "norm+head", "attention", "mlp"]


def _params_under(model: nn.Module, modules: Iterable[str]) -> list[str]:
    prefixes = tuple(f"{m}." for m in modules)
    return [n for n, _ in model.named_parameters() if n.startswith(prefixes)]


def norm_parameters(adapter: HFAdapter) -> list[str]:
    """Names of every normalisation layer's affine parameters: the adapter's declared block norms plus
    any torch LayerNorm/GroupNorm/BatchNorm/RMSNorm (e.g. the final norm). TENT trains only these."""
    declared = [n for b in adapter.blocks() for n in b.norms]
    found = [n for n, m in adapter.model.named_modules() if isinstance(m, _TORCH_NORMS)]
    return _params_under(adapter.model, dict.fromkeys(declared + found))


def _select(adapter: HFAdapter, which: Trainable | list[str]) -> list[str]:
    model, blocks = adapter.model, adapter.blocks()
    if isinstance(which, (list, tuple)):
        names = dict(model.named_parameters())
        modules = dict(model.named_modules())
        out: list[str] = []
        for entry in which:
            if entry in names:
                out.append(entry)
            elif entry in modules and entry:
                out += _params_under(model, [entry])
            else:
                raise ConfigError(f"trainable: {entry!r} is neither a parameter nor a module of the model")
        return out
    if which == "all":
        return [n for n, _ in model.named_parameters()]
    if which in ("norm", "norm+head"):
        head = adapter.head() if which == "norm+head" else None
        return norm_parameters(adapter) + (_params_under(model, [head]) if head else [])
    if which == "attention":
        return _params_under(model, [b.attention.module for b in blocks])
    if which == "mlp":
        return _params_under(model, [s.module for b in blocks for s in (*b.mlp.inputs, b.mlp.output)])
    raise ConfigError(f"trainable: {which!r} is not one of all, norm, norm+head, attention, mlp "
                     "or a list of parameter/module names")


def set_trainable(adapter: HFAdapter, which: Trainable | list[str]) -> int:
    """Make only the chosen parameters require gradients; returns how many scalars are trainable."""
    chosen = set(_select(adapter, which))
    if not chosen:
        raise ConfigError(f"trainable: {which!r} selects no parameters of this model")
    total = 0
    for name, p in adapter.model.named_parameters():
        p.requires_grad_(name in chosen)
        total += p.numel() if name in chosen else 0
    return total
