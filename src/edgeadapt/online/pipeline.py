"""``edgeadapt adapt``: every method over a drift stream, from one config, into a report directory.

Reads the offline stage's artifacts (``offline/lora`` = the foundation model, ``offline/kb`` =
the knowledge base), computes the source statistics the edge keeps (feature bank, moments,
class prior, a small replay buffer), builds the static baseline once, runs the stream and writes
``results.json`` (benchmark schema), ``per_domain.csv``, ``report.md``/``report.html`` and plots.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeadapt.data.config import check_adapt_fits_model
from edgeadapt.data.registry import build_dataset
from edgeadapt.data.stream import parse_stream, stream_data
from edgeadapt.errors import ConfigError
from edgeadapt.memory.accounting import parse_bytes
from edgeadapt.offline.artifacts import load_kb
from edgeadapt.offline.lora import load_lora_artifact
from edgeadapt.online.losses import AdaptLossConfig, adaptation_loss, source_stats
from edgeadapt.online.proxy import width_for_memory, width_for_params
from edgeadapt.online.report import write_report
from edgeadapt.online.retrain import RetrainBudget, unlabeled
from edgeadapt.online.runner import METHODS, build_methods, run_stream
from edgeadapt.pruning.prune import prune
from edgeadapt.rundir import claim_output
from edgeadapt.tracking.run import make_logger
from edgeadapt.training.config import TrainConfig
from edgeadapt.training.loop import fit


def _loss_config() -> Any:
    return AdaptLossConfig()


class AdaptConfig(BaseModel):
    """A complete `edgeadapt adapt` configuration."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False)

    kind: Literal["adapt"] = "adapt"
    offline: Path = Field(Path("runs/offline-vit"), description="Directory of `edgeadapt offline all` "
                          "(reads lora/ and kb/).")
    stream: str | list[Any] | None = Field(None, description="'gaussian_noise:5,fog:3', a YAML list, a "
                                           "YAML file, or null for the default 10-domain stream.")
    methods: list[str] = Field(default_factory=lambda: list(METHODS), description="Methods to compare.")
    width: float = Field(0.75, gt=0, le=1, description="Proxy width: the fraction of heads and FFN neurons "
                         "kept per block (and the static baseline's width).")
    proxy_params: int | None = Field(None, ge=1, description="Budget as a parameter count: the widest "
                                     "proxy with at most this many parameters (overrides width).")
    proxy_memory_bytes: int | None = Field(None, ge=1, description="Budget as bytes of retraining memory "
                                           "(parameters, gradients, AdamW state, activations of one step): "
                                           "the widest proxy that fits (overrides width).")
    trainable: str = Field("all", description="Parameters retrained: all, norm, norm+head, attention, mlp.")
    budget: RetrainBudget = Field(default_factory=RetrainBudget)
    loss: dict[str, Any] = Field(default_factory=dict, description="AdaptLossConfig fields (our loss).")
    static_epochs: int = Field(8, ge=0, description="Source fine-tuning epochs of the static baseline "
                               "after pruning.")
    seed: int = Field(0, description="Seed for shuffling and corruption noise.")
    out: Path = Field(Path("runs/adapt"), description="Report directory.")

    @model_validator(mode="after")
    def _one_budget(self) -> AdaptConfig:
        if self.proxy_params is not None and self.proxy_memory_bytes is not None:
            raise ConfigError("proxy_params and proxy_memory_bytes are alternatives; set one of them")
        check_adapt_fits_model(self)  # the stream must fit the FM in offline/lora, once it exists
        return self

    @field_validator("proxy_memory_bytes", mode="before")
    @classmethod
    def _bytes(cls, value: Any) -> Any:
        return None if value is None else parse_bytes(value)

    @field_validator("methods")
    @classmethod
    def _methods(cls, names: list[str]) -> list[str]:
        if not names:
            raise ConfigError(f"methods: the list is empty, so nothing would run; choose from "
                              f"{', '.join(METHODS)}")
        unknown = [n for n in names if n not in METHODS]
        if unknown:
            raise ConfigError(f"methods: unknown {unknown}; choose from {', '.join(METHODS)}")
        return names

    @field_validator("stream")
    @classmethod
    def _stream(cls, spec: Any) -> Any:
        parse_stream(spec)
        return spec

    @field_validator("loss")
    @classmethod
    def _loss(cls, fields: dict[str, Any]) -> dict[str, Any]:
        AdaptLossConfig(**fields)
        return fields


