"""``edgeadapt offline lora|kb|index|all``: the cloud stage from one YAML config.

Each step writes one artifact directory under ``out`` and the next step reads it from there, so
no path is ever edited by hand::

    out/lora/    the foundation model (FM) after LoRA tuning on the source data, merged
    out/kb/      the elastic knowledge base built from out/lora
    out/index/   the neuron index KB <-> FM, verified by an exact round trip

With ``lora.enabled: false`` the FM is ``model`` itself, saved unchanged to ``out/lora``.

Each step claims its directory before any compute (:func:`edgeadapt.rundir.claim_output`: a lock,
and only that step's earlier output of the same config may be there), and checks the identity chain
of what it reads: the upstream artifact must have been made from the config fields this step shares
with it (:data:`STEP_FIELDS`; a changed ``model:`` refuses a stale ``out/lora``) and from the same
weights (``tuned_from_hash`` / base hash against the configured model).
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeadapt.artifacts import ArtifactError, atomic_write_text
from edgeadapt.data.config import DataSection, check_offline_fits_model, load_splits
from edgeadapt.data.registry import dataset_info
from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.models.registry import model_image_size
from edgeadapt.offline.artifacts import load_kb, save_kb
from edgeadapt.offline.knowledge_base import KBSettings, build_kb, check_width
from edgeadapt.offline.lora import LoraSettings, load_lora_artifact, lora_tune, save_lora_artifact
from edgeadapt.offline.neuron_index import kb_state_to_fm, save_index, to_kb
from edgeadapt.pruning.checkpoint import load_model
from edgeadapt.rundir import claim_output, refuse_config_change, result_config
from edgeadapt.tracking.base import MetricLogger
from edgeadapt.tracking.config import TrackingSection, make_run_logger
from edgeadapt.training.batches import batch_factory
from edgeadapt.training.checkpoint import bind_checkpoints
from edgeadapt.training.config import TrainConfig
from edgeadapt.training.sections import ModelDataConfig, TrainSection

STEPS = ("lora", "kb", "index")

# The config fields whose values determine each step's artifact (and so everything it feeds).
STEP_FIELDS = {"lora": ("model", "seed", "data", "lora"), "kb": ("model", "seed", "data", "lora", "kb"),
               "index": ("model", "seed", "data", "lora", "kb")}


class LoraStep(BaseModel):
    """LoRA tuning of the FM on the source data."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="False: use the model as the FM without tuning.")
    settings: LoraSettings = Field(default_factory=LoraSettings)
    train: TrainSection


class KBStep(BaseModel):
    """Knowledge-base construction."""

    model_config = ConfigDict(extra="forbid")

    settings: KBSettings = Field(default_factory=KBSettings)
    train: TrainSection
    widths: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0],
                                description="Widths reported after training (each in (0, 1]).")

    @field_validator("widths")
    @classmethod
    def _widths(cls, widths: list[float]) -> list[float]:
        return [check_width(w) for w in widths]


class OfflineConfig(ModelDataConfig):
    """A complete `edgeadapt offline` configuration."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["offline"] = "offline"
    model: str = Field(description="The foundation model: built-in name, local HF directory or an "
                       "edgeadapt model artifact (e.g. the output of `edgeadapt train`).")
    seed: int = Field(0, description="Seed for shuffling and random widths.")
    data: DataSection = Field(description="Source-domain data the FM was trained for.")
    lora: LoraStep
    kb: KBStep
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    out: Path = Field(description="Root directory; steps write out/lora, out/kb, out/index.")

    @model_validator(mode="after")
    def _data_fits_model(self) -> OfflineConfig:
        """The FM keeps its head: the data's classes, image size and token range must fit it."""
        check_offline_fits_model(self)
        return self


def step_dir(cfg: OfflineConfig, step: str) -> Path:
    return Path(cfg.out) / step


def step_config(cfg: OfflineConfig, step: str) -> dict[str, Any]:
    """The part of ``cfg`` that determines ``step``'s artifact (cosmetic fields left out)."""
    return result_config({k: v for k, v in cfg.model_dump(mode="json").items() if k in STEP_FIELDS[step]})


