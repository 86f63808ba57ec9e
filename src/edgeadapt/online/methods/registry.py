"""The method registry: name → factory building a :class:`~edgeadapt.online.methods.base.MethodState`.

Built-in methods register themselves when :mod:`edgeadapt.online.methods` is imported; a user adds
one the same way::

    from edgeadapt.online.methods import MethodContext, MethodState, register_method

    def mine(ctx: MethodContext) -> MethodState:
        model = copy.deepcopy(ctx.fm)
        return MethodState("mine", lambda d: model, lambda a: my_loss, trainable="norm")

    register_method("mine", mine)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from edgeadapt.errors import ConfigError
from edgeadapt.online.methods.base import MethodContext, MethodState

MethodFactory = Callable[[MethodContext], MethodState]
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_METHODS: dict[str, MethodFactory] = {}
_TASKS: dict[str, frozenset[str] | None] = {}  # name -> task names it adapts (None: any task)


def register_method(name: str, factory: MethodFactory, tasks: Iterable[str] | None = None) -> MethodFactory:
    """Register ``factory`` under ``name`` (lowercase letters, digits, ``-``, ``_``); returns it.
    ``tasks`` names the model tasks it can adapt (e.g. ``{"classification"}`` for a method that
    filters by class-prediction entropy); ``None`` means any task. :func:`methods_for` uses it to
    choose the default methods for a model.

    Raises :class:`~edgeadapt.errors.ConfigError` for a malformed name, a name already registered,
    or a factory that is not callable."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"method name {name!r}: use lowercase letters, digits, '-' and '_', starting "
                          "with a letter")
    if name in _METHODS:
        raise ConfigError(f"method {name!r} is already registered; choose another name")
    if not callable(factory):
        raise ConfigError(f"method {name!r}: the factory must be callable, got {type(factory).__name__}")
    _METHODS[name] = factory
    _TASKS[name] = None if tasks is None else frozenset(tasks)
    return factory


def methods_for(task: str | None) -> tuple[str, ...]:
    """Registered methods that can adapt a model whose task is named ``task`` (registration order):
    the default method list of :func:`edgeadapt.online.api.adapt` and ``edgeadapt adapt``."""
    return tuple(n for n in _METHODS if _TASKS[n] is None or task in _TASKS[n])


def method_names() -> tuple[str, ...]:
    """Registered method names in registration order (built-ins first)."""
    return tuple(_METHODS)


def get_method(name: str) -> MethodFactory:
    """The factory registered under ``name``; an unknown name raises
    :class:`~edgeadapt.errors.ConfigError` listing the registered ones."""
    if name not in _METHODS:
        raise ConfigError(f"methods: unknown {name!r}; choose from {', '.join(_METHODS)}")
    return _METHODS[name]


def unregister_method(name: str) -> None:
    """Remove ``name`` (for tests and plug-ins that replace their own entry); unknown names raise."""
    get_method(name)
    del _METHODS[name]
    del _TASKS[name]
