"""The memory plan of one retraining run: which memory knobs are on, as a typed, validated config.

A :class:`MemoryPlan` is MPOptimizer's configuration (b, k, φ, S) (Zhang et al., FGCS 2025):
micro-batch size (the accumulation count follows from the batch), how many leading blocks are
frozen, and how many checkpointed segments cover the trainable blocks, plus what to do about
BatchNorm at small micro-batches. :mod:`edgeadapt.memory.knobs` applies it to a model;
:mod:`edgeadapt.memory.estimator` predicts its peak memory and step time. JSON is its
serialisation (``plan.model_dump_json()`` / ``MemoryPlan.model_validate_json(text)``).

:class:`LossTraits` says what micro-batching needs to know about a loss: whether it is a mean
over samples (then accumulation reproduces the big batch's gradient exactly) and how few samples
it accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgeadapt.errors import ConfigError


class MemoryPlan(BaseModel):
    """Memory knobs of a retraining step. The default plan turns every knob off.

    Example::

        plan = MemoryPlan(micro_batch_size=4, freeze_fraction=0.5, checkpoint_segments=2)
        MemoryPlan.model_validate_json(plan.model_dump_json()) == plan  # True
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    micro_batch_size: int | None = Field(
        None, ge=1, description="Samples per forward/backward pass; a batch is split into "
        "ceil(batch / micro_batch_size) micro-batches whose gradients are accumulated (loss scaled "
        "by each micro-batch's share) before one optimizer step, so the effective batch is unchanged. "
        "None: the whole batch in one pass.")
    freeze_blocks: int = Field(0, ge=0, description="Leading blocks (and everything before the first "
                               "block: embeddings, stem) to freeze: no gradient, no optimizer state, "
                               "and run under no_grad so they store no activations.")
    freeze_fraction: float | None = Field(None, ge=0, le=1, description="Freeze this fraction of the "
                                          "blocks instead (floor(fraction × blocks) leading blocks); "
                                          "exclusive with freeze_blocks.")
    checkpoint_segments: int = Field(0, ge=0, description="Gradient checkpointing: split the trainable "
                                     "blocks into this many contiguous segments, keep only each "
                                     "segment's input and recompute its activations in backward "
                                     "(torch.utils.checkpoint, use_reentrant=False). 0 disables; "
                                     "round(sqrt(blocks)) is Chen et al.'s sublinear choice.")
    batchnorm: Literal["freeze", "warn", "train"] = Field(
        "freeze", description="BatchNorm at micro-batches below batchnorm_min_micro_batch: 'freeze' "
        "runs BatchNorm layers in eval mode (running statistics used and left unchanged, so "
        "accumulation stays exact), 'warn' trains them on the micro-batch statistics with a warning, "
        "'train' does so silently. GroupNorm and LayerNorm are per-sample and need nothing.")
    batchnorm_min_micro_batch: int = Field(16, ge=1, description="Micro-batches smaller than this "
                                           "trigger the batchnorm policy.")

    @model_validator(mode="after")
    def _check(self) -> MemoryPlan:
        if self.freeze_fraction is not None and self.freeze_blocks:
            raise ConfigError("freeze_fraction: set either freeze_blocks or freeze_fraction, not both "
                              f"(got freeze_blocks={self.freeze_blocks}, "
                              f"freeze_fraction={self.freeze_fraction})")
        return self

    def frozen_blocks(self, num_blocks: int) -> int:
        """How many leading blocks of ``num_blocks`` this plan freezes. Raises
        :class:`~edgeadapt.errors.ConfigError` when ``freeze_blocks`` exceeds ``num_blocks``."""
        if self.freeze_fraction is not None:
            return int(self.freeze_fraction * num_blocks + 1e-9)
        if self.freeze_blocks > num_blocks:
            raise ConfigError(f"freeze_blocks: the model has {num_blocks} blocks, cannot freeze "
                              f"{self.freeze_blocks}; use at most {num_blocks}")
        return self.freeze_blocks

    def micro_batches(self, batch_size: int) -> int:
        """Micro-batches (the accumulation count k) a batch of ``batch_size`` is split into."""
        mb = self.micro_batch_size or batch_size
        return -(-batch_size // mb)


@dataclass(frozen=True)
class LossTraits:
    """What micro-batching needs to know about a training loss.

    ``per_sample``: the loss is a mean (or sum) of per-sample terms, so the weighted sum of
    micro-batch losses has the big batch's gradient. Losses over the batch as a whole (MMD
    alignment, class diversity, in-batch contrastive negatives, anything through train-mode
    BatchNorm) are not; micro-batching them is refused. ``min_samples``: the smallest batch the
    loss accepts (MMD needs 2). ``weight``: what the loss averages over: ``"samples"``, or
    ``"tokens"`` for a causal LM's next-token mean (micro-batches weighted by their target tokens).
    """

    name: str = "the task loss"
    per_sample: bool = True
    min_samples: int = 1
    weight: Literal["samples", "tokens"] = "samples"


ADAPTATION_LOSS = LossTraits("the adaptation loss (MMD alignment and class diversity are over the whole "
                             "batch)", per_sample=False, min_samples=2)
"""The online adaptation objective (:mod:`edgeadapt.online.losses`): not per-sample, and MMD needs at
least 2 samples, so it is never micro-batched."""


def task_loss_traits(task_name: str) -> LossTraits:
    """The traits of an adapter's task loss, by task name: classification is a per-sample mean,
    a causal LM a per-token mean, a sentence encoder's contrastive loss uses in-batch negatives
    (not per-sample, needs 2 rows)."""
    if task_name == "causal-lm":
        return LossTraits("the causal-LM loss", weight="tokens")
    if task_name == "sentence-embedding":
        return LossTraits("the contrastive sentence-embedding loss (in-batch negatives)", per_sample=False,
                          min_samples=2)
    return LossTraits(f"the {task_name} loss")


def check_micro_batching(plan: MemoryPlan, batch_size: int, traits: LossTraits) -> int:
    """The micro-batch size ``plan`` uses for a batch of ``batch_size`` under a loss with ``traits``.

    Raises :class:`~edgeadapt.errors.ConfigError` naming the loss when the batch is smaller than the
    loss accepts, or when the plan would micro-batch a loss that is not per-sample (its gradient
    would differ from the big batch's), or split it below ``min_samples`` (e.g. MMD on 1 sample)."""
    if batch_size < traits.min_samples:
        raise ConfigError(f"batch size {batch_size}: {traits.name} needs at least {traits.min_samples} "
                          f"samples per batch; raise the batch size")
    mb = min(plan.micro_batch_size or batch_size, batch_size)
    if mb < batch_size and not traits.per_sample:
        raise ConfigError(f"micro_batch_size: {traits.name} is not a sum over samples, so micro-batches "
                          f"of {mb} would not reproduce the batch of {batch_size}'s gradient; set "
                          f"micro_batch_size: null (or >= {batch_size}) and save memory with freezing or "
                          f"checkpointing instead")
    last = batch_size - (plan.micro_batches(batch_size) - 1) * mb
    if min(mb, last) < traits.min_samples:
        raise ConfigError(f"micro_batch_size: {traits.name} needs at least {traits.min_samples} samples "
                          f"per pass, but micro-batches of {mb} split a batch of {batch_size} into one of "
                          f"{min(mb, last)}; choose a micro-batch size that divides the batch into parts "
                          f"of >= {traits.min_samples}")
    return mb
