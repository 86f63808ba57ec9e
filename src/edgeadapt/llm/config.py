"""The ``edgeadapt llm-prune`` configuration: one YAML file from model to pruned, recovered, evaluated LM.

The fields users change most sit at the top level (model, data, budget, targets, where things
go); the rest is grouped into ``pruning``, ``recovery`` and ``evaluation`` sections with defaults.
Everything is validated before any model is loaded, and every error names its field and the fix
(:func:`edgeadapt.config.load_config`). The vocabulary is the one ``edgeadapt prune`` uses:
importance names from :data:`edgeadapt.pruning.importance.IMPORTANCES`, and exactly one budget,
``unit_sparsity`` or ``param_sparsity`` (:mod:`edgeadapt.pruning.budget`). ``recovery`` is a
:class:`~edgeadapt.training.config.TrainConfig` (the shared loop's schema) plus what only recovery
has; the defaults it changes are listed once, in :data:`RECOVERY_DEFAULTS`.

Example (``configs/llm-prune-docs.yaml``)::

    kind: llm-prune
    model: runs/ref-llama            # built-in name, HF id, local HF directory or edgeadapt artifact
    dataset: builtin-docs            # builtin-docs | wikitext2 | c4 | text-files (via the data registry)
    param_sparsity: 0.2              # fraction of the block parameters removed (or unit_sparsity)
    targets: [heads, neurons]
    recovery: {epochs: 2}
    save: runs/llm-prune/model
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from edgeadapt.config import not_built_yet
from edgeadapt.data.config import check_hub_cached, check_vocab, model_task, tokenizer_size
from edgeadapt.errors import ConfigError
from edgeadapt.models.inspect import check_context, model_limits
from edgeadapt.models.registry import BUILTIN
from edgeadapt.offline.lora import LoraSettings
from edgeadapt.outputs import check_output_dir
from edgeadapt.pruning.budget import check_budget
from edgeadapt.pruning.importance import DEFAULT_IMPORTANCE, IMPORTANCES, check_importance
from edgeadapt.pruning.select import DEFAULT_SCOPE, check_sparsity
from edgeadapt.training.config import TrainConfig

DATASETS = ("builtin-docs", "wikitext2", "c4", "text-files")
TARGET_KINDS = ("heads", "neurons", "layers")
# The TrainConfig defaults recovery changes — the only place they differ, and why:
RECOVERY_DEFAULTS: dict[str, Any] = {
    "epochs": 1,              # a pruned model starts close to a good one: recovery is short
    "weight_decay": 0.0,      # no pull toward zero on weights pruning just selected (and on LoRA factors)
    "precision": "auto",      # bf16 autocast on CUDA when supported (LLM-sized models), fp32 on CPU
    "patience": 1,            # stop at the first epoch that does not improve validation perplexity
    "checkpoint_every": 50,   # a killed recovery resumes within 50 optimizer steps
    "log_every": 5,
}
# Fields retired from llm-prune configs -> what to write instead.
RETIRED_FIELDS: dict[str, str] = {
    "sparsity": "'sparsity' was split in two budgets: use param_sparsity (the fraction of the block "
                "parameters removed, found by bisection; what llm-prune's sparsity meant) or unit_sparsity "
                "(the fraction of the units of each target kind removed)",
    "epochs": "moved to recovery.epochs (recovery is the shared TrainConfig)",
    "learning_rate": "moved to recovery.learning_rate (recovery is the shared TrainConfig)",
    "patience": "moved to recovery.patience (recovery is the shared TrainConfig)",
    "granularity": "renamed to targets (the same list as `edgeadapt prune --target`: heads, neurons, "
                   "layers)",
    "data_paths": "replaced by data_root: one file or folder, read by the dataset registry exactly like "
                  "`edgeadapt train`'s data.root (text-files: train/val/test subfolders or files, or an "
                  "80/10/10 split by document; wikitext2/c4: local files named by split)",
}


def check_model_reference(model: str, field: str = "model") -> None:
    """Refuse what :func:`edgeadapt.pruning.checkpoint.load_model` would refuse, without loading:
    a name that is neither built in nor a local directory (a hub id gets the download command),
    or a directory that holds no model (:class:`~edgeadapt.errors.ConfigError`)."""
    if model in BUILTIN:
        return
    path = Path(model).expanduser()
    if path.is_dir():
        if not any((path / f).is_file() for f in ("manifest.json", "config.json", "base_config.json")):
            raise ConfigError(f"{field}: {model!r} is a directory but holds no model (no config.json or "
                              "edgeadapt manifest.json); point it at a model directory")
        return
    hub = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    raise ConfigError(f"{field}: unknown model {model!r}: not a built-in name ({', '.join(BUILTIN)}) and not "
                      "a local directory. edgeadapt never downloads: "
                      + (f"if it is a Hugging Face hub id, download it first (`huggingface-cli download "
                         f"{model} --local-dir DIR`) and set {field}: DIR; " if hub else "")
                      + "if an earlier step writes it, run that step first")


class PruningSection(BaseModel):
    """How units are scored and ranked."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    importance: str = Field(DEFAULT_IMPORTANCE, description="How groups are scored, one of the shared "
                            "importance table (edgeadapt.pruning.importance.IMPORTANCES): "
                            + "; ".join(f"{k}: {v.description}" for k, v in IMPORTANCES.items()) + ".")
    scope: Literal["global", "uniform"] = Field(DEFAULT_SCOPE, description="uniform (default, as in "
                                                "`edgeadapt prune`): the same fraction in every layer; "
                                                "global: rank a kind's units across all layers (with "
                                                "per-layer floors).")
    min_keep: int = Field(1, ge=1, description="Per-layer floor of heads and of FFN neurons (global scope).")
    protect_first: int = Field(0, ge=0, description="Leave the first N layers untouched.")
    protect_last: int = Field(0, ge=0, description="Leave the last N layers untouched.")
    calibration_batches: int = Field(8, ge=1, description="Training batches the importance is "
                                     "accumulated over.")
    iterative_steps: int = Field(1, ge=1, description="Reach the budget in this many steps (linear "
                                 "schedule), re-scoring the shrunken model on the calibration batches "
                                 "before each; 1 = one shot. The sweep stays one-shot.")

    @field_validator("importance")
    @classmethod
    def _importance(cls, value: str) -> str:
        return check_importance(value, "pruning.importance")


