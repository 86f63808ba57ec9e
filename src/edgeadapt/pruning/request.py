"""Does a prune request remove anything? One rule for every command (``prune``, ``llm-prune``) and
every budget function (:func:`~edgeadapt.pruning.budget.prune_to_unit_sparsity`,
:func:`~edgeadapt.pruning.budget.prune_to_param_sparsity`), checked before any score is computed.

A request whose every target removes nothing — a unit sparsity that rounds to zero units
(``round(0.25 * 2) == 0``: Python rounds half to even), one KV head per layer, ``min_keep`` as large as
the layer, every layer protected — is an :class:`~edgeadapt.errors.InfeasibleError` naming each
target, its units per layer and the smallest sparsity that removes one. When only some targets of
several remove nothing, a ``UserWarning`` names them and the others are pruned.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from edgeadapt.errors import ConfigError, InfeasibleError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.pruning.groups import KINDS, num_units
from edgeadapt.pruning.plan import PruningPlan
from edgeadapt.pruning.select import DEFAULT_SCOPE, open_positions, removal_count


def check_targets(targets: Sequence[str]) -> None:
    """Refuse a target that is not a pruning kind. Whether the model has units of a kind to
    remove is :func:`check_request`'s question."""
    for kind in targets:
        if kind not in KINDS:
            raise ConfigError(f"targets: {kind!r} is not one of {', '.join(KINDS)}")


UNIT_NAMES = {"layers": "layers", "heads": "KV head units", "neurons": "FFN neurons"}


@dataclass(frozen=True)
class Removal:
    """What a unit sparsity removes of one kind, known before any score: ``removed`` units in all,
    ``smallest`` the smallest unit sparsity that removes one (``None``: no sparsity can), and
    ``why`` a sentence explaining a zero."""

    kind: str
    removed: int
    smallest: float | None
    why: str


def just_above(x: float) -> float | None:
    """The smallest multiple of 0.001 strictly above ``x`` (a sparsity to suggest), or ``None`` if
    it is not below 1."""
    v = math.floor(x * 1000 + 1e-9) / 1000 + 0.001
    return round(v, 3) if v < 1.0 else None


def _per_layer(sizes: Sequence[int], name: str) -> str:
    """``"2 KV head units per layer"``, ``"1 KV head unit per layer"``, ``"3 to 4 FFN neurons per layer"``."""
    lo, hi = min(sizes), max(sizes)
    if lo == hi == 1:
        name = name[:-1]
    return f"{lo} {name} per layer" if lo == hi else f"{lo} to {hi} {name} per layer"


def unit_removals(adapter: ModelAdapter, kinds: Sequence[str], unit_sparsity: float,
                  scope: str = DEFAULT_SCOPE, min_keep: int = 1, protect_first: int = 0,
                  protect_last: int = 0) -> list[Removal]:
    """For every kind in ``kinds``, how many units :func:`select` removes at ``unit_sparsity`` from
    the adapter's *current* model (the same counting rule, no scores needed), the smallest unit
    sparsity that removes one, and why none is removed when that is so."""
    blocks = adapter.blocks()
    n = len(blocks)
    open_ = open_positions(n, protect_first, protect_last)
    guard = f" (protect_first {protect_first}, protect_last {protect_last})"
    out = []
    for kind in dict.fromkeys(kinds):
        name = UNIT_NAMES[kind]
        if not open_:
            out.append(Removal(kind, 0, None, f"{kind}: every one of the {n} layers is protected{guard}"))
            continue
        if kind == "layers":
            removed = round(unit_sparsity * n) if n >= 2 else 0
            smallest = just_above(0.5 / n) if n >= 2 else None
            why = (f"layers: the model has {n} layer and keeps at least one" if n < 2 else
                   f"layers: {n} layers, round({unit_sparsity:g} × {n}) = 0")
            out.append(Removal(kind, removed, smallest, why))
            continue
        sizes = {i: num_units(blocks[i], kind) for i in open_}
        removed = removal_count(sizes, unit_sparsity, scope, min_keep)
        removable = [k for k in sizes.values() if k - min_keep >= 1]
        if not removable:
            smallest = None
            why = (f"{kind}: {_per_layer(list(sizes.values()), name)} and every layer keeps at least "
                   f"{min_keep} (min_keep), so no {kind} can be removed")
        else:
            most = max(removable) if scope == "uniform" else sum(sizes.values())
            smallest = just_above(0.5 / most)
            in_all = "" if scope == "uniform" else " in all"
            counted = f"round({unit_sparsity:g} × {most}{in_all}) = {round(unit_sparsity * most)}"
            why = f"{kind}: {_per_layer(list(sizes.values()), name)}, {counted}"
            if smallest is not None:
                why += f"; the smallest unit_sparsity that removes one is {smallest}"
        out.append(Removal(kind, removed, smallest, why))
    return out


