"""Label-free adaptation objectives for text models: causal LMs and sentence encoders.

A causal LM needs no pseudo-labels: the next token of the current domain's unlabeled text is its
own target. What guards it against forgetting (the LM analogue of the collapse guards of
:mod:`edgeadapt.online.losses`) is a pull toward what it knew: the KL of its next-token
distributions to a teacher's (the knowledge base or foundation model, temperature ``T``) and
next-token loss on replayed *source* text batches. :func:`lm_adaptation_loss` weighs the three.

A sentence encoder (BERT, RoBERTa, MiniLM) has no next token: :func:`encoder_adaptation_loss`
aligns the current batch's mean-pooled sentence embeddings to the source feature bank (MMD, the
image recipe) and adds masked-token loss when the model has a masked-LM head. A bare encoder
(loaded with the ``encoder`` task, e.g. ``minilm``) has none: the masked-token term is then off,
MMD alone adapts it, and the factory warns once so a set weight is not silently ignored.

Both return a ``loss_fn(adapter, batch)`` like :func:`~edgeadapt.online.losses.adaptation_loss`::

    loss_fn = lm_adaptation_loss(proxy, source_batches, LMAdaptLossConfig(distill=0.5), teacher=fm)
    fit(proxy, lambda e: domain_batches(e), TrainConfig(max_steps=30), loss_fn=loss_fn)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from edgeadapt.errors import ConfigError
from edgeadapt.models.tasks import mean_pool, model_inputs
from edgeadapt.online.losses import LossFn, SourceStats, mmd

Batch = dict[str, torch.Tensor]


# -- causal LMs -----------------------------------------------------------------------------
class LMAdaptLossConfig(BaseModel):
    """Weights of the causal-LM adaptation objective."""

    model_config = ConfigDict(extra="forbid")

    next_token: float = Field(1.0, ge=0, description="Next-token cross-entropy on the current domain's "
                              "unlabeled text (the adaptation signal).")
    distill: float = Field(0.5, ge=0, description="KL of the student's next-token distributions to the "
                           "teacher's (KB or FM), T² scaled; used only when a teacher is given.")
    temperature: float = Field(2.0, gt=0, description="Softening temperature T of the distillation KL.")
    replay: float = Field(0.5, ge=0, description="Next-token cross-entropy on one replayed source text "
                          "batch per step; used only when source batches are given.")
    seed: int = Field(0, description="Seed of the replay batch draw.")

    @model_validator(mode="after")
    def _check(self) -> LMAdaptLossConfig:
        if self.next_token + self.distill + self.replay == 0:
            raise ConfigError("LM adaptation loss: next_token, distill and replay are all 0; "
                              "set at least one")
        return self


def next_token_targets(batch: Batch) -> torch.Tensor:
    """``[B, T]`` targets: ``labels`` (else ``input_ids``) with padding (attention_mask == 0) set
    to -100, not yet shifted."""
    labels = batch.get("labels", batch["input_ids"]).clone()
    if "attention_mask" in batch:
        labels[batch["attention_mask"] == 0] = -100
    return labels


def next_token_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy (nats per predicted token) of ``logits [B, T, V]``; position
    ``t`` predicts token ``t + 1``; padding is ignored. Computed in float32."""
    targets = next_token_targets(batch)[:, 1:]
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-100)


def next_token_kl(student: torch.Tensor, teacher: torch.Tensor, batch: Batch,
                  temperature: float = 1.0) -> torch.Tensor:
    """``T² · KL(teacher ‖ student)`` of the next-token distributions at temperature ``T``, summed
    over the vocabulary and averaged over real (attention_mask == 1) positions. Both logits are
    ``[B, T, V]`` with the same vocabulary; exactly 0 when they are equal. Float32."""
    if student.shape != teacher.shape:
        raise ConfigError(f"distillation: student logits {tuple(student.shape)} and teacher logits "
                          f"{tuple(teacher.shape)} differ; the teacher must share the student's tokenizer "
                          "and vocabulary (the knowledge base or foundation model it was cut from)")
    t = temperature
    kl = F.kl_div(F.log_softmax(student.float() / t, -1), F.log_softmax(teacher.float() / t, -1),
                  log_target=True, reduction="none").sum(-1) * t * t
    mask = batch.get("attention_mask")
    if mask is None:
        return kl.mean()
    mask = mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


