"""A label-free safeguard: keep the adapted model only if the unlabeled window says it is no worse.

An edge device cannot check labels, yet adaptation can hurt: on domains close to the source data
(light noise, snow at severity 3, saturation, JPEG) retraining with our loss costs 1-5 points
against not adapting. After a domain's retraining, :func:`judge` scores the *adapted* model and
the *previous* one (the model before this domain's retraining) on the same unlabeled window and
keeps the update unless one of two label-free rules rejects it:

- **collapse** — the entropy of the mean prediction over the window (the *marginal* entropy,
  SHOT's diversity term; EATA and SAR guard against the same failure). A model pushed toward one
  class has a marginal entropy near 0: rejected when the adapted model's falls below
  ``collapse_ratio`` × the previous model's.
- **no shift** — the previous model's mean prediction entropy on the window is at most
  ``confident`` × ln C: the window looks like source data to it (the entropy-as-shift-signal of
  EATA's reliable-sample filter and of confidence-based accuracy estimation, Garg et al. 2022
  "ATC"), so there is little to gain and the update is dropped. The default 0.025 × ln C
  (0.058 nats for 10 classes) was read off recorded runs of the default, unseen-corruptions and
  severe streams (the harmful updates all had a previous entropy of 0.046-0.056 nats, the
  helpful ones mostly above 0.06), then checked on another knowledge base and on random orders.

Recorded for every domain, and optional as a rule: **consistency** — how often the prediction
survives a weak augmentation (a random shift by up to ``shift`` pixels; images only), which tracks
accuracy under shift in Deng et al. 2022 ("On the strong correlation between model invariance and
generalization"). With ``margin`` set, an update losing more than ``margin`` consistency is
rejected; off by default because on 16×16 digits it would have rejected the largest gains (fog,
contrast: +6 to +36 points). Also recorded: each model's mean entropy, its agreement with an
optional ``reference`` (the source FM), and the two models' agreement.

Cost: no-grad forwards of both models (and the reference) on at most ``max_samples`` window
samples, three times with the shifted copies, and a copy of the previous model's weights.

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
    margin: float | None = Field(None, ge=0, le=1, description="Reject when the adapted model's "
                                 "augmentation consistency (a fraction of samples) is below the previous "
                                 "model's by more than this; None: recorded, not decided on.")
    confident: float = Field(0.025, ge=0, le=1, description="Reject when the previous model's mean "
                             "prediction entropy on the window is at most this fraction of ln C (C "
                             "classes): it is already as sure as on source data, so the update has little "
                             "to gain and can only lose; 0 turns it off.")
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
    the ``reference`` predictions ``[N]``). Returns them and the model's probabilities ``[N, C]``."""
    p = _probs(model, batches)
    pred = p.argmax(-1)
    values = {"entropy": float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean()),
              "marginal_entropy": float(-(p.mean(0) * p.mean(0).clamp_min(1e-12).log()).sum())}
    if shifted is not None:
        values["consistency"] = float((_probs(model, shifted).argmax(-1) == pred).float().mean())
    if reference is not None:
        values["agreement_ref"] = float((pred == reference).float().mean())
    return values, p


def judge(adapted: ModelAdapter, previous: ModelAdapter, window: Iterable[Batch],
          cfg: SafeguardConfig | None = None, reference: ModelAdapter | None = None) -> Verdict:
    """Accept or reject the update ``previous → adapted`` from an unlabeled ``window`` of batches.

    Rejected when the adapted model collapses (marginal entropy below ``collapse_ratio`` × the
    previous model's), loses augmentation consistency (below the previous model's by more than
    ``margin``, when set), or the previous model is already confident on the window (mean entropy
    at most ``confident`` × ln C: no shift worth adapting to); otherwise accepted. ``reference``
    (e.g. the source FM) only adds the recorded ``agreement_ref`` values. With ``cfg.enforce``
    False the verdict is always ``accepted`` (the criteria and the would-be ``reason`` are still
    recorded). An empty window accepts (nothing to judge on). Classifiers only: the models'
    ``logits`` must be ``[B, C]`` class logits."""
    cfg = cfg or SafeguardConfig()
    batches = _take(window, cfg.max_samples)
    if not batches:
        return Verdict(True, "empty window", {}, {})
    g = torch.Generator().manual_seed(cfg.seed)
    shifted = [_shifted(b, cfg.shift, g) for b in batches]
    shifted = None if any(s is None for s in shifted) else shifted
    ref = _probs(reference, batches).argmax(-1) if reference is not None else None
    a, probs_a = window_scores(adapted, batches, shifted, ref)
    p, probs_p = window_scores(previous, batches, shifted, ref)
    extra = {"agreement": float((probs_a.argmax(-1) == probs_p.argmax(-1)).float().mean())}
    reason = "no worse on the window"
    if a["marginal_entropy"] < cfg.collapse_ratio * p["marginal_entropy"] or not math.isfinite(a["entropy"]):
        reason = "collapse: marginal entropy fell"
    elif cfg.margin is not None and "consistency" in a and a["consistency"] < p["consistency"] - cfg.margin:
        reason = "consistency under shift fell"
    elif p["entropy"] <= cfg.confident * math.log(max(probs_p.shape[-1], 2)):
        reason = "no shift: the previous model is already confident"
    accepted = reason == "no worse on the window" or not cfg.enforce
    return Verdict(accepted, reason, a, p, extra)
