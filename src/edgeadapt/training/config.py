"""The typed configuration of one training run, validated before any compute.

Every stage that trains (source training, knowledge-base building, online retraining, pruning
recovery) fills one :class:`TrainConfig`; YAML files are only its serialisation. Its ``memory``
field is a :class:`~edgeadapt.memory.plan.MemoryPlan` (micro-batching, freezing, checkpointing)
that the loop applies for the run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgeadapt.errors import ConfigError
from edgeadapt.memory.plan import MemoryPlan


class TrainConfig(BaseModel):
    """Hyperparameters of one training run (optimizer, schedule, precision, budget, checkpoints)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # .inf/.nan: refused by name

    epochs: int = Field(10, ge=1, description="Passes over the training data.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate.")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="AdamW (decoupled decay) or SGD "
                                               "with Nesterov momentum 0.9.")
    weight_decay: float = Field(0.01, ge=0, description="Weight decay.")
    schedule: Literal["cosine", "plateau", "constant"] = Field(
        "cosine", description="After warmup: cosine decay to 0 over all steps, a constant rate cut by "
        "plateau_factor when the monitored validation metric stalls, or constant.")
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="Share of steps with linear warmup.")
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="Learning-rate multiplier on a plateau.")
    plateau_patience: int = Field(1, ge=0, description="Epochs without improvement before a plateau cut.")
    grad_clip: float | None = Field(1.0, gt=0, description="Max global gradient norm; None disables.")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    precision: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "fp32", description="Autocast dtype: bf16 works on CPU and CUDA, fp16 only on CUDA (with loss "
        "scaling); auto = bf16 on CUDA when supported, else fp32. A bf16/fp16 checkpoint trains on "
        "float32 master weights under any of them and is saved in its own dtype.")
    gradient_checkpointing: bool = Field(False, description="Recompute block activations in the "
                                         "backward pass to save memory (Hugging Face models).")
    patience: int | None = Field(None, ge=1, description="Stop after this many epochs without "
                                 "validation improvement; None disables early stopping.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    max_seconds: float | None = Field(None, gt=0, description="Stop after this much training time.")
    checkpoint_every: int | None = Field(None, ge=1, description="Also checkpoint every N optimizer "
                                         "steps (epochs always checkpoint when a directory is given).")
    log_every: int = Field(10, ge=1, description="Log train loss and learning rate every N steps.")
    seed: int = Field(0, description="Seed for shuffling, dropout and any other randomness.")
    device: str = Field("auto", description="'auto' (CUDA if present), 'cpu' or 'cuda[:N]'.")
    progress: bool = Field(True, description="Show a progress bar with live metrics.")
    memory: MemoryPlan | None = Field(
        None, description="Memory knobs for the run (edgeadapt.memory.plan.MemoryPlan: micro_batch_size, "
        "freeze_blocks / freeze_fraction, checkpoint_segments, batchnorm): each batch is split into "
        "micro-batches whose losses are weighted by their share (same gradient as the whole batch for a "
        "per-sample loss), leading blocks are frozen (no gradient, no optimizer state) and trainable "
        "blocks checkpointed in segments. None: no knobs.")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.precision == "fp16" and self.device == "cpu":
            raise ConfigError("precision: fp16 autocast needs CUDA; use 'bf16' on CPU")
        if self.gradient_checkpointing and self.memory is not None and self.memory.checkpoint_segments:
            raise ConfigError(f"gradient_checkpointing: memory.checkpoint_segments="
                              f"{self.memory.checkpoint_segments} already checkpoints the blocks; set "
                              f"gradient_checkpointing: false (or memory.checkpoint_segments: 0)")
        return self
