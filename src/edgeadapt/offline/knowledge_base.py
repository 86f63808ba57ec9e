"""The elastic knowledge base (KB): one set of weights from which any width can be cut.

Building it from a foundation model (FM):

1. **Joint importance** per group from source data (a head's q/k/v rows and o columns together;
   an FFN neuron's input-projection rows and output-projection column), second-order Taylor
   (``fisher``: the per-sample squared group term) by default, via
   :mod:`edgeadapt.pruning.importance`.
2. **Reorder** every block's heads and neurons by descending importance, so every prefix width is
   a valid sub-model. The permutation is the :class:`~edgeadapt.offline.neuron_index.NeuronIndex`.
3. **Gates** (:mod:`edgeadapt.offline.gates`): per block, an input-dependent saliency per head and
   neuron; k-winners-take-all at a width keeps the top fraction and scales it.
4. **Sandwich training** through the shared loop: every step runs the smallest width, two random
   widths and the full width, each with distillation from the frozen FM (logits and features),
   the task loss on source labels, and an L1 penalty on the gate values.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.offline.gates import GateSet
from edgeadapt.offline.neuron_index import NeuronIndex, build_index, to_kb
from edgeadapt.pruning.importance import check_importance, score
from edgeadapt.training.config import TrainConfig
from edgeadapt.training.loop import TrainResult, fit

Batch = dict[str, torch.Tensor]


class KBSettings(BaseModel):
    """How the knowledge base is built."""

    model_config = ConfigDict(extra="forbid")

    importance: str = Field("fisher", description="Group importance used to order units: fisher "
                            "(second-order Taylor, per-sample squared group term; the default), taylor "
                            "(first-order |w·g|), magnitude, magnitude-l2, activation (names as in "
                            "edgeadapt.pruning.importance.IMPORTANCES).")
    calibration_batches: int = Field(8, ge=1, description="Source batches for data-aware importance.")
    min_width: float = Field(0.25, gt=0, le=1, description="Smallest width trained (sandwich lower end).")
    random_widths: int = Field(2, ge=0, description="Random widths per step between min_width and 1.")
    bottleneck: int = Field(16, ge=1, description="Hidden size of each block's gate MLP.")
    pooling: Literal["batch", "sample"] = Field("batch", description="Gate selection per batch (what proxy "
                                                "extraction does for a window) or per sample.")
    distill_logits: float = Field(1.0, ge=0, description="Weight of logit distillation (KL at temperature).")
    distill_features: float = Field(1.0, ge=0, description="Weight of feature distillation (normalised MSE).")
    task_weight: float = Field(1.0, ge=0, description="Weight of the task loss on source labels.")
    gate_l1: float = Field(1e-3, ge=0, description="L1 penalty on gate values (sparser saliency).")
    temperature: float = Field(2.0, gt=0, description="Distillation temperature.")

    @field_validator("importance")
    @classmethod
    def _known_importance(cls, value: str) -> str:
        return check_importance(value)


def check_width(width: float) -> float:
    """A width must be a fraction in (0, 1]."""
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not 0 < width <= 1:
        raise ConfigError(f"width must be a fraction in (0, 1], got {width!r}")
    return float(width)


def outputs(adapter: ModelAdapter, batch: Batch) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Logits (None for encoders) and features (the head's input, or the pooled embedding) of one
    forward, through the adapter's :meth:`~edgeadapt.models.adapter.ModelAdapter.logits`."""
    head = adapter.head()
    if head is None:
        return None, adapter.features(batch)
    captured: list[torch.Tensor] = []
    handle = adapter.model.get_submodule(head).register_forward_pre_hook(lambda _m, a: captured.append(a[0]))
    try:
        logits = adapter.logits(batch)
    finally:
        handle.remove()
    return logits, captured[0]


def distill_loss(student: tuple, teacher: tuple, batch: Batch, s: KBSettings) -> torch.Tensor:
    """KL on logits at temperature (per token for LMs, padding masked) + normalised feature MSE."""
    # in float32: the teacher may run in a bf16/fp16 checkpoint's dtype, the student on float32 master
    # weights or under autocast, and a KL or normalised MSE summed in half precision loses digits
    (s_logits, s_feat), (t_logits, t_feat) = student, teacher
    s_feat, t_feat = s_feat.float(), t_feat.float()
    if s_logits is not None and t_logits is not None:
        s_logits, t_logits = s_logits.float(), t_logits.float()
    loss = s.distill_features * F.mse_loss(s_feat, t_feat) / t_feat.pow(2).mean().clamp_min(1e-8)
    if s_logits is not None and s.distill_logits > 0:
        T = s.temperature
        kl = F.kl_div(F.log_softmax(s_logits / T, -1), F.log_softmax(t_logits / T, -1), log_target=True,
                      reduction="none").sum(-1) * T * T
        mask = batch.get("attention_mask")
        if kl.dim() == 2 and mask is not None:
            kl = (kl * mask).sum() / mask.sum().clamp_min(1)
        loss = loss + s.distill_logits * kl.mean()
    return loss