def _require(cfg: OfflineConfig, step: str) -> Path:
    """``out/<step>``, checked to have been made from this config's fields for ``step``."""
    path = step_dir(cfg, step)
    if not (path / "manifest.json").is_file():
        raise ArtifactError(f"{path} has no artifact; run `edgeadapt offline {step} --config ...` first "
                            "(or `edgeadapt offline all`)")
    stored = _manifest_config(path).get("offline")
    if not isinstance(stored, dict):
        raise ArtifactError(f"{path} does not record the offline config it was made from (an older "
                            f"edgeadapt?); re-create it with `edgeadapt offline {step} --overwrite`")
    made_from = result_config({k: v for k, v in stored.items() if k in STEP_FIELDS[step]})
    refuse_config_change(str(path), made_from, step_config(cfg, step),
                         f"rerun `edgeadapt offline {step}` (or `all`) with this config, or set out: to a "
                         "new directory")
    return path


def _manifest_config(path: Path) -> dict[str, Any]:
    data = json.loads((path / "manifest.json").read_text())
    config = data.get("config") if isinstance(data, dict) else None
    return config if isinstance(config, dict) else {}


def _check_fm_identity(cfg: OfflineConfig, lora_dir: Path) -> None:
    """``out/lora`` must descend from the weights ``cfg.model`` names now (a retrained model at the
    same path gives the same config but other weights)."""
    manifest = json.loads((lora_dir / "manifest.json").read_text())
    recorded = manifest.get("config", {}).get("tuned_from_hash") or manifest.get("base", {}).get("hash")
    current = load_model(cfg.model).base_hash()
    if recorded != current:
        raise ArtifactError(f"{lora_dir} was tuned from other weights than model {cfg.model!r} holds now "
                            f"(hash {str(recorded)[:12]} vs {current[:12]}); rerun `edgeadapt offline lora` "
                            "(or `all`) with --overwrite")


def _loop(section: TrainSection) -> TrainConfig:
    return section.loop_config()


def _data(cfg: OfflineConfig, adapter: ModelAdapter, section: TrainSection) -> tuple[Any, Any, Any, str]:
    """Train factory, val and test thunks, and the monitored metric, for one step's section."""
    image = dataset_info(cfg.data.name).task == "image-classification"
    splits = load_splits(cfg.data, model_image_size(cfg.model) if image else None, cfg.seed)
    length = cfg.data.max_length
    train = batch_factory(adapter, splits.train, section.batch_size, True, cfg.seed, length)
    val = batch_factory(adapter, splits.val, section.eval_batch_size, False, max_length=length)
    test = batch_factory(adapter, splits.test, section.eval_batch_size, False, max_length=length)
    return train, (lambda: val(0)), (lambda: test(0)), section.monitor_for(adapter.task.name)


def _logger(cfg: OfflineConfig, step: str) -> MetricLogger:
    return make_run_logger(cfg.tracking, step_dir(cfg, step) / "logs")


def run_lora(cfg: OfflineConfig) -> dict[str, Any]:
    """Tune the FM with LoRA on the source data, merge (checked exact) and save ``out/lora``;
    checkpoints (every epoch and every ``lora.train.checkpoint_every`` steps) go to
    ``out/lora/checkpoints`` and a killed run resumes from them."""
    fm = load_model(cfg.model)
    train, val, test, monitor = _data(cfg, fm, cfg.lora.train)
    before = fm.evaluate(test())
    out = step_dir(cfg, "lora")
    if cfg.lora.enabled:
        logger = _logger(cfg, "lora")
        checkpoints = out / "checkpoints"
        bind_checkpoints(checkpoints, step_config(cfg, "lora"))
        try:
            report = lora_tune(fm, train, _loop(cfg.lora.train), cfg.lora.settings, val=val, monitor=monitor,
                               logger=logger, checkpoint_dir=checkpoints)
        finally:
            logger.close()
        fm.model.cpu()
    else:
        report = {"skipped": True}
    report.update({"test_before": before, "test_after": fm.evaluate(test())})
    save_lora_artifact(fm, out, cfg.lora.settings, report, {"offline": cfg.model_dump(mode="json")})
    return report


