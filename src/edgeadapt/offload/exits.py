"""Early exits for a block chain, and placement that may end the chain at one of them.

**Exits** (BranchyNet, Teerapittayanon et al., ICPR 2016): an :class:`ExitHead` after block ``e``
pools that block's output and classifies it, so a request may stop after block ``e``.
:func:`train_exit_heads` trains one after every block but the last two on the frozen chain;
:func:`exit_accuracies` measures them and :func:`profile_exits` times them per device.

**Exits with descendants.** LegoDNN (Han et al., MobiCom 2021) narrows blocks; early-exit
offloading (DEC-DNN-IO, the baseline of :mod:`edgeadapt.offload.baselines`) shortens the chain. The
two compose: a request may run blocks ``0..e`` *at chosen widths* and stop at exit ``e``.
:func:`exit_accuracy_drops` measures each exit's accuracy drop per (block, width) the LegoDNN way
(composed models averaged over uniform width settings; one traced pass of a composition scores
every exit at once), and :func:`solve_with_exits` solves the placement integer program of
:mod:`edgeadapt.offload.placement` once per end of the chain — each exit whose full-width accuracy
meets the floor (its prefix of blocks with that exit's drops, then its head as a one-option block)
and the whole chain — and keeps the fastest. An exit profiled without drops offers its prefix at
full width only (the early-exit baseline's choice, placed by the program).

>>> heads = train_exit_heads(desc.chain([1.0] * n), batches, num_labels=10)       # doctest: +SKIP
>>> base, drops = exit_accuracy_drops(desc, heads, val)                            # doctest: +SKIP
>>> exits = profile_exits(chain, heads, base, x, devices, drops=drops)             # doctest: +SKIP
>>> plan = solve_with_exits(profile, exits, bandwidth=1.25e6, rtt_s=0.005, floor=0.9)  # doctest: +SKIP
>>> plan.exit_block, plan.placement.widths, plan.placement.latency_s               # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from edgeadapt.errors import ConfigError, InfeasibleError
from edgeadapt.offload.blocks import BlockChain, Descendants
from edgeadapt.offload.placement import Option, Placement, PlacementProblem, solve
from edgeadapt.offload.profile import (
    ChainProfile,
    DeviceProfile,
    default_settings,
    measure_latencies,
    state_bytes,
)


class ExitHead(nn.Module):
    """A BranchyNet-style exit: pool an intermediate activation (``[B, C, H, W]`` to a 2×2 grid,
    flattened to ``4C``, so the exit keeps coarse layout; a ``[B, T, H]`` sequence by its mean over
    T), normalise it (LayerNorm without parameters) and a linear classifier to ``num_labels``."""

    GRID = 2

    def __init__(self, features: int, num_labels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(features, elementwise_affine=False)
        self.linear = nn.Linear(features, num_labels)

    @classmethod
    def pool(cls, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, 4C]`` or ``[B, T, H] -> [B, H]``."""
        if hidden.dim() == 4:
            return torch.flatten(nn.functional.adaptive_avg_pool2d(hidden, cls.GRID), 1)
        if hidden.dim() == 3:
            return hidden.mean(dim=1)
        raise ConfigError("an exit head pools [B, C, H, W] or [B, T, H] activations, got "
                          f"{list(hidden.shape)}")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(self.pool(hidden)))


