"""The ``edgeadapt llm-prune`` configuration: one YAML file from model to pruned, recovered, evaluated LM.

The fields users change most sit at the top level (model, data, sparsity, granularity, training
budget, where things go); the rest is grouped into ``pruning``, ``recovery`` and ``evaluation``
sections with defaults. Everything is validated before any model is loaded, and every error
names its field and the fix (:func:`edgeadapt.config.load_config`).

Example (``configs/llm-prune-docs.yaml``)::

    kind: llm-prune
    model: runs/ref-llama            # built-in name, HF id, local HF directory or edgeadapt artifact
    dataset: builtin-docs            # wikitext2 | c4 | builtin-docs | text-files
    sparsity: 0.2                    # fraction of prunable parameters removed
    granularity: [heads, neurons]
    epochs: 2
    save: runs/llm-prune/model
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeadapt.errors import ConfigError
from edgeadapt.offline.lora import LoraSettings

DATASETS = ("builtin-docs", "wikitext2", "c4", "text-files")
GRANULARITIES = ("heads", "neurons", "layers")
IMPORTANCES = ("taylor", "fisher", "magnitude", "random")


class PruningSection(BaseModel):
    """How units are scored and ranked."""

    model_config = ConfigDict(extra="forbid")

    importance: Literal["taylor", "fisher", "magnitude", "random"] = Field(
        "taylor", description="taylor: first-order |w·dL/dw| per group over the calibration batches; "
        "fisher: diagonal Fisher of the group masks (per-sample squared first-order terms); "
        "magnitude: L1 weight norm; random: seeded random scores (a baseline).")
    scope: Literal["global", "uniform"] = Field("global", description="global: rank a kind's units across "
                                                "all layers (with per-layer floors); uniform: the same "
                                                "fraction in every layer.")
    min_keep: int = Field(1, ge=1, description="Per-layer floor of heads and of FFN neurons (global scope).")
    protect_first: int = Field(0, ge=0, description="Leave the first N layers untouched.")
    protect_last: int = Field(0, ge=0, description="Leave the last N layers untouched.")
    calibration_batches: int = Field(8, ge=1, description="Training batches the importance is "
                                     "accumulated over.")


class RecoverySection(BaseModel):
    """Recovery training after pruning (the shared training loop)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["lora", "full", "none"] = Field(
        "lora", description="lora: train LoRA adapters (peft) and merge them; full: fine-tune every "
        "weight; none: skip.")
    lora: LoraSettings = Field(default_factory=lambda: LoraSettings(train_head=False),
                               description="LoRA rank, alpha, targets (the LM head stays frozen by default).")
    keep_if_worse: bool = Field(False, description="Keep the recovered weights even when validation "
                                "perplexity got worse than right after pruning (default: fall back to "
                                "the pruned weights).")
    schedule: Literal["cosine", "plateau", "constant"] = Field(
        "cosine", description="Warmup then cosine decay, or reduce-on-plateau of val perplexity.")
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="Share of steps with linear warmup.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    precision: Literal["fp32", "bf16", "fp16", "auto"] = Field("auto", description="auto: bf16/fp16 "
                                                               "autocast on CUDA, fp32 on CPU.")
    gradient_checkpointing: bool = Field(False, description="Recompute block activations in backward.")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    max_train_blocks: int | None = Field(None, ge=1, description="Use at most this many training blocks.")
    checkpoint_every: int | None = Field(50, ge=1, description="Also checkpoint every N optimizer steps "
                                         "(every epoch always), so a killed run resumes.")


class EvaluationSection(BaseModel):
    """Perplexity and speed/memory measurement."""

    model_config = ConfigDict(extra="forbid")

    stride: int | None = Field(None, ge=1, description="Sliding-window stride in tokens (default: seq_len, "
                               "disjoint windows); smaller strides give every token more context.")
    max_eval_tokens: int | None = Field(None, ge=2, description="Score at most this many tokens per split.")
    speed_batch_size: int = Field(8, ge=1, description="Sequences per throughput/memory probe.")
    speed_repeats: int = Field(7, ge=1, description="Timed repeats (interleaved dense/pruned; median).")
    sweep: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                               description="Sparsities pruned (without recovery) for the perplexity-vs-"
                               "sparsity curve; [] skips the sweep.")
    datasets: list[str] = Field(default_factory=list, description="Extra test corpora for `--mode test` "
                                "(builtin-docs, wikitext2, c4), beside the configured dataset.")


