"""``sar``: SAR (Niu et al., ICLR 2023, "Towards Stable Test-Time Adaptation in Dynamic Wild World").

Label-free by definition: on a ``labelled: true`` stream domain it ignores the labels and adapts as
on any other (it cannot learn new classes; ``full``/``static``/``edgeadapt`` train on them).

Sharpness-aware and reliable entropy minimisation on norm-layer affine parameters:

* reliable samples only: prediction entropy ``H(x) < E0`` (the paper's ``E0 = 0.4 · ln C``), the
  filter applied again after the perturbation, as in the official code;
* SAM (ρ = 0.05): the gradient ``g`` of the filtered mean entropy at θ gives the ascent
  ``ε = ρ · g / ‖g‖``; the gradient at ``θ + ε`` updates θ (two forward/backward passes per step);
* model recovery: an exponential moving average (0.9) of the second pass's entropy; when it falls
  below ``e_m`` (collapse: the model became confidently trivial) the adapted parameters are reset
  to the source model's exactly, the optimizer state is cleared and the average forgotten.

Which parameters: the norm affines of the lower blocks, skipping the top quarter (the official
code skips blocks 9–11 of ViT-B/16 and layer4 of ResNets) and norms outside the blocks (the final
norm). Thresholds for ``C`` classes: ``E0 = 0.4 · ln C`` and ``e_m = 0.2 · ln C / ln 1000`` (the
paper's 0.2 is for ImageNet's 1000 classes, ``ln 1000 = 6.9`` nats; for 10 classes 0.067, else a
well-trained digit classifier's honest confidence would already count as collapse). Overridable
through ``MethodContext.options["sar"]`` (:class:`SARConfig`). The base optimizer is the retraining
budget's AdamW, as for every method in the runner (the paper: SGD, momentum 0.9).
"""

from __future__ import annotations

import copy
import math

import torch
from pydantic import BaseModel, ConfigDict, Field

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import HFAdapter
from edgeadapt.online.losses import norm_parameters, sample_entropy
from edgeadapt.online.methods.base import MethodContext, MethodState, class_logits, entropy_scale

Batch = dict[str, torch.Tensor]


class SARConfig(BaseModel):
    """SAR's settings; ``None`` thresholds are derived from the class count (module docstring)."""

    model_config = ConfigDict(extra="forbid")

    e_margin: float | None = Field(None, gt=0, description="Reliable-entropy margin E0 (nats); default "
                                   "0.4·ln C.")
    rho: float = Field(0.05, gt=0, description="SAM neighbourhood radius ρ.")
    reset_below: float | None = Field(None, ge=0, description="Reset to the source when the entropy EMA "
                                      "falls below this (nats); default 0.2·ln C/ln 1000; 0 never resets.")
    ema: float = Field(0.9, ge=0, lt=1, description="Momentum of the entropy moving average.")
    skip_top: float = Field(0.25, ge=0, lt=1, description="Fraction of the top blocks whose norms stay "
                            "frozen.")


def sar_parameters(adapter: HFAdapter, skip_top: float = 0.25) -> list[str]:
    """Norm-affine parameter names of every block but the top ``⌊skip_top · n⌋`` of ``n`` (norms outside
    the blocks, such as the final norm, excluded); refuses a model where that selects nothing."""
    blocks = adapter.blocks()
    kept = blocks[:len(blocks) - int(skip_top * len(blocks))]
    prefixes = tuple(f"{b.module}." for b in kept)
    names = [n for n in norm_parameters(adapter) if n.startswith(prefixes)] if prefixes else []
    if not names:
        raise ConfigError("methods: 'sar' found no norm-layer parameters in the model's lower blocks")
    return names


class SARStep:
    """SAR's update (a :data:`~edgeadapt.online.retrain.StepFn`) with its recovery state.

    ``source`` maps the adapted parameter names to their source values (restored exactly on a
    reset); ``ema`` is the entropy moving average (``None`` after a reset) and ``resets`` counts them."""

    def __init__(self, source: dict[str, torch.Tensor], e_margin: float, rho: float = 0.05,
                 reset_below: float = 0.2, ema_momentum: float = 0.9) -> None:
        self.source = {n: v.detach().clone() for n, v in source.items()}
        self.e_margin, self.rho, self.reset_below, self.momentum = e_margin, rho, reset_below, ema_momentum
        self.ema: float | None = None
        self.resets = 0

    def __call__(self, adapter: HFAdapter, batch: Batch, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        ent = sample_entropy(class_logits(adapter, batch))
        keep = ent.detach() < self.e_margin
        if not keep.any():  # nothing reliable: no update
            return ent.mean().detach()
        ent[keep].mean().backward()
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        saved = self._ascend(params)
        optimizer.zero_grad(set_to_none=True)
        ent2 = sample_entropy(class_logits(adapter, batch))[keep]
        keep2 = ent2.detach() < self.e_margin
        loss = ent2[keep2].mean() if keep2.any() else ent2.mean()
        if keep2.any():
            loss.backward()  # the gradient at θ + ε
        with torch.no_grad():
            for p, old in zip(params, saved):
                p.copy_(old)
        if keep2.any():
            optimizer.step()
            value = float(loss.detach())
            self.ema = value if self.ema is None else self.momentum * self.ema + (1 - self.momentum) * value
        optimizer.zero_grad(set_to_none=True)
        if self.ema is not None and self.ema < self.reset_below:
            self.reset(adapter, optimizer)
        return loss.detach()

    def _ascend(self, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
        """Move θ to θ + ρ·g/‖g‖ in place; returns θ's values to restore."""
        saved = [p.detach().clone() for p in params]
        if not params:
            return saved
        device = params[0].device
        norm = torch.norm(torch.stack([p.grad.detach().float().norm(2).to(device) for p in params]), 2)
        scale = self.rho / (norm + 1e-12)
        with torch.no_grad():
            for p in params:
                p.add_(p.grad * scale.to(p))
        return saved

    def reset(self, adapter: HFAdapter, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Restore the adapted parameters to the source values exactly, clear the optimizer state and
        forget the entropy average."""
        params = dict(adapter.model.named_parameters())
        with torch.no_grad():
            for n, v in self.source.items():
                params[n].copy_(v)
        if optimizer is not None:
            optimizer.state.clear()
        self.ema = None
        self.resets += 1


def sar(ctx: MethodContext) -> MethodState:
    """A copy of ``ctx.fm`` adapted continually by SAR (see the module docstring)."""
    classes = ctx.num_classes("sar")
    cfg = SARConfig(**ctx.options.get("sar", {}))
    model = copy.deepcopy(ctx.fm)
    names = sar_parameters(model, cfg.skip_top)
    params = dict(model.model.named_parameters())
    step = SARStep({n: params[n] for n in names},
                   0.4 * math.log(classes) if cfg.e_margin is None else cfg.e_margin, cfg.rho,
                   0.2 * entropy_scale(classes) if cfg.reset_below is None else cfg.reset_below, cfg.ema)
    return MethodState("sar", lambda d, m=model: m, None, trainable=names, step=lambda _a: step)