class KnowledgeBase:
    """A reordered FM plus gates; ``width`` selects how much of every block runs."""

    def __init__(self, adapter: ModelAdapter, gates: GateSet, index: NeuronIndex, settings: KBSettings):
        self.adapter, self.gates, self.index, self.settings = adapter, gates, index, settings
        gates.attach(adapter)

    def set_width(self, width: float) -> None:
        self.gates.width = check_width(width)

    def evaluate(self, batches: Iterable[Batch], width: float = 1.0) -> dict[str, float]:
        """The task metric at ``width`` with input-dependent gating."""
        self.set_width(width)
        self.gates.eval()
        try:
            return self.adapter.evaluate(batches)
        finally:
            self.set_width(1.0)

    def sandwich_loss(self, teacher: ModelAdapter) -> Callable[[ModelAdapter, Batch], torch.Tensor]:
        """The training loss for :func:`edgeadapt.training.loop.fit`: smallest, random and full
        widths per step, each distilled from ``teacher`` plus task loss and gate L1.

        The random widths are drawn from Python's ``random``, which :func:`fit` seeds with
        ``cfg.seed`` on a private copy and saves in every checkpoint, so a killed and resumed build
        draws the same widths as an uninterrupted one (a generator created here restarted its
        sequence at every resume)."""
        s = self.settings

        def loss_fn(adapter: ModelAdapter, batch: Batch) -> torch.Tensor:
            device = next(adapter.model.parameters()).device
            teacher.model.to(device)
            with torch.no_grad():
                target = outputs(teacher, batch)
            widths = [s.min_width, *(random.uniform(s.min_width, 1.0) for _ in range(s.random_widths)), 1.0]
            total = torch.zeros((), device=device)
            for w in widths:
                self.gates.width = w
                student = outputs(adapter, batch)
                term = distill_loss(student, target, batch, s) + s.gate_l1 * self.gates.l1()
                if s.task_weight > 0:
                    term = term + s.task_weight * _task_loss(adapter, student[0], batch)
                total = total + term
            self.gates.width = 1.0
            return total / len(widths)

        return loss_fn


def _task_loss(adapter: ModelAdapter, logits: torch.Tensor | None, batch: Batch) -> torch.Tensor:
    """Task loss reusing the logits already computed (a second forward only for encoders)."""
    name = adapter.task.name
    if name == "classification" and "labels" in batch:
        return F.cross_entropy(logits, batch["labels"])
    if name == "causal-lm":
        mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
        labels = batch["input_ids"].masked_fill(mask == 0, -100)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                               ignore_index=-100)
    return adapter.task_loss(batch)


def init_kb(fm: ModelAdapter, calibration: list[Batch], settings: KBSettings, seed: int = 0) -> KnowledgeBase:
    """Score the FM's groups on ``calibration`` data, reorder into KB order and add saturated gates
    (no training yet: at full width it computes exactly what the FM computes)."""
    data_free = settings.importance in ("magnitude", "magnitude-l2")
    scores = score(fm, settings.importance, None if data_free else calibration)
    index = build_index(fm, scores)
    kb_adapter = to_kb(fm, index)
    gates = GateSet(kb_adapter, settings.bottleneck, settings.pooling, seed)
    return KnowledgeBase(kb_adapter, gates, index, settings)


def build_kb(fm: ModelAdapter, train: Callable[[int], Iterable[Batch]], cfg: TrainConfig,
             settings: KBSettings, calibration: list[Batch], val: Callable[[], Iterable[Batch]] | None = None,
             monitor: str = "loss", logger: Any = None,
             checkpoint_dir: Any = None) -> tuple[KnowledgeBase, TrainResult]:
    """Initialise the KB from ``fm`` and train it with the sandwich rule through the shared loop.
    Validation (when given) scores the smallest trained width, the one most at risk."""
    kb = init_kb(fm, calibration, settings, seed=cfg.seed)
    teacher = copy.deepcopy(fm)
    teacher.model.eval().requires_grad_(False)

    def evaluate() -> dict[str, float]:
        return kb.evaluate(val(), width=settings.min_width)

    result = fit(kb.adapter, train, cfg, monitor=monitor, loss_fn=kb.sandwich_loss(teacher),
                 evaluate=evaluate if val is not None else None, logger=logger,
                 checkpoint_dir=checkpoint_dir, modules=[kb.gates])
    kb.adapter.model.cpu()
    kb.gates.cpu()
    return kb, result


def units_at(width: float, n: int) -> int:
    """How many of ``n`` units a width keeps (at least one)."""
    return max(1, math.ceil(check_width(width) * n - 1e-9))
