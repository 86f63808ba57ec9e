"""A label-free safeguard: keep the adapted model only if the unlabeled window says it is no worse.

An edge device cannot check labels, yet adaptation can hurt (a heavy corruption where aligning to
the source features pulls the model the wrong way). After a domain's retraining, :func:`judge`
scores the *adapted* model and the *previous* one (the model before this domain's retraining) on
the same unlabeled window and accepts the update unless the window argues against it. Both
criteria come from the label-free accuracy-estimation literature:

- **collapse** — the entropy of the mean prediction over the window (the *marginal* entropy,
  SHOT's diversity term; EATA/SAR watch the same failure). A model pushed toward one class has a
  marginal entropy near 0. The update is rejected when the adapted model's marginal entropy falls
  below ``collapse_ratio`` × the previous model's.
- **consistency** — how often the prediction survives a weak augmentation of the input (a random
  shift by up to ``shift`` pixels; for images only). Invariance to such nuisances tracks accuracy
  under shift (Deng et al. 2022, "On the strong correlation between model invariance and
  generalization"; Aithal et al. 2021, "Label-free model selection"); a collapsed model is
  trivially consistent, which is why collapse is checked first. The update is rejected when the
  adapted model's consistency is below the previous model's by more than ``margin``.

Also recorded, not decided on: the mean prediction entropy of each model (TENT's objective —
low entropy does not imply accuracy, a collapsed model is maximally confident), the agreement of
each model with an optional ``reference`` (the source FM), and the agreement of the two models.

Cost: a few no-grad forwards on at most ``max_samples`` window samples per model (about
``3 × max_samples / steps·batch`` of a retraining's forwards), and the previous model's weights.

>>> verdict = judge(adapted, previous, window, SafeguardConfig())   # doctest: +SKIP
>>> verdict.accepted, verdict.row()                                  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from edgeadapt.models.adapter import ModelAdapter

Batch = dict[str, torch.Tensor]

__all__ = ["SafeguardConfig", "Verdict", "judge", "window_scores"]


class SafeguardConfig(BaseModel):
    """Settings of :func:`judge` (``method_options: {edgeadapt: {safeguard: {...}}}``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run the safeguard after each domain's retraining.")
    enforce: bool = Field(True, description="Act on the verdict; False only records the criteria "
                          "(every update accepted), for measuring them.")
    collapse_ratio: float = Field(0.8, ge=0, le=1, description="Reject when the adapted model's marginal "
                                  "prediction entropy is below this fraction of the previous model's.")
    margin: float = Field(0.0, ge=0, le=1, description="Reject when the adapted model's augmentation "
                          "consistency (a fraction of samples) is below the previous model's by more "
                          "than this.")
    shift: int = Field(1, ge=0, description="Weak augmentation for consistency: a random shift by up to "
                       "this many pixels (edge-replicated); 0 turns the consistency criterion off.")
    max_samples: int = Field(512, ge=1, description="Window samples scored (the first ones).")
    seed: int = Field(0, description="Seeds the augmentation, so both models see the same shifts.")


@dataclass
class Verdict:
    """The safeguard's decision and the criterion values it was taken on (per model)."""

    accepted: bool
    reason: str
    adapted: dict[str, float]
    previous: dict[str, float]
    extra: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """Flat fields for a per-domain result row: ``safeguard`` (``accepted``/``rejected``),
        ``safeguard_reason``, and ``safeguard_<criterion>_adapted``/``_previous``."""
        out: dict[str, Any] = {"safeguard": "accepted" if self.accepted else "rejected",
                               "safeguard_reason": self.reason}
        for who, values in (("adapted", self.adapted), ("previous", self.previous)):
            out.update({f"safeguard_{k}_{who}": v for k, v in values.items()})
        out.update({f"safeguard_{k}": v for k, v in self.extra.items()})
        return out


def _take(window: Iterable[Batch], max_samples: int) -> list[Batch]:
    """The first ``max_samples`` samples of ``window``, labels dropped (the edge has none)."""
    out, n = [], 0
    for batch in window:
        batch = {k: v for k, v in batch.items() if k != "labels"}
        size = len(next(iter(batch.values())))
        if n + size > max_samples:
            batch = {k: v[:max_samples - n] for k, v in batch.items()}
        out.append(batch)
        n += len(next(iter(batch.values())))
        if n >= max_samples:
            break
    return out


def _shifted(batch: Batch, shift: int, g: torch.Generator) -> Batch | None:
    """``batch`` with every image (a float ``[B, C, H, W]`` entry) shifted by a random offset in
    ``[-shift, shift]`` per axis, edges replicated; ``None`` when the batch holds no image."""
    keys = [k for k, v in batch.items() if v.dim() == 4 and v.is_floating_point()]
    if not keys or shift <= 0:
        return None
    out = dict(batch)
    for k in keys:
        x = batch[k]
        h, w = x.shape[-2:]
        padded = F.pad(x, (shift,) * 4, mode="replicate")
        dy, dx = (int(v) for v in torch.randint(0, 2 * shift + 1, (2,), generator=g))
        out[k] = padded[..., dy:dy + h, dx:dx + w]
    return out


@torch.no_grad()
def _probs(model: ModelAdapter, batches: list[Batch]) -> torch.Tensor:
    """Softmax class probabilities ``[N, C]`` of ``model`` (eval mode, restored after) over ``batches``."""
    was = model.model.training
    model.model.eval()
    device = next(model.model.parameters()).device
    try:
        out = [F.softmax(model.logits({k: v.to(device) for k, v in b.items()}).float(), dim=-1).cpu()
               for b in batches]
    finally:
        model.model.train(was)
    return torch.cat(out)


def window_scores(model: ModelAdapter, batches: list[Batch], shifted: list[Batch] | None,
                  reference: torch.Tensor | None = None) -> tuple[dict[str, float], torch.Tensor]:
    """The criteria of one model on the window: ``entropy`` (mean per-sample prediction entropy, nats),
    ``marginal_entropy`` (entropy of the mean prediction, nats), ``consistency`` (fraction of samples
    whose argmax survives the shift; with ``shifted``) and ``agreement_ref`` (fraction agreeing with
    the ``reference`` predictions ``[N]``). Returns them and the model's predictions ``[N]``."""
    p = _probs(model, batches)
    pred = p.argmax(-1)
    values = {"entropy": float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean()),
              "marginal_entropy": float(-(p.mean(0) * p.mean(0).clamp_min(1e-12).log()).sum())}
    if shifted is not None:
        values["consistency"] = float((_probs(model, shifted).argmax(-1) == pred).float().mean())
    if reference is not None:
        values["agreement_ref"] = float((pred == reference).float().mean())
    return values, pred