def run_kb(cfg: OfflineConfig) -> dict[str, Any]:
    """Build the knowledge base from ``out/lora`` and save ``out/kb`` with per-width test metrics."""
    lora_dir = _require(cfg, "lora")
    _check_fm_identity(cfg, lora_dir)
    fm = load_lora_artifact(lora_dir)
    bind_checkpoints(step_dir(cfg, "kb") / "checkpoints", step_config(cfg, "kb"))
    section = cfg.kb.train
    train, val, test, monitor = _data(cfg, fm, section)
    calibration = [b for _, b in zip(range(cfg.kb.settings.calibration_batches), val())]
    logger = _logger(cfg, "kb")
    try:
        kb, result = build_kb(fm, train, _loop(section), cfg.kb.settings, calibration, val=val,
                              monitor=monitor,
                              logger=logger, checkpoint_dir=step_dir(cfg, "kb") / "checkpoints")
    finally:
        logger.close()
    report = {"fm": fm.evaluate(test()), "widths": {str(w): kb.evaluate(test(), w) for w in cfg.kb.widths},
              "history": result.history}
    save_kb(kb, step_dir(cfg, "kb"), config={"offline": cfg.model_dump(mode="json"),
                                              "report": {k: v for k, v in report.items() if k != "history"}})
    atomic_write_text(step_dir(cfg, "kb") / "report.json", json.dumps(report, indent=1))
    return report


def run_index(cfg: OfflineConfig) -> dict[str, Any]:
    """Write ``out/index`` after checking that the KB belongs to ``out/lora`` and that FM -> KB -> FM
    is exact with the index."""
    fm = load_lora_artifact(_require(cfg, "lora"))
    kb = load_kb(_require(cfg, "kb"), expect_base_hash=fm.base_hash())
    fm_state = fm.model.state_dict()
    round_trip = kb_state_to_fm(to_kb(fm, kb.index), kb.index)
    worst = max((round_trip[k] - v).abs().max().item() for k, v in fm_state.items())
    if worst != 0.0:
        raise ArtifactError(f"FM -> KB -> FM round trip is not exact (max diff {worst}); the index is broken")
    trained = kb_state_to_fm(kb.adapter, kb.index)
    moved = sum(int(not torch.equal(trained[k], v)) for k, v in fm_state.items())
    save_index(kb.index, step_dir(cfg, "index"), config={"offline": cfg.model_dump(mode="json"),
                                                          "round_trip_max_diff": worst})
    return {"round_trip_max_diff": worst, "tensors_changed_by_kb_training": moved, "tensors": len(fm_state)}


RUNNERS = {"lora": run_lora, "kb": run_kb, "index": run_index}


def run_offline(cfg: OfflineConfig, steps: list[str] | tuple[str, ...] = STEPS,
                overwrite: bool = False) -> dict[str, Any]:
    """Run ``steps`` in order; returns each step's report.

    Every step's directory is locked and checked before any step computes: it must be empty or
    hold that step's earlier output of the same config (which resumes), else it is refused
    (:class:`~edgeadapt.errors.OutputExistsError` / :class:`~edgeadapt.errors.ConfigError` naming
    the fields) unless ``overwrite``, which empties it."""
    unknown = [s for s in steps if s not in RUNNERS]
    if unknown:
        raise ConfigError(f"unknown offline step(s) {unknown}; choose from {list(STEPS)} or 'all'")
    with ExitStack() as stack:
        for step in steps:
            stack.enter_context(claim_output(step_dir(cfg, step), f"offline {step}", step_config(cfg, step),
                                             overwrite=overwrite, field=f"out ({step})"))
        return {step: RUNNERS[step](cfg) for step in steps}
