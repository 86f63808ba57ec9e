"""Output paths checked before compute: every writing command refuses a path it could not write
to *before* it loads a model or trains, naming the flag or field and the fix.

One helper for every command (``train``, ``prune``, ``adapt``, ``llm-prune``, ``llm-pretrain``,
``demo``, ``data show --grid``) so the refusal reads the same everywhere. Whether an existing
*directory* may be reused is each command's own rule (resume, ``--overwrite``); this module only
refuses what can never work: a file where a directory goes, a directory where a file goes, a
parent that is a file, a directory that is not writable.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgeadapt.errors import OutputExistsError, PathError


def _writable_ancestor(path: Path, field: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable directory."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise PathError(f"{field}: {str(path)!r} cannot be created because {str(parent)!r} is a file, "
                        "not a directory; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PathError(f"{field}: {str(path)!r} cannot be created because {str(parent)!r} is not "
                        "writable; choose a directory you can write to")


def check_output_dir(path: str | Path, field: str) -> Path:
    """``path`` as a :class:`Path` if a directory can be created or written there.

    Raises :class:`~edgeadapt.errors.OutputExistsError` when ``path`` is an existing file and
    :class:`~edgeadapt.errors.PathError` when it (or its nearest existing ancestor) is not a
    writable directory. ``field`` is the flag or config field named in the message (``--out``)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{field}: {str(path)!r} is an existing file, but a directory is written "
                                "there; remove the file or choose another path")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise PathError(f"{field}: directory {str(path)!r} is not writable; choose a directory you can "
                            "write to")
        return path
    _writable_ancestor(path, field)
    return path


def check_output_file(path: str | Path, field: str) -> Path:
    """``path`` as a :class:`Path` if a file can be written there (an existing file is replaced).

    Raises :class:`~edgeadapt.errors.OutputExistsError` when ``path`` is a directory and
    :class:`~edgeadapt.errors.PathError` when its directory cannot be created or written."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputExistsError(f"{field}: {str(path)!r} is a directory, but a file is written there; "
                                "give a file name such as grid.png")
    if path.exists() and not os.access(path, os.W_OK):
        raise PathError(f"{field}: {str(path)!r} is not writable; choose another path")
    _writable_ancestor(path, field)
    return path
