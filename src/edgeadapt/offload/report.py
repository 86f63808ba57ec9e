"""What ``edgeadapt offload run`` reports (:class:`OffloadReport`): accuracy, latency per request,
payload and probe bytes, the placement and its changes, fallbacks and reconnects; ``summary()`` is
the human text, ``to_dict()`` the ``--json`` object."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class OffloadReport:
    """What ``offload run`` prints: accuracy, latency per request (ms), bytes, the split or the
    placement (per block: width and device), re-plans, the link."""

    model: str
    server: str
    data: str
    split: int | None
    blocks: int
    split_after: str | None
    mode: str
    fallback: dict[str, Any] | None
    samples: int
    requests: int
    batch_size: int
    accuracy: float
    latency_ms: dict[str, float]
    bytes_sent: int
    """``Run`` frames sent (activations; the payload). Link probes are in :attr:`probe_bytes`."""
    bytes_received: int
    rtt_ms: float | None
    bandwidth_mbps: float | None
    requests_by_mode: dict[str, int] = field(default_factory=dict)
    """Requests that ran ``edge-only``, ``split`` and ``cloud-only`` (by where their blocks ran)."""
    probe_bytes: dict[str, int] = field(default_factory=dict)
    """``sent`` and ``received`` by the ``Info``, ``Ping`` and ``Echo`` calls that measure the link."""
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    """Every fall back to edge-only: ``at_request``, ``reason`` (``fallback`` is the first)."""
    reconnects: list[dict[str, Any]] = field(default_factory=list)
    """Every return to the server after a fallback: ``at_request``, ``down_s`` (seconds since the
    fallback), ``tries``."""
    replan_checks: int = 0
    """Re-solves after the first plan that kept the placement (link moved, placement not better)."""
    started_at: float | None = None
    """When the first request was sent (``time.time()``, epoch seconds): replans' ``at_s`` count from it."""
    exit_block: int | None = None
    """The early exit the placement in force at the end stops at (block index from 0, its head after
    that block), ``None``: the whole chain (always with ``--split`` or ``--no-exits``)."""
    requests_by_exit: dict[str, int] = field(default_factory=dict)
    """Requests per end of the chain they ran to: ``"full"`` or ``"exit-{e}"``."""
    floor_met: bool | None = None
    """With ``--floor``: whether the measured :attr:`accuracy` reaches it (the plan meets it on the
    profile's val accuracy, not on this split); ``None`` without a floor."""
    placement: dict[str, Any] | None = None
    """The placement in force at the end: ``blocks`` (per block that runs: ``block``, ``width``,
    ``device``), ``exit_block`` and ``exit_device`` (where the exit head ran; ``None`` without an
    exit), and with ``floor`` the ``exits`` it could end at, the plan's ``floor``,
    ``predicted_accuracy``, ``predicted_latency_ms``, the ``link`` it was solved for, the ``devices``
    (profiles) and the profile's ``batch_size``."""
    replans: list[dict[str, Any]] = field(default_factory=list)
    """Every placement change: ``at_request``, ``at_s`` (seconds since the run started) and ``time``
    (epoch seconds), ``reason``, the ``link`` solved for, ``changed`` (true: a kept placement is
    counted in :attr:`replan_checks`, not listed), and the new placement's ``blocks``; a return to
    the server after a fallback is one too (``reason`` ``reconnected``)."""
    logits: torch.Tensor | None = field(default=None, repr=False)
    """Every sample's logits in dataset order (``[N, classes]``), kept for checks; not in :meth:`to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "logits"}

    def summary(self) -> str:
        lat = self.latency_ms
        lines = [f"{self.model} on {self.data}: accuracy {self.accuracy:.4f} over {self.samples} samples "
                 f"({self.requests} requests of {self.batch_size})"]
        where = (f"split {self.split}/{self.blocks}: {_split_text(self.split, self.blocks, self.split_after)}"
                 if self.split is not None else f"placement over {self.blocks} blocks (0..{self.blocks - 1})")
        by_mode = ", ".join(f"{v} {k}" for k, v in self.requests_by_mode.items() if v)
        lines.append(f"{where}, mode {self.mode} (requests: {by_mode})")
        lines += [f"  fell back to edge-only at request {f['at_request']}: {f['reason']}"
                  for f in self.fallbacks]
        lines += [f"  back on the server at request {r['at_request']} after {r['down_s']:.1f} s"
                  for r in self.reconnects]
        if self.placement is not None and self.split is None and "floor" in self.placement:
            p = self.placement
            met = {True: "met", False: "NOT met", None: "not measured"}[self.floor_met]
            lines.append(f"floor {p['floor']:.4f}: predicted accuracy {p['predicted_accuracy']:.4f}, "
                         f"predicted latency {p['predicted_latency_ms']:.2f} ms; measured accuracy "
                         f"{self.accuracy:.4f}: floor {met}")
            lines += [f"  {i:>2} {b['block']:<40} width {b['width']:<5} on {b['device']}"
                      for i, b in enumerate(p["blocks"])]
            if self.exit_block is not None:
                lines.append(f"  exit after block {self.exit_block} ({p['blocks'][-1]['block']}) on "
                             f"{p['exit_device']}; later blocks skipped")
            elif p.get("exits"):
                lines.append(f"  no early exit (the whole chain; {len(p['exits'])} exits considered)")
            lines.append(f"placement changed {len(self.replans)} times "
                         f"({self.replan_checks} re-solves kept it)"
                         + "".join(f"\n  at request {r['at_request']}: {r['reason']} -> "
                                   + ", ".join(f"{b['width']}@{b['device']}" for b in r["blocks"])
                                   + (f", exit@{r['exit_device']}" if r.get("exit_block") is not None else "")
                                   for r in self.replans))
        probes = self.probe_bytes
        lines.append(f"latency p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms; payload sent "
                     f"{self.bytes_sent:,} bytes, received {self.bytes_received:,}; link probes sent "
                     f"{probes.get('sent', 0):,}, received {probes.get('received', 0):,}")
        if self.rtt_ms is not None:
            bw = f"{self.bandwidth_mbps:.1f} Mbit/s" if self.bandwidth_mbps is not None else "not measured"
            lines.append(f"link: rtt {self.rtt_ms:.2f} ms, bandwidth {bw} (moving averages)")
        return "\n".join(lines)


def _split_text(split: int, blocks: int, split_after: str | None) -> str:
    """Where ``--split K`` ran the blocks, numbered from 0 as in ``--json``: ``[0, K)`` on the edge."""
    if split == 0:
        return "every block on the server (cloud-only)"
    if split == blocks:
        return "every block on the edge (edge-only)"
    return f"blocks 0..{split - 1} on the edge (through {split_after}), {split}..{blocks - 1} on the server"
