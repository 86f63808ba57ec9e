"""Error messages in the words the user typed: the command as typed (:func:`command_name`: ``edgeadapt
memory plan: error: ...``, the prefix argparse gives its own errors) and a config field that a
command-line flag set named by that flag.

The library names config fields (``memory_budget=1.0 KiB is infeasible ...; set memory_budget >=
...``), since it cannot know how a value arrived. When the user gave the value as ``--memory-budget``
the CLI prints ``--memory-budget`` instead: :func:`name_flags` rewrites the message of an
:class:`~edgeadapt.errors.EdgeAdaptError` for every flag on the command line. A flag names the field
of the same name (``--replan-factor`` -> ``replan_factor``) and those in :data:`FIELDS_OF_FLAG`.
An item of a list field (``stream[1]``, ``stream[1].options``) is named by its flag and its place,
counted from 1 in the noun of :data:`ITEM_OF_FLAG`, with the value typed when the message lacks it.

>>> name_flags("memory_budget=1.0 KiB is infeasible; set memory_budget >= 5,768 bytes",
...            ["adapt", "--memory-budget", "1KiB"])
'--memory-budget=1.0 KiB is infeasible; set --memory-budget >= 5,768 bytes'
>>> name_flags("width: must be in (0, 1]; budget.steps: must be >= 1", ["adapt", "--width=2", "--steps", "0"])
'--width: must be in (0, 1]; --steps: must be >= 1'
>>> name_flags("stream[1]: 'blur' needs a severity, e.g. 'blur:3'", ["adapt", "--stream", "fog:3,blur"])
"--stream 'fog:3,blur' (domain 2): 'blur' needs a severity, e.g. 'blur:3'"
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

# flag -> the config fields it sets under another name (the field of the flag's own name is implied)
FIELDS_OF_FLAG: dict[str, tuple[str, ...]] = {
    "--proxy-memory": ("proxy_memory_bytes",),
    "--steps": ("budget.steps",),
    "--timeout": ("timeout_s",),
}

ITEM_OF_FLAG: dict[str, str] = {"--stream": "domain"}
"""flag -> what one item of the list it sets is called in messages (default ``item``)."""


def typed_flags(argv: Sequence[str]) -> list[str]:
    """The long flags on a command line, in order, without values (``--out=x`` -> ``--out``)."""
    flags = (arg.partition("=")[0] for arg in argv if arg.startswith("--") and len(arg) > 2)
    return list(dict.fromkeys(flags))


def _field_pattern(field: str) -> re.Pattern[str]:
    """Where ``field`` stands as a field name: not inside a longer name or dotted path (``budget``
    is not ``budget.steps`` nor ``--budget``). A one-word field (``width``, ``out``) only where it
    labels a value (``width: ...``, ``width=0.5``), so words in the prose stay."""
    label = "" if ("_" in field or "." in field) else r"(?=[:=])"
    return re.compile(rf"(?<![\w.\-]){re.escape(field)}(?!\w|\.\w){label}")


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value the last ``flag`` on ``argv`` was given (``--flag v`` or ``--flag=v``), else ``None``."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1:]
    return value


def _name_items(message: str, field: str, flag: str, argv: Sequence[str]) -> str:
    """``field[i]`` (and ``field[i].sub.path``) in ``message`` as ``flag 'value' (noun i+1, sub.path)``;
    the value only when the message does not already show it (a config error's ``(got ...)``)."""
    value = flag_value(argv, flag)
    shown = "" if value is None or repr(value) in message else f" {value!r}"
    noun = ITEM_OF_FLAG.get(flag, "item")

    def item(match: re.Match[str]) -> str:
        path = f", {match.group(2)[1:]}" if match.group(2) else ""
        return f"{flag}{shown} ({noun} {int(match.group(1)) + 1}{path})"

    pattern = re.compile(rf"(?<![\w.\-]){re.escape(field)}\[(\d+)\]((?:\.\w+)*)")
    return pattern.sub(item, message)


def name_flags(message: str, argv: Sequence[str]) -> str:
    """``message`` with each config field set by a flag on ``argv`` replaced by that flag (an item of a
    list field by the flag, the value and the item's place: :func:`_name_items`)."""
    for flag in typed_flags(argv):
        for field in (flag[2:].replace("-", "_"), *FIELDS_OF_FLAG.get(flag, ())):
            message = _name_items(message, field, flag, argv)
            message = _field_pattern(field).sub(flag, message)
    return message


def command_name(args: argparse.Namespace) -> str:
    """The command as typed, with its subcommand: ``memory plan`` for ``edgeadapt memory plan ...``
    (a command group's parser stores its subcommand as ``<command>_command``), ``adapt`` for a plain
    command. Errors and warnings are prefixed ``edgeadapt <command_name>:``, as argparse prefixes its
    own errors with the subparser's prog, so one command's messages share one prefix."""
    sub = getattr(args, f"{args.command}_command", None)
    return f"{args.command} {sub}" if isinstance(sub, str) else str(args.command)