def refuse_or_warn(zero: Sequence[Removal], kinds: Sequence[str], what: str, fix: str) -> None:
    """The one rule: nothing removed by the whole request is an :class:`InfeasibleError`; one kind
    of several removing nothing is a warning naming it."""
    if not zero:
        return
    details = "; ".join(r.why for r in zero)
    if len(zero) == len(kinds):
        raise InfeasibleError(f"{what} removes nothing (targets {', '.join(kinds)}): {details}. {fix}")
    names = " and ".join(r.kind for r in zero)
    warnings.warn(f"{what} removes no {names} (only the other targets are pruned): {details}", UserWarning,
                  stacklevel=2)  # one place in this module: the default filter shows a repeat once


def _unit_fix(zero: Sequence[Removal], sparsity_name: str) -> str:
    """How to make a unit request remove something: the smallest sparsity that does, or other targets."""
    smallest = [r.smallest for r in zero if r.smallest is not None]
    if smallest:
        return f"Raise {sparsity_name} to at least {min(smallest)} or add a target"
    if any("is protected" in r.why for r in zero):
        return "Lower protect_first/protect_last so that at least one layer can be pruned"
    others = [k for k in KINDS if k not in {r.kind for r in zero}]
    return (f"Choose a target the model can lose ({', '.join(others) or 'none left'}) or lower "
            "protect_first/protect_last or min_keep")


def check_request(adapter: ModelAdapter, targets: Sequence[str], budget: str, sparsity: float,
                  scope: str = DEFAULT_SCOPE, min_keep: int = 1, protect_first: int = 0,
                  protect_last: int = 0) -> None:
    """Before any scoring: refuse a prune request that removes nothing, warn about a target that
    does. ``budget`` is ``"unit"`` or ``"param"``; a sparsity of exactly 0 asks for nothing and
    passes. Every caller (``prune``, ``llm-prune``,
    :func:`~edgeadapt.pruning.budget.prune_to_unit_sparsity`,
    :func:`~edgeadapt.pruning.budget.prune_to_param_sparsity`) applies this same rule.

    - ``"unit"``: the units each target loses are counted as :func:`select` counts them
      (``round(s * n)``, floors, protected layers); all zero is an ``InfeasibleError`` naming
      each target, its units per layer and the smallest unit sparsity that removes one; some zero
      is a ``UserWarning`` naming them.
    - ``"param"``: a target with no removable unit at all (one KV head per layer, every layer
      protected, ...) is refused or warned about the same way; whether the share rounds to zero
      is known only after the search (``prune_to_param_sparsity`` checks that).
    """
    check_targets(targets)
    kinds = list(dict.fromkeys(targets))
    if sparsity == 0:
        return
    if budget == "unit":
        removals = unit_removals(adapter, kinds, sparsity, scope, min_keep, protect_first, protect_last)
        zero = [r for r in removals if r.removed == 0]
        refuse_or_warn(zero, kinds, f"unit_sparsity {sparsity:g}", _unit_fix(zero, "unit_sparsity"))
        return
    removals = unit_removals(adapter, kinds, 1.0 - 1e-9, scope, min_keep, protect_first, protect_last)
    zero = [Removal(r.kind, 0, None, r.why.split("; the smallest")[0]) for r in removals if r.removed == 0]
    refuse_or_warn(zero, kinds, f"param_sparsity {sparsity:g}", _unit_fix(zero, "param_sparsity"))


def removed_units(before: PruningPlan, after: PruningPlan) -> dict[str, int]:
    """Units of each kind ``after`` no longer has that ``before`` had (heads and neurons counted in
    the layers ``after`` keeps)."""
    out = {"layers": len(before.blocks) - len(after.blocks), "heads": 0, "neurons": 0}
    for b in after.blocks:
        old = before.block(b.index)
        if old is not None:
            out["heads"] += len(before.kept_heads(old)) - len(after.kept_heads(b))
            out["neurons"] += len(before.kept_neurons(old)) - len(after.kept_neurons(b))
    return out
