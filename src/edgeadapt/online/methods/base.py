"""What every adaptation method is made of: the state the stream runner carries for it from domain
to domain (:class:`MethodState`) and what a method factory is built from (:class:`MethodContext`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from edgeadapt.data.stream import DomainData
from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import HFAdapter, ModelAdapter
from edgeadapt.online.lm_losses import (
    EncoderAdaptLossConfig,
    LMAdaptLossConfig,
    encoder_adaptation_loss,
    lm_adaptation_loss,
)
from edgeadapt.online.losses import AdaptLossConfig, LossFn, adaptation_loss
from edgeadapt.online.retrain import RetrainBudget, StepFn


@dataclass
class MethodState:
    """What one method carries from domain to domain.

    ``prepare(domain)`` returns the model to adapt and score on that domain; ``loss(model)`` builds
    the adaptation loss for it (``None``: not adapted), or ``step(model)`` builds a whole update
    (:data:`~edgeadapt.online.retrain.StepFn`) for methods whose update is more than one backward
    (SAR) or may be skipped (EATA); ``finish(model)`` runs after scoring (e.g. sync the proxy back)."""

    name: str
    prepare: Callable[[DomainData], HFAdapter]          # the model to adapt on this domain
    loss: Callable[[HFAdapter], LossFn] | None           # adaptation loss factory (None: no adaptation)
    trainable: str | list[str] = "all"                    # a set name of set_trainable, or parameter names
    finish: Callable[[HFAdapter], None] = lambda _a: None  # e.g. sync the proxy back
    constrained: bool = False                            # runs under the edge budget's memory measures
    rows: list[dict[str, Any]] = field(default_factory=list)
    step: Callable[[HFAdapter], StepFn] | None = None     # the method's own update (instead of ``loss``)
    # after retraining, before scoring: ``settle(model, window)`` returns the model to keep (the adapted
    # one or the previous one, e.g. a label-free safeguard, edgeadapt.online.safeguard) from an unlabeled
    # window; what it records for the domain's row goes into ``notes`` (the runner moves it there)
    settle: Callable[[HFAdapter, Iterable[dict[str, torch.Tensor]]], HFAdapter] | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def adapts(self) -> bool:
        """Whether the method retrains at all (``source`` does not)."""
        return self.loss is not None or self.step is not None


@dataclass
class MethodContext:
    """Everything a method factory may build from; each factory takes only what it needs.

    ``fm`` is the foundation (source) model, ``kb`` the knowledge base, ``stats`` the
    :class:`~edgeadapt.online.losses.SourceStats` the edge keeps (feature bank, class prior, replay
    buffer), ``loss_cfg`` our :class:`~edgeadapt.online.losses.AdaptLossConfig`, ``width`` the proxy
    width, ``static_model`` builds the statically pruned baseline, ``trainable`` is what our loss
    retrains, ``budget`` the per-domain retraining budget, and ``options`` per-method settings by
    method name (e.g. ``{"eata": {"d_margin": 0.4}}``)."""

    fm: HFAdapter
    kb: Any = None
    stats: Any = None
    loss_cfg: Any = None
    width: float = 1.0
    static_model: Callable[[], HFAdapter] | None = None
    trainable: str | list[str] = "all"
    budget: RetrainBudget | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def num_classes(self, method: str) -> int:
        """The classifier's class count (the width of its logits); methods that filter by prediction
        entropy need it and refuse a model without class logits."""
        head = self.fm.head()
        n = None
        if head is not None:  # HF: config.num_labels; a custom model has no config: the head's width
            n = getattr(getattr(self.fm.model, "config", None), "num_labels", None) or \
                getattr(self.fm.model.get_submodule(head), "out_features", None)
        if self.fm.head() is None or not n or getattr(self.fm.task, "name", "") != "classification":
            raise ConfigError(f"methods: {method!r} adapts classifiers (it filters samples by prediction "
                              f"entropy); this model's task is {getattr(self.fm.task, 'name', '?')!r}")
        return int(n)


def entropy_scale(num_classes: int) -> float:
    """``ln C / ln 1000``: EATA and SAR set their entropy thresholds for ImageNet's 1000 classes;
    multiplying by this keeps a threshold at the same fraction of the maximum entropy ``ln C``."""
    return math.log(num_classes) / math.log(1000)


def class_logits(adapter: ModelAdapter, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Class logits ``[B, C]`` of one forward of ``adapter`` on ``batch`` (``adapter.logits``: any
    :class:`~edgeadapt.models.adapter.ModelAdapter`, custom models included)."""
    return adapter.logits(batch)