def static_baseline(fm: Any, width: float, epochs: int, seed: int = 0) -> Any:
    """The FM magnitude-pruned once to ``width`` and fine-tuned on the labeled source data."""
    model = copy.deepcopy(fm)
    if width < 1:
        prune(model, ["heads", "neurons"], "magnitude", unit_sparsity=1.0 - width, device="cpu")
    if epochs > 0:
        data = build_dataset("digits", size=fm.model.config.image_size)
        fit(model, lambda e: data.train.batches(64, shuffle=True, seed=seed + e),
            TrainConfig(epochs=epochs, learning_rate=2e-3, seed=seed, progress=False),
            val=lambda: data.val.batches(256), monitor="accuracy")
    model.model.cpu()
    return model


def proxy_width(cfg: AdaptConfig, kb: Any, stats: Any, loss_cfg: Any, first: Any) -> float:
    """The proxy width the budget allows: ``cfg.width``, or the widest proxy within
    ``cfg.proxy_params`` parameters / ``cfg.proxy_memory_bytes`` bytes of retraining memory
    (measured with our loss on a batch of the first domain)."""
    if cfg.proxy_params is not None:
        return width_for_params(kb, cfg.proxy_params)
    if cfg.proxy_memory_bytes is not None:
        batch = next(iter(unlabeled(first.adapt.batches(cfg.budget.batch_size))))
        b = cfg.budget
        loss = lambda m: adaptation_loss(m, stats, loss_cfg)  # noqa: E731
        return width_for_memory(kb, cfg.proxy_memory_bytes, loss, batch, b.learning_rate, b.device,
                                b.gradient_checkpointing)
    return cfg.width


def run_adapt(cfg: AdaptConfig, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run the configured methods over the stream and write the report into ``cfg.out``.

    Before any compute, ``out`` is locked and checked (:func:`edgeadapt.rundir.claim_output`): it
    must be empty or hold an earlier ``edgeadapt adapt`` of the same config; another command's
    output or another config's report is refused (:class:`~edgeadapt.errors.OutputExistsError` /
    :class:`~edgeadapt.errors.ConfigError` naming the fields) unless ``overwrite``, and a second run
    on the same ``out`` is refused with the holder's PID. What was there is replaced only when the
    run succeeds."""
    for step in ("lora", "kb"):
        if not (cfg.offline / step / "manifest.json").is_file():
            raise ConfigError(f"offline: {cfg.offline / step} has no artifact; run `edgeadapt offline all "
                             "--config configs/offline-vit-digits.yaml` first (or `edgeadapt demo`)")
    with claim_output(cfg.out, "adapt", cfg, overwrite=overwrite):
        return _run_adapt(cfg, progress)


def _run_adapt(cfg: AdaptConfig, progress: bool) -> dict[str, Any]:
    fm = load_lora_artifact(cfg.offline / "lora")
    kb = load_kb(cfg.offline / "kb", expect_base_hash=fm.base_hash())
    size = fm.model.config.image_size
    source = build_dataset("digits", size=size)
    stats = source_stats(fm, source.train.batches(64, shuffle=True, seed=cfg.seed), seed=cfg.seed)
    domains = stream_data(parse_stream(cfg.stream), size=size, seed=cfg.seed)
    loss_cfg = AdaptLossConfig(**cfg.loss)
    width = proxy_width(cfg, kb, stats, loss_cfg, domains[0])
    static = (lambda: static_baseline(fm, width, cfg.static_epochs, cfg.seed)) \
        if "static" in cfg.methods else None
    methods = build_methods(cfg.methods, fm, kb, stats, loss_cfg, width, static, cfg.trainable)
    logger = make_logger(cfg.out / "logs", ["tensorboard", "csv"])
    try:
        results = run_stream(methods, domains, cfg.budget, seed=cfg.seed, logger=logger, progress=progress)
    finally:
        logger.close()
    clean = fm.evaluate(source.test.batches(256))["accuracy"]
    results.update(config=cfg.model_dump(mode="json"), clean_accuracy=clean, proxy_width=width)
    notes = (f"Source model clean accuracy {clean:.3f}. Proxy width {width:.0%}; {cfg.budget.steps} "
             f"retraining steps of {cfg.budget.batch_size} unlabeled images per domain; methods adapt "
             "continually along the stream.")
    write_report(results, cfg.out, notes=notes)
    return results
