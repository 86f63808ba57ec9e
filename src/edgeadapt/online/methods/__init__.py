"""Adaptation methods, one small module each, in a registry that refuses duplicate names.

Importing this package registers the built-ins, in this order: ``source``, ``tent``, ``full``,
``static``, ``edgeadapt`` (the product's method), ``eata``, ``sar``. A method is a factory
``MethodContext -> MethodState``; :func:`build` builds the named ones.
"""

from __future__ import annotations

from edgeadapt.errors import ConfigError
from edgeadapt.online.methods import eata, edgeadapt, full, sar, source, static, tent
from edgeadapt.online.methods.base import MethodContext, MethodState, class_logits
from edgeadapt.online.methods.registry import (
    MethodFactory,
    get_method,
    method_names,
    methods_for,
    register_method,
    unregister_method,
)

__all__ = ["BUILTIN", "MethodContext", "MethodFactory", "MethodState", "build", "class_logits",
           "get_method", "method_names", "methods_for", "register_method", "unregister_method"]


BUILTIN: tuple[tuple[str, MethodFactory], ...] = (
    ("source", source.source), ("tent", tent.tent), ("full", full.full), ("static", static.static),
    ("edgeadapt", edgeadapt.edgeadapt), ("eata", eata.eata), ("sar", sar.sar))
CLASSIFIERS_ONLY = frozenset({"eata", "sar"})  # they filter samples by class-prediction entropy
for _name, _factory in BUILTIN:
    register_method(_name, _factory, tasks={"classification"} if _name in CLASSIFIERS_ONLY else None)


def build(names: list[str], ctx: MethodContext) -> list[MethodState]:
    """One fresh :class:`MethodState` per name, in order; an empty list, a repeated name, an unknown
    one, or ``ctx.options`` for an unknown method raises :class:`~edgeadapt.errors.ConfigError`
    (naming it and the registered methods)."""
    if not names:
        raise ConfigError(f"methods: the list is empty, so nothing would run; choose from "
                          f"{', '.join(method_names())}")
    unknown = [n for n in names if n not in method_names()]
    if unknown:
        raise ConfigError(f"methods: unknown {unknown}; choose from {', '.join(method_names())}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"methods: {repeated} listed more than once")
    stray = sorted(set(ctx.options) - set(method_names()))
    if stray:
        raise ConfigError(f"method options: {stray} name no registered method; choose from "
                          f"{', '.join(method_names())}")
    return [get_method(n)(ctx) for n in names]