def judge(adapted: ModelAdapter, previous: ModelAdapter, window: Iterable[Batch],
          cfg: SafeguardConfig | None = None, reference: ModelAdapter | None = None) -> Verdict:
    """Accept or reject the update ``previous → adapted`` from an unlabeled ``window`` of batches.

    Rejected when the adapted model collapses (marginal entropy below ``collapse_ratio`` × the
    previous model's) or loses augmentation consistency (below the previous model's by more than
    ``margin``); otherwise accepted. ``reference`` (e.g. the source FM) only adds the recorded
    ``agreement_ref`` values. With ``cfg.enforce`` False the verdict is always ``accepted`` (the
    criteria and the would-be ``reason`` are still recorded). An empty window accepts (nothing to
    judge on). Classifiers only: the models' ``logits`` must be ``[B, C]`` class logits."""
    cfg = cfg or SafeguardConfig()
    batches = _take(window, cfg.max_samples)
    if not batches:
        return Verdict(True, "empty window", {}, {})
    g = torch.Generator().manual_seed(cfg.seed)
    shifted = [_shifted(b, cfg.shift, g) for b in batches]
    shifted = None if any(s is None for s in shifted) else shifted
    ref = _probs(reference, batches).argmax(-1) if reference is not None else None
    a, pred_a = window_scores(adapted, batches, shifted, ref)
    p, pred_p = window_scores(previous, batches, shifted, ref)
    extra = {"agreement": float((pred_a == pred_p).float().mean())}
    reason = "no worse on the window"
    if a["marginal_entropy"] < cfg.collapse_ratio * p["marginal_entropy"] or not math.isfinite(a["entropy"]):
        reason = "collapse: marginal entropy fell"
    elif "consistency" in a and a["consistency"] < p["consistency"] - cfg.margin:
        reason = "consistency under shift fell"
    accepted = reason == "no worse on the window" or not cfg.enforce
    return Verdict(accepted, reason, a, p, extra)