def _module(model: Any) -> nn.Module:
    """The ``nn.Module`` of an adapter, a knowledge base (``.adapter.model``) or a bare module."""
    if isinstance(model, nn.Module):
        return model
    for path in ("model", "adapter"):
        inner = getattr(model, path, None)
        if isinstance(inner, nn.Module):
            return inner
        if inner is not None and isinstance(getattr(inner, "model", None), nn.Module):
            return inner.model
    raise ConfigError(f"teacher: expected a model adapter, a knowledge base or an nn.Module, got "
                      f"{type(model).__name__}")


def lm_adaptation_loss(adapter: Any, source_batches: Sequence[Batch] | None = None,
                       cfg: LMAdaptLossConfig | None = None, teacher: Any = None) -> LossFn:
    """A ``loss_fn(adapter, batch)`` for :func:`~edgeadapt.training.loop.fit` on a causal LM: one
    forward on the current domain's batch gives ``next_token ·`` its next-token loss plus
    ``distill ·`` :func:`next_token_kl` to ``teacher``'s logits on the same batch (frozen, no
    gradient, run in eval mode on its own device), plus ``replay ·`` the next-token loss of one
    source batch drawn (seeded) from ``source_batches``. Without a teacher or source batches those
    terms are off. ``adapter`` is unused (the fit loop passes the model being trained); it is
    taken for the same signature as :func:`~edgeadapt.online.losses.adaptation_loss`."""
    cfg = cfg or LMAdaptLossConfig()
    replay = list(source_batches or [])
    teacher_model = _module(teacher) if teacher is not None and cfg.distill > 0 else None
    g = torch.Generator().manual_seed(cfg.seed)

    def loss_fn(a: Any, batch: Batch) -> torch.Tensor:
        model = _module(a)
        logits = model(**model_inputs(batch)).logits
        total = cfg.next_token * next_token_loss(logits, batch) if cfg.next_token else logits.sum() * 0.0
        if teacher_model is not None:
            t_device = next(teacher_model.parameters()).device
            was_training = teacher_model.training
            teacher_model.eval()
            try:
                with torch.no_grad():
                    inputs = {k: v.to(t_device) for k, v in model_inputs(batch).items()}
                    t_logits = teacher_model(**inputs).logits.to(logits.device)
            finally:
                teacher_model.train(was_training)
            total = total + cfg.distill * next_token_kl(logits, t_logits, batch, cfg.temperature)
        if cfg.replay and replay:
            pick = replay[int(torch.randint(len(replay), (1,), generator=g))]
            pick = {k: v.to(logits.device) for k, v in pick.items()}
            total = total + cfg.replay * next_token_loss(model(**model_inputs(pick)).logits, pick)
        return total

    return loss_fn


# -- sentence encoders -----------------------------------------------------------------------
class EncoderAdaptLossConfig(BaseModel):
    """Weights of the sentence-encoder adaptation objective."""

    model_config = ConfigDict(extra="forbid")

    mmd: float = Field(1.0, ge=0, description="Multi-kernel MMD² between the batch's mean-pooled sentence "
                       "embeddings and the source feature bank.")
    mlm: float = Field(1.0, ge=0, description="Masked-token cross-entropy; only for a model with a "
                       "masked-LM head (a bare encoder has none: the term is off, with a warning).")
    mask_prob: float = Field(0.15, gt=0, lt=1, description="Share of real, non-special tokens masked.")
    seed: int = Field(0, description="Seed of the token masking.")

    @model_validator(mode="after")
    def _check(self) -> EncoderAdaptLossConfig:
        if self.mmd + self.mlm == 0:
            raise ConfigError("encoder adaptation loss: mmd and mlm are both 0; set at least one")
        return self


def has_mlm_head(model: nn.Module) -> bool:
    """Whether ``model`` predicts tokens (a ``*ForMaskedLM``: its output embeddings exist). A bare
    encoder (``BertModel``, MiniLM loaded as an encoder) or a classifier has none."""
    get = getattr(model, "get_output_embeddings", None)
    return callable(get) and get() is not None