class LLMPruneConfig(BaseModel):
    """A complete ``edgeadapt llm-prune`` configuration."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["llm-prune"] = "llm-prune"
    model: str = Field(description="Built-in name (tiny-llama, tiny-gpt2), Hugging Face id, local HF "
                       "model directory, or an edgeadapt model artifact (e.g. from "
                       "`edgeadapt llm-pretrain`).")
    tokenizer: str | None = Field(None, description="Tokenizer name or directory; default: the model's own.")
    use_gpu: bool | Literal["auto"] = Field("auto", description="auto: CUDA when present; true: require it; "
                                            "false: CPU.")
    gpu_ids: list[int] = Field(default_factory=list, description="CUDA devices to use "
                               "(CUDA_VISIBLE_DEVICES); more than one runs data-parallel under "
                               "`accelerate launch`.")
    dataset: Literal["builtin-docs", "wikitext2", "c4", "text-files"] = Field(
        "builtin-docs", description="Training/calibration/evaluation corpus.")
    data_paths: dict[str, list[Path]] | list[Path] = Field(
        default_factory=list, description="Local files: for text-files a list (split 90/5/5 by document) or "
        "{train: [...], val: [...], test: [...]}; for wikitext2/c4 local mirrors of the hub files.")
    seq_len: int = Field(128, ge=8, description="Tokens per training block and perplexity window.")
    batch_size: int = Field(8, ge=1, description="Sequences per micro-batch (calibration and recovery).")
    learning_rate: float = Field(1e-3, gt=0, description="Peak recovery learning rate.")
    epochs: int = Field(1, ge=1, description="Recovery epochs over the training blocks.")
    patience: int | None = Field(1, ge=1, description="Stop recovery after this many epochs without a "
                                 "better validation perplexity (null: never).")
    sparsity: float = Field(description="Fraction of the prunable parameters (attention and FFN weights "
                            "of the blocks) to remove, in [0, 1).")
    granularity: list[Literal["heads", "neurons", "layers"]] = Field(
        default_factory=lambda: ["heads", "neurons"], min_length=1,
        description="What is removed: attention heads (KV groups), FFN neurons, whole layers, or a mix.")
    pruning: PruningSection = Field(default_factory=PruningSection)
    recovery: RecoverySection = Field(default_factory=RecoverySection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    save: Path = Field(Path("runs/llm-prune/model"), description="Directory the pruned model artifact "
                       "is written to.")
    log_dir: Path = Field(Path("runs/llm-prune/logs"), description="Logs, metrics and the report.")
    tracker: Literal["tensorboard", "wandb", "mlflow", "none"] = Field(
        "tensorboard", description="Where metrics go besides logs/metrics.csv.")
    project: str = Field("edgeadapt", description="W&B project / MLflow experiment name.")
    seed: int = Field(0, description="Seed for data order, LoRA init and random importance.")
    resume: bool = Field(True, description="Continue recovery from the last checkpoint in `save`.")

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, value: float) -> float:
        from edgeadapt.pruning.select import check_sparsity

        return check_sparsity(value)

    @field_validator("granularity")
    @classmethod
    def _dedupe(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @field_validator("data_paths")
    @classmethod
    def _paths_exist(cls, value: Any) -> Any:
        groups = value.items() if isinstance(value, dict) else [("", value)]
        for split, paths in groups:
            if isinstance(value, dict) and split not in ("train", "val", "test"):
                raise ConfigError(f"split {split!r} is not one of train, val, test")
            for path in paths:
                if not Path(path).exists():
                    raise ConfigError(f"{str(path)!r} does not exist; point data_paths at your local text "
                                     "files (relative paths are relative to the current directory)")
        return value

    @field_validator("evaluation")
    @classmethod
    def _sweep(cls, value: EvaluationSection) -> EvaluationSection:
        from edgeadapt.pruning.select import check_sparsity

        for s in value.sweep:
            check_sparsity(s, "evaluation.sweep")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> LLMPruneConfig:
        if self.dataset == "text-files" and not self.data_paths:
            raise ConfigError("data_paths: dataset text-files needs local files; list them in data_paths")
        if self.dataset == "builtin-docs" and self.data_paths:
            raise ConfigError("data_paths: builtin-docs ships with Python and reads no files; "
                             "remove data_paths")
        if self.gpu_ids and self.use_gpu is False:
            raise ConfigError("gpu_ids: set but use_gpu is false; remove gpu_ids or set use_gpu: true")
        for name in self.evaluation.datasets:
            if name not in ("builtin-docs", "wikitext2", "c4"):
                raise ConfigError(f"evaluation.datasets: {name!r} is not one of builtin-docs, wikitext2, c4")
        return self

    @property
    def device(self) -> str:
        """The training device string for :class:`~edgeadapt.training.config.TrainConfig`."""
        if self.use_gpu is False:
            return "cpu"
        if self.use_gpu is True:
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("use_gpu: true but no CUDA device is visible; set use_gpu: auto or false")
            return "cuda"
        return "auto"