def train_exit_heads(chain: BlockChain, batches: Sequence[dict[str, torch.Tensor]], num_labels: int,
                     epochs: int = 3, lr: float = 1e-2, seed: int = 0) -> list[ExitHead]:
    """One :class:`ExitHead` after every block but the last two (the last is the chain's own head;
    an exit on the final features would duplicate it), trained with cross-entropy on the frozen
    chain's outputs: per batch one backbone pass (no gradients) feeds every head, each takes an
    Adam step (BranchyNet's equal weight per exit, backbone frozen). Heads are returned in eval
    mode; ``heads[e]`` reads block ``e``'s output. Raises :class:`~edgeadapt.errors.ConfigError` for
    no batches, batches without ``pixel_values`` and ``labels``, or a label outside ``num_labels``."""
    if epochs < 1 or lr <= 0:
        raise ConfigError(f"exit heads need epochs >= 1 and lr > 0; got {epochs}, {lr}")
    batches = list(batches)
    if not batches:
        raise ConfigError("exit heads need at least one batch of training data")
    for i, batch in enumerate(batches):
        if not isinstance(batch, dict) or not {"pixel_values", "labels"} <= set(batch):
            raise ConfigError(f"exit heads train on labelled batches: batch {i} must be a dict with "
                              "'pixel_values' and 'labels' (e.g. ImageSplit.batches(...))")
        top = int(batch["labels"].max()) if batch["labels"].numel() else -1
        if top >= num_labels or (batch["labels"].numel() and int(batch["labels"].min()) < 0):
            raise ConfigError(f"num_labels={num_labels} but batch {i} holds label {top}: give the data's "
                              f"class count (at least {top + 1})")
    chain.eval()
    with torch.no_grad():
        shapes = chain.trace(batches[0]["pixel_values"][:1])
    gen = torch.Generator().manual_seed(seed)
    heads = []
    for out in shapes[:-2]:
        head = ExitHead(ExitHead.pool(out).shape[-1], num_labels)
        with torch.no_grad():
            for p in head.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
        heads.append(head)
    optims = [torch.optim.Adam(h.parameters(), lr=lr) for h in heads]
    for _ in range(epochs):
        for batch in batches:
            with torch.no_grad():
                outs = chain.trace(batch["pixel_values"])
            for head, opt, out in zip(heads, optims, outs):
                loss = nn.functional.cross_entropy(head.train()(out), batch["labels"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return [h.eval() for h in heads]


@torch.no_grad()
def exit_accuracies(chain: BlockChain, heads: Sequence[ExitHead],
                    batches: Iterable[dict[str, torch.Tensor]]) -> list[float]:
    """Top-1 accuracy of every exit (``heads[e]`` on block ``e``'s output) on labelled batches."""
    return chain_and_exit_accuracies(chain, heads, batches)[1]


@torch.no_grad()
def chain_and_exit_accuracies(chain: BlockChain, heads: Sequence[ExitHead],
                              batches: Iterable[dict[str, torch.Tensor]]) -> tuple[float, list[float]]:
    """``(the chain's own top-1 accuracy, every exit's)`` on labelled batches from one traced pass per
    batch (the chain's output is its last block's)."""
    chain.eval()
    right, last, total = [0] * len(heads), 0, 0
    for batch in batches:
        outs = chain.trace(batch["pixel_values"])
        for e, head in enumerate(heads):
            right[e] += int((head(outs[e]).argmax(-1) == batch["labels"]).sum())
        last += int((outs[-1].argmax(-1) == batch["labels"]).sum())
        total += int(batch["labels"].numel())
    if total == 0:
        raise ConfigError("exit accuracy needs at least one labelled example")
    return last / total, [r / total for r in right]


@dataclass(frozen=True)
class ExitProfile:
    """Exit after block ``block``: its measured accuracy (fraction) with every block at full width,
    the head's latency per device name (seconds, at the chain profile's batch size), its weight bytes
    and output (logits) bytes per input. ``drops[b][w]`` (fraction, ``b <= block``, ``w`` indexing
    the chain profile's widths) is this exit's accuracy drop with block ``b`` at that width
    (:func:`exit_accuracy_drops`); empty when not measured, and then the exit's blocks are offered
    at full width only."""

    block: int
    accuracy: float
    latency_s: dict[str, float]
    mem_bytes: int
    out_bytes: int
    drops: tuple[tuple[float, ...], ...] = ()


@torch.no_grad()
def profile_exits(chain: BlockChain, heads: Sequence[ExitHead], accuracies: Sequence[float],
                  x: torch.Tensor, devices: Sequence[DeviceProfile], warmup: int = 3,
                  repeats: int = 10, drops: Sequence[Sequence[Sequence[float]]] | None = None
                  ) -> list[ExitProfile]:
    """Time every exit head on every device on the chain's real activations for input ``x`` (the
    batch size latencies are wanted at), as :func:`~edgeadapt.offload.profile.profile_chain` does.
    ``accuracies[e]`` and ``drops[e]`` (optional) come from :func:`exit_accuracy_drops`."""
    if len(accuracies) != len(heads):
        raise ConfigError(f"{len(accuracies)} accuracies for {len(heads)} exit heads")
    if drops is not None and len(drops) != len(heads):
        raise ConfigError(f"{len(drops)} drop tables for {len(heads)} exit heads")
    outs = chain.eval().trace(x)
    runs = [(head, outs[e], d) for e, head in enumerate(heads) for d in devices]
    seconds = iter(measure_latencies(runs, warmup, repeats))
    profiles = []
    for e, head in enumerate(heads):
        latency = {d.name: next(seconds) for d in devices}
        logits = head(outs[e][:1])
        table = () if drops is None else tuple(tuple(float(v) for v in row) for row in drops[e])
        profiles.append(ExitProfile(e, float(accuracies[e]), latency, state_bytes(head),
                                    logits.numel() * logits.element_size(), table))
    return profiles


@torch.no_grad()
def exit_accuracy_drops(desc: Descendants, heads: Sequence[ExitHead],
                        batches: Sequence[dict[str, torch.Tensor]],
                        settings: Sequence[float] | None = None,
                        measured: dict[tuple[float, ...], float] | None = None
                        ) -> tuple[list[float], list[list[list[float]]]]:
    """``(accuracy[e], drops[e][b][w])`` for every exit head: ``accuracy[e]`` with every block at full
    width, ``drops[e][b][w]`` (``b <= e``; ``w`` indexes ``desc.widths``) averaged over the uniform
    width ``settings`` (default :func:`~edgeadapt.offload.profile.default_settings`) of
    ``acc_e(setting with block b at full width) − acc_e(setting with block b at width w)`` — the
    LegoDNN accuracy model of :mod:`edgeadapt.offload.profile`, per exit. Each composition is traced
    once and scores every exit; with ``measured`` (a dict), the chain's own accuracy of each
    composition is recorded there too, so :func:`~edgeadapt.offload.profile.profile_chain` given the
    same dict does not evaluate them again. ``batches`` are labelled (``pixel_values``, ``labels``)."""
    settings = list(settings or default_settings(desc.widths))
    n, n_e = len(desc.names), len(heads)
    if n_e > n - 2:
        raise ConfigError(f"{n_e} exit heads for a chain of {n} blocks (at most {n - 2}: none after the "
                          "last two blocks)")
    cache: dict[tuple[float, ...], list[float]] = {}

    def acc(widths: tuple[float, ...]) -> list[float]:
        if widths not in cache:
            final, cache[widths] = chain_and_exit_accuracies(desc.chain(widths), heads, batches)
            if measured is not None:
                measured.setdefault(widths, final)
        return cache[widths]

    drops = [[[0.0] * len(desc.widths) for _ in range(e + 1)] for e in range(n_e)]
    for b in range(min(n, n_e)):
        for w, width in enumerate(desc.widths):
            if width == 1.0:
                continue
            for s in settings:
                row = [s] * n
                full = acc(tuple(row[:b] + [1.0] + row[b + 1:]))
                narrowed = acc(tuple(row[:b] + [width] + row[b + 1:]))
                for e in range(b, n_e):
                    drops[e][b][w] += (full[e] - narrowed[e]) / len(settings)
    return acc(tuple([1.0] * n)), drops


@dataclass(frozen=True)
class ExitPlacement:
    """A placement that may stop at an exit: ``exit_block`` (``None``: the whole chain) and the
    placement of the blocks it runs — blocks ``0..exit_block`` then the exit head as one more block,
    or every block — over ``problem``, the sub-problem it was solved on (its ``base_accuracy`` is the
    exit's full-width accuracy). ``placement.accuracy`` is the exit's additive-model accuracy."""

    placement: Placement
    problem: PlacementProblem
    exit_block: int | None

    @property
    def widths(self) -> tuple[float, ...]:
        """The widths of the chain's blocks that run (the exit head, when there is one, excluded)."""
        return self.placement.widths if self.exit_block is None else self.placement.widths[:-1]

    def to_dict(self) -> dict:
        return {**self.placement.to_dict(), "exit_block": self.exit_block}


def exit_problem(problem: PlacementProblem, profile: ChainProfile, ex: ExitProfile) -> PlacementProblem:
    """The placement problem of the chain ending at exit ``ex``: blocks ``0..ex.block`` with the
    options of ``problem`` (made by ``profile.problem``) and the exit's own accuracy drops — full
    width only when it has none — then the head as a one-option block whose output is the logits."""
    if not 0 <= ex.block < len(problem.options) - 1:
        raise ConfigError(f"exit after block {ex.block}: the chain has {len(problem.options)} blocks (an "
                          f"exit follows one of blocks 0..{len(problem.options) - 2})")
    if ex.drops and (len(ex.drops) != ex.block + 1
                     or any(len(row) != len(profile.widths) for row in ex.drops)):
        raise ConfigError(f"exit after block {ex.block}: its drops are {len(ex.drops)} rows of "
                          f"{sorted({len(r) for r in ex.drops})} widths, not {ex.block + 1} rows of the "
                          f"profile's {len(profile.widths)} widths; profile the exits on this chain's "
                          "descendants")
    names = problem.devices
    missing = [d for d in names if d not in ex.latency_s]
    if missing:
        raise ConfigError(f"exit after block {ex.block} has no latency for devices {missing}; profile it "
                          "on the same devices as the chain")
    options = []
    for b in range(ex.block + 1):
        row = []
        for o in problem.options[b]:
            if ex.drops:
                drop = ex.drops[b][profile.widths.index(o.width)]
            elif o.width != 1.0:
                continue
            else:
                drop = 0.0
            row.append(Option(o.width, max(0.0, drop), o.latency_s, o.mem_bytes))
        options.append(tuple(row))
    options.append((Option(1.0, 0.0, tuple(ex.latency_s[d] for d in names), ex.mem_bytes),))
    out_bytes = problem.out_bytes[:ex.block + 1] + (ex.out_bytes * profile.batch_size,)
    return PlacementProblem(tuple(options), out_bytes, problem.input_bytes, names, problem.memory_bytes,
                            problem.bandwidth, problem.rtt_s, ex.accuracy, problem.source)


def end_problems(profile: ChainProfile, exits: Sequence[ExitProfile],
                 bandwidth: float | Sequence[Sequence[float]], rtt_s: float | Sequence[Sequence[float]],
                 floor: float, source: int = 0) -> list[tuple[PlacementProblem, int | None]]:
    """Every end of the chain a request may take at ``floor``, as ``(problem, exit block)``: the whole
    chain (``None``) and each exit whose full-width accuracy reaches the floor
    (:func:`exit_problem`). A caller that verifies accuracy by measurement re-solves each end with
    its own raised floor, so one end's optimistic additive model does not exclude another."""
    whole = profile.problem(bandwidth, rtt_s, source)
    return [(whole, None)] + [(exit_problem(whole, profile, ex), ex.block) for ex in exits
                              if ex.accuracy >= floor - 1e-12]


def solve_with_exits(profile: ChainProfile, exits: Sequence[ExitProfile],
                     bandwidth: float | Sequence[Sequence[float]], rtt_s: float | Sequence[Sequence[float]],
                     floor: float, source: int = 0, backend: str = "highs",
                     time_limit_s: float = 10.0) -> ExitPlacement:
    """The least-latency placement over every end of the chain (module doc): for each exit whose
    full-width accuracy reaches ``floor``, and for the whole chain, the integer program of
    :func:`~edgeadapt.offload.placement.solve` on that prefix; the fastest feasible one wins.
    With no exits this is :func:`~edgeadapt.offload.placement.solve` on ``profile.problem(...)``.
    Raises :class:`~edgeadapt.errors.InfeasibleError` naming the best reachable accuracy when no end
    meets the floor within the devices' memory."""
    best: ExitPlacement | None = None
    reasons = []
    for problem, block in end_problems(profile, exits, bandwidth, rtt_s, floor, source):
        try:
            pl = solve(problem, floor, backend, time_limit_s)
        except InfeasibleError as exc:
            reasons.append(str(exc))
            continue
        if best is None or pl.latency_s < best.placement.latency_s - 1e-12:
            best = ExitPlacement(pl, problem, block)
    if best is None:
        tops = sorted(exits, key=lambda ex: ex.accuracy)[-1:]
        best_exit = (f"; the best exit (after block {tops[0].block}) reaches {tops[0].accuracy:.4f} with "
                     "every block before it at full width") if tops else ""
        raise InfeasibleError(f"accuracy floor {floor:.4f} is unreachable by any end of the chain within the "
                              f"devices' memory{best_exit}. The whole chain: {reasons[0]}")
    return best
