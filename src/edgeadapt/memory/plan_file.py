"""Memory plans as files: ``kind: memory-plan`` JSON or YAML that ``edgeadapt validate`` checks.

A plan file holds the fields of :class:`~edgeadapt.memory.plan.MemoryPlan` and, optionally,
``kind: memory-plan`` (what ``edgeadapt validate`` needs to know the file is a plan;
:func:`save_plan` writes it), ``model``: the model the plan was chosen for (its name — a local
model directory as an absolute path, so the file means the same from any directory —, family,
number of blocks, weight dtype and the dtype it trains in; :func:`save_plan` records it when given
the adapter), and the
effective ``batch_size`` and memory ``budget_bytes`` it was chosen for. ``edgeadapt memory plan
--save`` writes one and ``edgeadapt memory estimate --plan`` reads it. Example::

    {"kind": "memory-plan", "model": {"name": "tiny-vit", "family": "vit", "num_blocks": 4,
     "dtype": "bfloat16", "trained_dtype": "float32"}, "batch_size": 8, "budget_bytes": 4194304,
     "micro_batch_size": 4, "freeze_blocks": 1, "checkpoint_segments": 2}

A plan is checked against the model it is applied to (:func:`check_plan_fits`): frozen blocks
and checkpoint segments must exist in that model, and a plan recorded for another model is
warned about (its memory figures were predicted for that model, at that dtype). A bf16/fp16
model trains on float32 master weights (:func:`~edgeadapt.numerics.fp32_master`), so its plan is
predicted and measured at float32 (``trained_dtype``); a half-precision plan file without
``trained_dtype`` was planned at the half dtype and is warned about. Files without
``model``, ``dtype``, ``batch_size`` or ``budget_bytes`` (written before they were recorded) load as
before, without the checks those fields allow.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgeadapt.artifacts import atomic_write_text
from edgeadapt.config import parse_config, read_yaml
from edgeadapt.errors import ConfigError
from edgeadapt.memory.plan import MemoryPlan

KIND = "memory-plan"
DtypeName = Literal["float32", "bfloat16", "float16", "float64"]
"""The weight dtypes a plan file can record (torch's names without ``torch.``)."""
HALF_NAMES = ("bfloat16", "float16")

__all__ = ["KIND", "MemoryPlanFile", "PlanModel", "check_blocks", "check_micro_batch_size",
           "check_plan_fits", "load_plan", "load_plan_file", "micro_batch_sizes", "plan_model", "save_plan"]


class PlanModel(BaseModel):
    """The model a plan file was chosen for: enough to notice it applied to another model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The model as given to `memory plan`: a built-in or hub name as typed, "
                      "a local model directory as an absolute path.")
    family: str = Field(description="Its architecture family (vit, llama, resnet, ...).")
    num_blocks: int = Field(ge=1, description="Blocks the memory knobs act on (freeze_blocks and "
                            "checkpoint_segments count these).")
    dtype: DtypeName | None = Field(None, description="The dtype of its weights when planned (float32, "
                                    "bfloat16, float16, float64); absent in older files.")
    trained_dtype: DtypeName | None = Field(None, description="The dtype its training runs in, which the "
                                            "memory figures were predicted and measured at: float32 for "
                                            "bfloat16/float16 weights (float32 master weights, as train and "
                                            "adapt train them), else the weights' dtype; absent in older "
                                            "files.")


class MemoryPlanFile(MemoryPlan):
    """A :class:`MemoryPlan` as a config file: the same fields plus ``kind: memory-plan`` and the
    optional ``model`` it was chosen for."""

    kind: Literal["memory-plan"] = KIND
    model: PlanModel | None = Field(None, description="The model the plan was chosen for; absent in "
                                    "files written before it was recorded (then not checked).")
    batch_size: int | None = Field(None, ge=1, description="The effective batch the plan was chosen for "
                                   "(`memory estimate`'s default --batch-size); absent in older files.")
    budget_bytes: int | None = Field(None, ge=1, description="The memory budget (bytes) the plan was chosen "
                                     "for (`memory plan --budget`); absent in older files.")

    @model_validator(mode="after")
    def _within_recorded_model(self) -> MemoryPlanFile:
        """A file that records its model cannot ask for more blocks than that model has (caught by
        ``validate``, before any model loads)."""
        if self.model is not None:
            check_blocks(self, self.model.num_blocks, f"{self.model.name}, the model this plan records")
        return self

    def plan(self) -> MemoryPlan:
        """The knobs alone."""
        return MemoryPlan(**self.model_dump(exclude={"kind", "model", "batch_size", "budget_bytes"}))


def plan_model(adapter: Any, name: str | Path) -> PlanModel:
    """The :class:`PlanModel` of ``adapter`` (loaded from ``name``): its name (absolute when ``name`` is
    a local path, as typed for a built-in or hub name), family, block count, weight dtype (a half
    dtype when any parameter is half, :func:`~edgeadapt.numerics.floating_dtype`) and the dtype it
    trains in (:func:`~edgeadapt.memory.master.trained_dtype`: float32 master weights for bf16/fp16)."""
    from edgeadapt.memory.knobs import block_chain  # imports torch: `validate` of a plan file does not
    from edgeadapt.memory.master import trained_dtype
    from edgeadapt.numerics import floating_dtype

    def known(dtype: Any) -> str | None:
        text = str(dtype).removeprefix("torch.")
        return text if text in get_args(DtypeName) else None

    local = Path(name).expanduser()
    has_params = any(True for _ in adapter.model.parameters())
    return PlanModel(name=str(local.resolve()) if local.exists() else str(name),
                     family=str(getattr(adapter, "family", "unknown")),
                     num_blocks=len(block_chain(adapter).blocks),
                     dtype=known(floating_dtype(adapter.model)) if has_params else None,
                     trained_dtype=known(trained_dtype(adapter.model)) if has_params else None)


def load_plan_file(path: str | Path) -> MemoryPlanFile:
    """The plan file at ``path`` (JSON or YAML; ``kind`` optional, but ``memory-plan`` when given).
    Raises :class:`~edgeadapt.errors.ConfigError` naming the file and the field for a missing,
    unreadable or invalid file."""
    data = read_yaml(path)
    if isinstance(data, dict) and data.get("kind", KIND) != KIND:
        raise ConfigError(f"{path}: kind {data['kind']!r} is not a memory plan; give a file with "
                          f"kind: {KIND} (or no kind) and the fields of MemoryPlan")
    return cast(MemoryPlanFile, parse_config(data, kind=KIND, source=str(path)))


def load_plan(path: str | Path) -> MemoryPlan:
    """The knobs of the plan file at ``path`` (see :func:`load_plan_file`; ``model`` is dropped)."""
    return load_plan_file(path).plan()


def check_blocks(plan: MemoryPlan, blocks: int, model: str, prefix: str = "", fix: str = "") -> None:
    """Raise :class:`~edgeadapt.errors.ConfigError` (``prefix`` + the field, its value, the block
    count of ``model`` and the largest allowed value, then ``fix``) when ``plan`` freezes more than
    ``blocks`` blocks or checkpoints more segments than the blocks left trainable."""
    if plan.freeze_fraction is None and plan.freeze_blocks > blocks:
        raise ConfigError(f"{prefix}freeze_blocks {plan.freeze_blocks} exceeds the {blocks} blocks of "
                          f"{model}; use at most {blocks}{fix}")
    trainable = blocks - plan.frozen_blocks(blocks)
    if plan.checkpoint_segments > trainable:
        raise ConfigError(f"{prefix}checkpoint_segments {plan.checkpoint_segments} exceeds the {trainable} "
                          f"trainable blocks of {model} ({blocks} blocks, {blocks - trainable} frozen); use "
                          f"at most {trainable}")


def check_plan_fits(plan: MemoryPlanFile, adapter: Any, name: str, source: str = "plan") -> MemoryPlan:
    """The knobs of ``plan`` after checking them against ``adapter`` (loaded from ``name``).

    Raises :class:`~edgeadapt.errors.ConfigError` naming ``source``, the field, its value and the
    model's block count when ``freeze_blocks`` or ``checkpoint_segments`` asks for more blocks than
    the model has. Warns when the file records another model (another family or block count, or
    another weight dtype when it records one): the plan still applies, but its memory was chosen for
    that model. Also warns when the file records half-precision weights but no ``trained_dtype``:
    it was planned at that dtype, before planning followed training onto float32 master weights,
    so its figures under-predict the real peak (by about 1.9x)."""
    here = plan_model(adapter, name)
    blocks = here.num_blocks
    check_blocks(plan, blocks, name, f"{source}: ",
                 f", or plan for this model (`edgeadapt memory plan {name} --budget SIZE --save FILE`)")
    recorded = plan.model
    dtype = recorded is not None and recorded.dtype is not None and recorded.dtype != here.dtype
    if recorded is not None and (dtype or (recorded.family, recorded.num_blocks) != (here.family, blocks)):
        def kind(m: PlanModel) -> str:
            return f"{m.family}, {m.num_blocks} blocks" + (f", {m.dtype}" if dtype else "")
        warnings.warn(f"{source} was chosen for {recorded.name} ({kind(recorded)}), not {name} "
                      f"({kind(here)}): its "
                      f"memory figures do not carry over; plan for this model with `edgeadapt memory plan "
                      f"{name} --budget SIZE`", stacklevel=2)
    elif recorded is not None and recorded.dtype in HALF_NAMES and recorded.trained_dtype is None:
        warnings.warn(f"{source} was planned at {recorded.dtype} (it records no trained_dtype), but training "
                      f"runs on float32 master weights: its memory figures under-predict the real peak; "
                      f"plan again with `edgeadapt memory plan {name} --budget SIZE`", stacklevel=2)
    return plan.plan()


def check_micro_batch_size(plan: MemoryPlan, batch_size: int, field: str = "micro_batch_size",
                           batch_field: str = "batch size") -> None:
    """Refuse (:class:`~edgeadapt.errors.ConfigError`, naming ``field``, the values and the fix) a
    micro-batch size larger than the batch: it would ask for more rows than a batch has. A size that
    does not divide the batch is accepted, as ``train`` accepts it: the batch is split into
    ``ceil(batch / micro_batch_size)`` micro-batches, the last one smaller, whose losses are weighted
    by their share (the same gradient); the peak is that of the largest micro-batch."""
    mb = plan.micro_batch_size
    if mb is None or mb <= batch_size:
        return
    raise ConfigError(f"{field} {mb} is larger than the {batch_field} {batch_size}; use at most {batch_size} "
                      f"(or null: the whole batch in one pass)")


def micro_batch_sizes(plan: MemoryPlan, batch_size: int) -> list[int]:
    """The sizes of the micro-batches ``plan`` splits a batch of ``batch_size`` into (``[3, 3, 2]``
    for 3 of 8), in order; the first is the largest."""
    mb = min(plan.micro_batch_size or batch_size, batch_size)
    return [min(mb, batch_size - i) for i in range(0, batch_size, mb)]


def save_plan(plan: MemoryPlan, path: str | Path, model: PlanModel | None = None,
              batch_size: int | None = None, budget_bytes: int | None = None) -> Path:
    """Write ``plan`` atomically as JSON with ``kind: memory-plan`` (only the fields that differ from
    the defaults) and, when given, the ``model``, effective ``batch_size`` and memory ``budget_bytes``
    it was chosen for; returns the path."""
    path = Path(path)
    data: dict[str, Any] = {"kind": KIND}
    if model is not None:
        data["model"] = model.model_dump(exclude_none=True)
    if batch_size is not None:
        data["batch_size"] = int(batch_size)
    if budget_bytes is not None:
        data["budget_bytes"] = int(budget_bytes)
    data.update(MemoryPlan(**plan.model_dump()).model_dump(exclude_defaults=True))
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path
