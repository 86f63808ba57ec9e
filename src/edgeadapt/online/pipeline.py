"""``edgeadapt adapt``: every method over a drift stream, from one config, into a report directory.

Config → the offline stage's artifacts (``offline/lora`` = the foundation model, ``offline/kb`` =
the knowledge base, which records the source dataset) → a claimed output directory →
:func:`edgeadapt.online.api.adapt` (source statistics, static baseline, every method over the
stream) → ``results.json`` (benchmark schema), ``per_domain.csv``, ``report.md``/``report.html``
and plots.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from edgeadapt.config import not_built_yet
from edgeadapt.data.config import DataSection, check_adapt_fits_model
from edgeadapt.data.stream import DriftStream
from edgeadapt.errors import ConfigError
from edgeadapt.memory.accounting import parse_bytes
from edgeadapt.memory.plan import ADAPTATION_LOSS, MemoryPlan, check_micro_batching
from edgeadapt.models.registry import make_task, task_of
from edgeadapt.offline.lora import load_lora_artifact
from edgeadapt.online.api import adapt, check_methods
from edgeadapt.online.edge_plan import TimeBudget
from edgeadapt.online.method_options import check_method_options
from edgeadapt.online.methods import method_names
from edgeadapt.online.methods.base import loss_config_for
from edgeadapt.online.report import write_report
from edgeadapt.online.retrain import RetrainBudget
from edgeadapt.rundir import claim_output
from edgeadapt.tracking.run import make_logger


class AdaptConfig(BaseModel):
    """A complete `edgeadapt adapt` configuration."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False)

    kind: Literal["adapt"] = "adapt"
    offline: Path = Field(Path("runs/offline-vit"), description="Directory of `edgeadapt offline all` "
                          "(reads lora/ and kb/).")
    stream: str | list[Any] | None = Field(None, description="The drift stream: 'gaussian_noise:5,fog:3' "
                                           "(digits-c), a YAML file, a list of domains ({dataset: NAME, "
                                           "options: {...}, labelled: false}, 'fog:3' or {corruption, "
                                           "severity}), or null for the default 10-domain stream.")
    source: str | dict[str, Any] | None = Field(None, description="Labelled source data for the source "
                                                "statistics and the static baseline: a registered dataset "
                                                "name or a data: mapping; null: the dataset the offline "
                                                "stage recorded in its knowledge base.")
    methods: list[str] | None = Field(None, description="Methods to compare (registered names, "
                                      "`edgeadapt.online.methods`); null: every registered method that "
                                      "can adapt the model's task (eata and sar need a classifier).")
    width: float = Field(0.75, gt=0, le=1, description="Proxy width: the fraction of heads and FFN neurons "
                         "kept per block (and the static baseline's width).")
    proxy_params: int | None = Field(None, ge=1, description="Budget as a parameter count: the widest "
                                     "proxy with at most this many parameters (overrides width).")
    proxy_memory_bytes: int | None = Field(None, ge=1, description="Budget as bytes of retraining memory "
                                           "(parameters, gradients, AdamW state, activations of one step): "
                                           "the widest proxy that fits (overrides width).")
    memory_budget: int | None = Field(None, ge=1, description="Peak bytes (or '8MiB') of the edge methods' "
                                      "retraining step: a memory plan (frozen blocks, checkpoint segments) "
                                      "predicted to fit is chosen for them instead of "
                                      "budget.gradient_checkpointing, and recorded as memory_plan.")
    time_budget: float | str | None = Field(None, description="Retraining time per domain of the edge "
                                            "methods: seconds (1.5, '1500ms') or a fraction of the "
                                            "unconstrained retraining ('0.5x': what `full` runs). Planned "
                                            "with memory_budget: the edge steps that fit, and our loss may "
                                            "drop distillation (its teacher forward); recorded in "
                                            "memory_plan.")
    trainable: str = Field("all", description="Parameters retrained: all, norm, norm+head, attention, mlp.")
    budget: RetrainBudget = Field(default_factory=RetrainBudget)
    loss: dict[str, Any] = Field(default_factory=dict, description="Fields of our loss for the FM's task: "
                                 "AdaptLossConfig (classifiers), LMAdaptLossConfig (causal LMs: next_token, "
                                 "distill, temperature, replay) or EncoderAdaptLossConfig (encoders).")
    static_epochs: int = Field(8, ge=0, description="Source fine-tuning epochs of the static baseline "
                               "after pruning.")
    method_options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Per-method "
                                                      "settings by method name, e.g. {eata: {d_margin: 0.4}} "
                                                      "or {edgeadapt: {safeguard: {enabled: false}}}.")
    seed: int = Field(0, description="Seed for shuffling and corruption noise.")
    out: Path = Field(Path("runs/adapt"), description="Report directory.")

    @model_validator(mode="after")
    def _one_budget(self, info: ValidationInfo) -> AdaptConfig:
        if self.proxy_params is not None and self.proxy_memory_bytes is not None:
            raise ConfigError("proxy_params and proxy_memory_bytes are alternatives; set one of them")
        check_adapt_fits_model(self)  # the stream must fit the FM in offline/lora, once it exists
        if info is not None and info.context is not None:  # `validate`: what run_adapt refuses first
            missing = missing_offline(self.offline)
            if missing is not None and not not_built_yet(self.offline, "offline", info):
                raise ConfigError(missing)
        self._check_loss_fits_model(info)
        return self

    def _check_loss_fits_model(self, info: ValidationInfo | None) -> None:
        """What ``adapt`` checks of the loss before any compute, here so ``validate`` checks it too:
        ``loss`` must be the FM's task's loss config, and a loss with MMD needs ``budget.batch_size``
        >= 2. The FM's task is read from ``offline/lora``; while that is not built, ``validate``
        notes that the check waits for it."""
        task = fm_task(self.offline)
        if task is None:
            if info is not None and info.context is not None and self.budget.batch_size < 2:
                info.context.setdefault("notes", []).append(
                    f"budget.batch_size {self.budget.batch_size} is checked against the foundation model's "
                    f"loss once {self.offline / 'lora'} is built")
            return
        if getattr(loss_config_for(task, self.loss), "mmd", 0):
            try:
                check_micro_batching(self.budget.memory or MemoryPlan(), self.budget.batch_size,
                                     ADAPTATION_LOSS)
            except ConfigError as exc:
                raise ConfigError(f"budget.batch_size: {exc}") from None

    @field_validator("proxy_memory_bytes", "memory_budget", mode="before")
    @classmethod
    def _bytes(cls, value: Any) -> Any:
        return None if value is None else parse_bytes(value)

    @field_validator("time_budget")
    @classmethod
    def _time(cls, value: float | str | None) -> float | str | None:
        if value is not None:
            TimeBudget.parse(value)
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, names: list[str] | None) -> list[str] | None:
        if names is not None:
            check_methods(names)
        return names

    @field_validator("method_options")
    @classmethod
    def _method_options(cls, options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        unknown = sorted(set(options) - set(method_names()))
        if unknown:
            raise ConfigError(f"method_options: {unknown} are not registered methods; choose from "
                              f"{', '.join(method_names())}")
        check_method_options(options)  # each method's settings, before any model loads
        return options

    @field_validator("stream")
    @classmethod
    def _stream(cls, spec: Any) -> Any:
        DriftStream.parse(spec)
        return spec

    @field_validator("source")
    @classmethod
    def _source(cls, source: Any) -> Any:
        if source is not None:
            DataSection(**({"name": source} if isinstance(source, str) else source))
        return source

    @field_validator("loss")
    @classmethod
    def _loss(cls, fields: dict[str, Any]) -> dict[str, Any]:
        # which loss applies depends on the FM's task (read when the run loads it): here the fields
        # must fit one of them; the run checks them against the task before any training
        errors = []
        for task in ("classification", "causal-lm", "sentence-embedding"):
            try:
                loss_config_for(task, fields)
                return fields
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])