class RecoverySection(TrainConfig):
    """Recovery training after pruning: the shared loop's :class:`TrainConfig` (every field, with the
    overrides of :data:`RECOVERY_DEFAULTS`) plus the fields only recovery has. ``seed`` and
    ``device`` come from the top-level ``seed`` and ``use_gpu``/``gpu_ids``. ``memory`` (a
    :class:`~edgeadapt.memory.plan.MemoryPlan`: micro-batches weighted by target tokens, frozen
    leading blocks, checkpointed segments) bounds recovery's peak memory, e.g. ``recovery: {memory:
    {micro_batch_size: 4, freeze_fraction: 0.5, checkpoint_segments: 2}}``."""

    method: Literal["lora", "full", "none"] = Field(
        "lora", description="lora: train LoRA adapters (peft) and merge them; full: fine-tune every "
        "weight; none: skip.")
    lora: LoraSettings = Field(default_factory=lambda: LoraSettings(train_head=False),
                               description="LoRA rank, alpha, targets (the LM head stays frozen by default).")
    keep_if_worse: bool = Field(False, description="Keep the recovered weights even when validation "
                                "perplexity got worse than right after pruning (default: fall back to "
                                "the pruned weights).")
    max_train_blocks: int | None = Field(None, ge=1, description="Use at most this many training blocks.")

    @model_validator(mode="before")
    @classmethod
    def _recovery_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {**RECOVERY_DEFAULTS, **data}

    def train_config(self, seed: int, device: str) -> TrainConfig:
        """The :class:`TrainConfig` the shared loop runs, with the run's ``seed`` and ``device``."""
        fields = self.model_dump(include=set(TrainConfig.model_fields))
        return TrainConfig.model_validate({**fields, "seed": seed, "device": device})