def loss_config_for(task: str | None, fields: Any = None) -> Any:
    """The config of our adaptation loss for a model whose task is named ``task``, from ``fields``
    (a mapping, or a config instance passed through): :class:`~edgeadapt.online.lm_losses.LMAdaptLossConfig`
    for a causal LM, :class:`~edgeadapt.online.lm_losses.EncoderAdaptLossConfig` for a sentence
    encoder, :class:`~edgeadapt.online.losses.AdaptLossConfig` otherwise. Unknown fields for that
    task are a :class:`~edgeadapt.errors.ConfigError` naming the task."""
    cls = {"causal-lm": LMAdaptLossConfig, "sentence-embedding": EncoderAdaptLossConfig}.get(task or "",
                                                                                             AdaptLossConfig)
    if isinstance(fields, BaseModel):
        if not isinstance(fields, cls):
            raise ConfigError(f"loss: a {type(fields).__name__} was given but a {task!r} model adapts with "
                              f"{cls.__name__}")
        return fields
    try:
        return cls(**dict(fields or {}))
    except ValidationError as exc:
        bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"loss: {bad} (a {task!r} model adapts with {cls.__name__}: fields "
                          f"{', '.join(cls.model_fields)})") from None


def our_loss(ctx: MethodContext) -> Callable[[Any], Any]:
    """Our adaptation loss for ``ctx.fm``'s task, as the factory a :class:`MethodState` takes
    (``adapter -> loss_fn``): next-token loss + distillation from the FM + source-text replay for a
    causal LM (:func:`~edgeadapt.online.lm_losses.lm_adaptation_loss`), MMD (+ masked tokens) for a
    sentence encoder, and MMD + diversity + replay for a classifier
    (:func:`~edgeadapt.online.losses.adaptation_loss`).

    A classifier's loss is built with ``supervised=True``: on a batch that carries labels — the
    runner keeps them only on a ``labelled`` stream domain (new classes or a new task) — it trains on
    the task loss, cross-entropy, plus the same source replay; on unlabeled batches it is the
    unsupervised loss above. The stream's ``labelled:`` flag is the switch; ``supervised`` in the
    loss config matters only where :func:`~edgeadapt.online.losses.adaptation_loss` is called
    directly."""
    cfg = ctx.loss_cfg
    if isinstance(cfg, LMAdaptLossConfig):
        replay = ctx.stats.replay if ctx.stats is not None else None
        size = ctx.budget.batch_size if ctx.budget is not None else 8
        source = []
        if replay:
            n = len(next(iter(replay.values())))
            source = [{k: v[i:i + size] for k, v in replay.items()} for i in range(0, n, size)]
        teacher = ctx.fm  # the frozen source FM, evaluated without gradients
        return lambda a: lm_adaptation_loss(a, source, cfg, teacher=teacher)
    if isinstance(cfg, EncoderAdaptLossConfig):
        return lambda a: encoder_adaptation_loss(a, ctx.stats, cfg)
    labelled = (cfg or AdaptLossConfig()).model_copy(update={"supervised": True})
    teacher = ctx.fm if labelled.distill else None  # the frozen source FM, evaluated without gradients
    return lambda a: adaptation_loss(a, ctx.stats, labelled, teacher=teacher)