def missing_offline(offline: Path) -> str | None:
    """Why ``offline`` is not a complete ``edgeadapt offline`` output (its ``lora`` and ``kb``
    artifacts), with the fix; ``None`` when it is."""
    for step in ("lora", "kb"):
        if not (Path(offline) / step / "manifest.json").is_file():
            return (f"offline: {Path(offline) / step} has no artifact; run `edgeadapt offline all --config "
                    "configs/offline-vit-digits.yaml` first (or `edgeadapt demo`)")
    return None


def fm_task(offline: Path) -> str | None:
    """The task name (``classification``, ``causal-lm``, ``sentence-embedding``) of the foundation
    model in ``offline/lora``, from its manifest; ``None`` while it is not built (or unreadable)."""
    try:
        manifest = json.loads((Path(offline) / "lora" / "manifest.json").read_text(encoding="utf-8"))
        return make_task(task_of(manifest["base"]["class"])).name
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_adapt(cfg: AdaptConfig, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run the configured methods over the stream and write the report into ``cfg.out``.

    Before any compute, ``out`` is locked and checked (:func:`edgeadapt.rundir.claim_output`): it
    must be empty or hold an earlier ``edgeadapt adapt`` of the same config; another command's
    output or another config's report is refused (:class:`~edgeadapt.errors.OutputExistsError` /
    :class:`~edgeadapt.errors.ConfigError` naming the fields) unless ``overwrite``, and a second run
    on the same ``out`` is refused with the holder's PID. What was there is replaced only when the
    run succeeds."""
    missing = missing_offline(cfg.offline)
    if missing is not None:
        raise ConfigError(missing)
    with claim_output(cfg.out, "adapt", cfg, overwrite=overwrite):
        return _run_adapt(cfg, progress)


def _run_adapt(cfg: AdaptConfig, progress: bool) -> dict[str, Any]:
    fm = load_lora_artifact(cfg.offline / "lora")
    logger = make_logger(cfg.out / "logs", ["tensorboard", "csv"])
    try:
        # the KB as its directory: checked against the FM, and it records the source dataset
        results = adapt(fm, cfg.offline / "kb", DriftStream.parse(cfg.stream), methods=cfg.methods,
                        budget=cfg.budget, width=cfg.width, source=cfg.source, seed=cfg.seed,
                        progress=progress, loss=cfg.loss, trainable=cfg.trainable,
                        static_epochs=cfg.static_epochs, proxy_params=cfg.proxy_params,
                        method_options=cfg.method_options,
                        proxy_memory_bytes=cfg.proxy_memory_bytes, logger=logger,
                        memory_budget=cfg.memory_budget, time_budget=cfg.time_budget)
    finally:
        logger.close()
    results["config"] = cfg.model_dump(mode="json")
    notes = report_notes(results, cfg)
    write_report(results, cfg.out, notes=notes)
    return results


def report_notes(results: dict[str, Any], cfg: AdaptConfig) -> str:
    """The run's one-paragraph summary at the top of report.md: the source model's clean score, the
    proxy width, the configured retraining steps per domain and, when a time budget gave a method
    fewer, those methods' steps (the configured count alone misled: 4 shown, 2 run)."""
    clean = next(((k[len("clean_"):], v) for k, v in results.items() if k.startswith("clean_")), None)
    quality = f"Source model clean {clean[0]} {clean[1]:.3f}. " if clean else ""
    fewer = sorted({(r["method"], int(r["steps"])) for r in results.get("per_domain", [])
                    if int(r.get("steps", cfg.budget.steps)) != cfg.budget.steps})
    planned = "" if not fewer else " (under the time budget: " + ", ".join(
        f"{m} {n}" for m, n in fewer) + "; see the plan below)"
    return (f"{quality}Proxy width {results['proxy_width']:.0%}; {cfg.budget.steps} retraining steps of "
            f"{cfg.budget.batch_size} unlabeled samples per domain{planned}; methods adapt continually "
            "along the stream.")