class EvaluationSection(BaseModel):
    """Perplexity and speed/memory measurement."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    stride: int | None = Field(None, ge=1, description="Sliding-window stride in tokens (default: seq_len, "
                               "disjoint windows); smaller strides give every token more context.")
    max_eval_tokens: int | None = Field(None, ge=2, description="Score at most this many tokens per split.")
    speed_batch_size: int = Field(8, ge=1, description="Sequences per throughput/memory probe.")
    speed_repeats: int = Field(7, ge=1, description="Timed repeats (interleaved dense/pruned; median).")
    sweep: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                               description="Values of the configured budget (param_sparsity or "
                               "unit_sparsity, whichever is set) pruned without recovery for the "
                               "perplexity-vs-sparsity curve, plotted against the block-parameter "
                               "sparsity each achieves; [] skips the sweep.")
    datasets: list[str] = Field(default_factory=list, description="Extra test corpora for `--mode test` "
                                "(builtin-docs, wikitext2, c4), beside the configured dataset.")


class LLMPruneConfig(BaseModel):
    """A complete ``edgeadapt llm-prune`` configuration."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["llm-prune"] = "llm-prune"
    model: str = Field(description="Built-in name (tiny-llama, tiny-gpt2), Hugging Face id, local HF "
                       "model directory, or an edgeadapt model artifact (e.g. from "
                       "`edgeadapt llm-pretrain`).")
    download: str | None = Field(None, description="The Hugging Face hub id `model` (a local directory) is "
                                 "downloaded from; edgeadapt never downloads, so while the directory is "
                                 "missing, errors and `validate` name the `huggingface-cli download` that "
                                 "fills it.")
    tokenizer: str | None = Field(None, description="Tokenizer name or directory; default: the model's own.")
    use_gpu: bool | Literal["auto"] = Field("auto", description="auto: CUDA when present; true: require it; "
                                            "false: CPU.")
    gpu_ids: list[int] = Field(default_factory=list, description="CUDA devices to use: one runs on "
                               "cuda:N; several run data-parallel under `accelerate launch --gpu_ids ...`. "
                               "An existing CUDA_VISIBLE_DEVICES must agree (it is never overridden).")
    dataset: Literal["builtin-docs", "wikitext2", "c4", "text-files"] = Field(
        "builtin-docs", description="Training/calibration/evaluation corpus, read through the dataset "
        "registry (the same splits as `edgeadapt train`).")
    data_root: Path | None = Field(None, description="text-files: a file or folder (train/val/test "
                                   "subfolders or files named so, else an 80/10/10 split by document); "
                                   "wikitext2/c4: a folder of local files named by split.")
    seq_len: int = Field(128, ge=8, description="Tokens per training block and perplexity window.")
    batch_size: int = Field(8, ge=1, description="Sequences per micro-batch (calibration and recovery).")
    unit_sparsity: float | None = Field(None, description="Budget: the fraction of the units of each "
                                        "target kind removed (layers, heads, FFN neurons), in [0, 1). "
                                        "Give this or param_sparsity.")
    param_sparsity: float | None = Field(None, description="Budget: the fraction of the block parameters "
                                         "(attention and FFN weights of the layers) removed, in [0, 1); one "
                                         "unit fraction for every kind, found by bisection. Give this or "
                                         "unit_sparsity.")
    targets: list[Literal["heads", "neurons", "layers"]] = Field(
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
    seed: int = Field(0, description="Seed for data order, LoRA init, random importance and recovery.")
    resume: bool = Field(True, description="Continue recovery from the last checkpoint in `save`.")

    @model_validator(mode="before")
    @classmethod
    def _retired_and_shared(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, message in RETIRED_FIELDS.items():
            if name in data:
                raise ConfigError(f"{name}: {message}")
        recovery = data.get("recovery", {})
        if isinstance(recovery, dict):
            for name, where in (("seed", "the top-level seed"), ("device", "use_gpu / gpu_ids")):
                if name in recovery:
                    raise ConfigError(f"recovery.{name}: recovery uses {where}; remove recovery.{name}")
            device = "cpu" if data.get("use_gpu") is False else "auto"
            data = {**data, "recovery": {**recovery, "seed": data.get("seed", 0), "device": device}}
        return data

    @field_validator("unit_sparsity", "param_sparsity")
    @classmethod
    def _sparsity(cls, value: float | None, info: Any) -> float | None:
        return None if value is None else check_sparsity(value, info.field_name)

    @field_validator("targets")
    @classmethod
    def _dedupe(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @model_validator(mode="before")
    @classmethod
    def _download_plans_model(cls, data: Any, info: ValidationInfo) -> Any:
        # `validate`: a `download:` is the step that writes `model`, like an earlier config's `out`.
        if isinstance(data, dict) and data.get("download") and info.context is not None:
            info.context.setdefault("planned", {}).setdefault(
                Path(str(data.get("model"))).as_posix(),
                f"huggingface-cli download {data['download']} --local-dir {data.get('model')}")
        return data

    @field_validator("model")
    @classmethod
    def _model_loadable(cls, value: str, info: ValidationInfo) -> str:
        if not_built_yet(value, "model", info):  # `validate`: an earlier step writes it
            return value
        download = info.data.get("download")
        if download and not Path(value).exists():
            raise ConfigError(f"model: {value!r} does not exist yet; download it first "
                              f"(`huggingface-cli download {download} --local-dir {value}`)")
        check_model_reference(value)
        return value

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_local(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not_built_yet(value, "tokenizer", info) or Path(value).expanduser().is_dir():
            return value
        raise ConfigError(f"tokenizer: {value!r} is not a local directory and edgeadapt never downloads; "
                          f"download it first (`huggingface-cli download ID --local-dir DIR`) and set "
                          "tokenizer: DIR, or remove tokenizer to use the model's own")

    @field_validator("save", "log_dir")
    @classmethod
    def _writable(cls, value: Path, info: ValidationInfo) -> Path:
        return check_output_dir(value, info.field_name)

    @field_validator("data_root")
    @classmethod
    def _root_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not Path(value).exists():
            raise ConfigError(f"data_root: {str(value)!r} does not exist; point it at your local text "
                              "(relative paths are relative to the current directory)")
        return value

    @field_validator("evaluation")
    @classmethod
    def _sweep(cls, value: EvaluationSection) -> EvaluationSection:
        for value_ in value.sweep:
            check_sparsity(value_, "evaluation.sweep")
        return value

    @model_validator(mode="after")
    def _cached(self, info: ValidationInfo) -> LLMPruneConfig:
        check_hub_cached(self.dataset, self.data_root, "data_root", info)
        for name in self.evaluation.datasets:
            if name != self.dataset:  # data_root applies to the configured dataset only
                check_hub_cached(name, None, "evaluation.datasets", info,
                                 fix=f"remove {name} from evaluation.datasets")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> LLMPruneConfig:
        check_budget(self.unit_sparsity, self.param_sparsity)
        if self.dataset == "text-files" and self.data_root is None:
            raise ConfigError("data_root: dataset text-files needs local text; set data_root to a file or "
                              "folder")
        if self.dataset == "builtin-docs" and self.data_root is not None:
            raise ConfigError("data_root: builtin-docs ships with Python and reads no files; remove "
                              "data_root")
        if self.gpu_ids and self.use_gpu is False:
            raise ConfigError("gpu_ids: set but use_gpu is false; remove gpu_ids or set use_gpu: true")
        for name in self.evaluation.datasets:
            if name not in ("builtin-docs", "wikitext2", "c4"):
                raise ConfigError(f"evaluation.datasets: {name!r} is not one of builtin-docs, wikitext2, c4")
        if Path(self.model).exists() or self.model in BUILTIN:  # not a step's future output
            self._check_limits()
        return self

    def _check_limits(self) -> None:
        """What the model's config bounds, before any weight is loaded: the window length (a
        learned position table has no row past it), the tokenizer's ids (an embedding has no row past
        vocab_size) and the protected layers."""
        limits = model_limits(self.model)
        task = model_task(self.model)
        if task not in (None, "causal-lm"):
            raise ConfigError(f"model: {self.model!r} is a model for {task}; llm-prune needs a causal LM "
                              "(tiny-llama, tiny-gpt2, a *ForCausalLM directory or its artifact)")
        check_context(self.seq_len, limits.positions, "seq_len")
        if self.tokenizer is None or Path(self.tokenizer).expanduser().is_dir():
            field = "tokenizer" if self.tokenizer is not None else "model"
            check_vocab(tokenizer_size(self.tokenizer or self.model), limits.vocab, field, self.model,
                        "set tokenizer: to the tokenizer the model was trained with")
        if self.evaluation.stride is not None and self.evaluation.stride > self.seq_len:
            raise ConfigError(f"evaluation.stride: {self.evaluation.stride} is more than seq_len "
                              f"{self.seq_len}; tokens between windows would never be scored")
        p = self.pruning
        if limits.layers is not None and p.protect_first + p.protect_last >= limits.layers:
            raise ConfigError(f"pruning.protect_first {p.protect_first} + protect_last {p.protect_last} "
                              f"cover all {limits.layers} layers of {self.model!r}; nothing would be pruned")

    @property
    def budget(self) -> tuple[str, float]:
        """``("unit", s)`` or ``("param", s)``: the configured budget."""
        return check_budget(self.unit_sparsity, self.param_sparsity)