def sentence_embedding(model: nn.Module, batch: Batch) -> torch.Tensor:
    """``[B, D]`` mask-aware mean of the last hidden states (the SentenceEncoder's features), for a
    bare encoder and for one with a masked-LM head alike."""
    if has_mlm_head(model):
        hidden = model(**model_inputs(batch), output_hidden_states=True).hidden_states[-1]
    else:
        hidden = model(**model_inputs(batch)).last_hidden_state
    return mean_pool(hidden, batch.get("attention_mask"))


def mask_tokens(batch: Batch, mask_token_id: int, special_ids: Sequence[int], prob: float,
                generator: torch.Generator) -> tuple[Batch, torch.Tensor]:
    """BERT-style masking: each real (attention_mask == 1), non-special token is replaced by
    ``mask_token_id`` with probability ``prob`` (at least one per batch); returns the masked batch
    and ``labels`` (the original ids there, -100 elsewhere)."""
    ids = batch["input_ids"]
    eligible = batch.get("attention_mask", torch.ones_like(ids)).bool()
    for sid in special_ids:
        eligible &= ids != sid
    if not eligible.any():
        raise ConfigError("masked-token loss: the batch has no maskable tokens (only padding and "
                          "special tokens)")
    chosen = (torch.rand(ids.shape, generator=generator) < prob).to(ids.device) & eligible
    if not chosen.any():
        chosen.view(-1)[eligible.view(-1).nonzero()[0]] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return {**batch, "input_ids": torch.where(chosen, torch.full_like(ids, mask_token_id), ids)}, labels


def encoder_adaptation_loss(adapter: Any, stats: SourceStats, cfg: EncoderAdaptLossConfig | None = None
                            ) -> LossFn:
    """A ``loss_fn(adapter, batch)`` for a sentence encoder: ``mmd ·`` MMD² of the batch's
    :func:`sentence_embedding` to ``stats.features`` (built from the same embeddings on source text,
    e.g. :func:`~edgeadapt.online.losses.source_stats`) plus, when ``adapter.model`` has a masked-LM
    head, ``mlm ·`` the masked-token loss (``adapter.tokenizer`` gives the mask and special ids).
    Without a head the masked-token term is off and a ``UserWarning`` says so (when ``mlm > 0``)."""
    cfg = cfg or EncoderAdaptLossConfig()
    model = _module(adapter)
    use_mlm = cfg.mlm > 0 and has_mlm_head(model)
    if cfg.mlm > 0 and not use_mlm:
        warnings.warn(f"encoder adaptation: {type(model).__name__} has no masked-LM head (a bare encoder), "
                      "so the masked-token term is off and MMD alone adapts it; load the model with its MLM "
                      "head to use it, or set mlm: 0 to silence this", UserWarning, stacklevel=2)
        if cfg.mmd == 0:
            raise ConfigError("encoder adaptation loss: mlm is the only term but the model has no masked-LM "
                              "head; set mmd > 0")
    tokenizer = getattr(adapter, "tokenizer", None)
    if use_mlm and getattr(tokenizer, "mask_token_id", None) is None:
        raise ConfigError("encoder adaptation loss: the masked-token term needs the adapter's tokenizer with "
                          "a mask token; the adapter has none")
    g = torch.Generator().manual_seed(cfg.seed)
    bank: dict[torch.device, torch.Tensor] = {}

    def loss_fn(a: Any, batch: Batch) -> torch.Tensor:
        m = _module(a)
        device = next(m.parameters()).device
        if device not in bank:
            bank[device] = stats.features.to(device)
        total = torch.zeros((), device=device)
        if cfg.mmd:
            total = total + cfg.mmd * mmd(sentence_embedding(m, batch), bank[device])
        if use_mlm:
            masked, labels = mask_tokens(batch, tokenizer.mask_token_id, tokenizer.all_special_ids,
                                         cfg.mask_prob, g)
            total = total + cfg.mlm * m(**model_inputs(masked), labels=labels).loss
        return total

    return loss_fn
