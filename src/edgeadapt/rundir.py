"""Who may write an output directory: one run at a time, the same command's output, the same config.

Every command that writes a directory (``train``, ``prune``, ``llm-prune``, each ``offline`` step)
claims it with :func:`claim_output` **before any compute**:

* **Lock.** An exclusive ``fcntl.flock`` on ``<parent>/.<name>.lock`` (beside the directory, so
  swapping the directory never swaps the lock) is held until the run ends; a second run on the
  same directory is refused with the holder's PID (:class:`~edgeadapt.errors.OutputLockedError`).
  The kernel drops the lock when its holder dies, so a killed run never leaves a stale lock.
* **Owner.** The directory must be empty, missing, or hold ``run.json`` written by the same
  command; anything else (a trained run given to ``prune --out``, a knowledge base) is refused
  (:class:`~edgeadapt.errors.OutputExistsError`) unless ``overwrite``.
* **Overwrite deletes nothing until the run succeeds.** With ``overwrite`` the old contents are
  renamed aside (``.<name>.prev-<pid>.tmp``) and the run writes a fresh directory; when the run
  ends normally the old contents are removed, when it fails (a config or model-limit error found
  after the claim, any exception) they are put back unchanged, and when it is killed the next load
  or claim puts them back (:func:`~edgeadapt.artifacts.recover_dir`).
* **Config.** ``run.json`` stores the config that determines the result (:func:`result_config`:
  cosmetic fields such as progress bars, trackers and output paths left out) and its hash
  (:func:`config_hash`). A resumable command whose stored hash differs is refused with a
  :class:`~edgeadapt.errors.ConfigError` naming the fields that differ, instead of "resuming"
  another config's checkpoint.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edgeadapt.artifacts import MANIFEST, atomic_write_text, lock_path, recover_dir, remove_tree, sibling
from edgeadapt.errors import ConfigError, EdgeAdaptError, OutputExistsError, OutputLockedError
from edgeadapt.outputs import check_output_dir

RUN_FILE = "run.json"
LOGS_DIR = "logs"  # a run's tracker output (scaffolding, not a result)
CHECKPOINTS_DIR = "checkpoints"  # a resumable run's checkpoints; only its config.json: scaffolding

# Fields that never change what a run computes: where it writes, how it reports, whether it resumes,
# and on which device (a resumed run may move between devices).
COSMETIC = frozenset({"progress", "quiet", "tracking", "tracker", "project", "log_every", "out", "save",
                      "log_dir", "resume", "overwrite", "device", "use_gpu", "gpu_ids", "debug", "func"})


def result_config(config: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as JSON-able data without the :data:`COSMETIC` fields (at any depth)."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else json.loads(
        json.dumps(dict(config), default=str))

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in COSMETIC}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(data)


def config_hash(config: BaseModel | Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of :func:`result_config` (key order does not matter)."""
    canonical = json.dumps(result_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ, with both values: ``["lr: 0.1 -> 0.2"]``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{name}: (absent) -> {new[key]!r}")
            elif key not in new:
                out.append(f"{name}: {old[key]!r} -> (absent)")
            else:
                out.extend(config_diff(old[key], new[key], name))
        return out
    return [] if old == new else [f"{prefix or '(config)'}: {old!r} -> {new!r}"]


def refuse_config_change(what: str, stored: Mapping[str, Any], current: Mapping[str, Any], fix: str) -> None:
    """Raise a :class:`ConfigError` listing the fields where ``stored`` and ``current`` differ (no-op when
    they agree). ``what`` says whose config was stored; ``fix`` how to proceed."""
    diff = config_diff(dict(stored), dict(current))
    if diff:
        shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise ConfigError(f"{what} was made with a different config ({shown}); {fix}")


# -- lock -------------------------------------------------------------------------------------------

class OutputLock:
    """An exclusive, non-blocking ``flock`` on a directory's lock file, recording the holder's PID.

    ``acquire`` raises :class:`OutputLockedError` naming the PID when another process holds it."""

    def __init__(self, directory: str | Path, field: str = "out") -> None:
        self.directory, self.field = Path(directory), field
        self.path = lock_path(self.directory)
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise OutputLockedError(f"{self.field}: {self.directory} is in use by another edgeadapt run "
                                    f"(PID {holder}, lock {self.path}); wait for it to finish, stop it, or "
                                    "choose another output directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- ownership --------------------------------------------------------------------------------------

def _describe(directory: Path) -> str:
    """What a directory holds, in words, for a refusal."""
    run = _read_run(directory)
    if run is not None:
        return f"the output of `edgeadapt {run.get('command')}`"
    manifest = directory / MANIFEST
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
            kind = data.get("kind") if isinstance(data, dict) else None
        except (ValueError, OSError):
            kind = None
        if kind:
            return f"a {kind!r} artifact"
    names = sorted(p.name for p in directory.iterdir())
    return f"{len(names)} other entries ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"


def _read_run(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("command"), str) else None


def check_output(directory: str | Path, command: str, config: BaseModel | Mapping[str, Any], *,
                 overwrite: bool = False, resumable: bool = True, field: str = "out") -> str:
    """Decide, before compute, whether ``command`` with ``config`` may write ``directory``; returns
    the config hash. Refuses (without touching anything) a directory that holds something other
    than ``command``'s earlier output (:class:`OutputExistsError`) and, for a ``resumable``
    command, that output made with another config (:class:`ConfigError` naming the fields). With
    ``overwrite`` neither is refused: :func:`claim_output` replaces the directory instead."""
    directory = Path(directory)
    digest = config_hash(config)
    if overwrite or not directory.is_dir() or not any(directory.iterdir()):
        return digest
    run = _read_run(directory)
    fix = f"pass --overwrite to replace it, or choose a new directory for {field}"
    if run is None or run["command"] != command:
        raise OutputExistsError(f"{field}: {directory} already holds {_describe(directory)}, not the output "
                                f"of an earlier `edgeadapt {command}`; {fix}")
    if resumable and run.get("config_hash") != digest:
        refuse_config_change(f"{field}: {directory}", run.get("config", {}), result_config(config),
                             f"resuming it would mix two runs: {fix}")
        raise ConfigError(f"{field}: {directory} was made with a different config (hash "
                          f"{str(run.get('config_hash'))[:12]} vs {digest[:12]}); {fix}")
    return digest


def _holds_no_results(directory: Path, refused: bool) -> bool:
    """True when a failed run's ``directory`` holds nothing but ``run.json`` and, after a refusal
    (``refused``), its ``logs/`` tree and a ``checkpoints/`` without a checkpoint (only the config it
    is bound to): the scaffolding the run set up before it was refused."""
    names = {p.name for p in directory.iterdir()}
    if not refused:
        return names == {RUN_FILE}
    checkpoints = directory / CHECKPOINTS_DIR
    bare = not checkpoints.is_dir() or {p.name for p in checkpoints.iterdir()} <= {"config.json"}
    return RUN_FILE in names and names <= {RUN_FILE, LOGS_DIR, CHECKPOINTS_DIR} and bare


@contextmanager
def claim_output(directory: str | Path, command: str, config: BaseModel | Mapping[str, Any], *,
                 overwrite: bool = False, resumable: bool = True, field: str = "out") -> Iterator[Path]:
    """Lock ``directory``, check it (:func:`check_output`), record ``run.json``, and yield it; the
    lock is held until the block ends.

    Nothing that was there is deleted before the block succeeds: with ``overwrite`` the old contents
    are set aside and the block gets an empty directory; they are removed when the block ends
    normally and put back, unchanged, when it raises (or, after a kill, by the next claim or load).
    A directory this claim created (or found empty) that the failed block left holding only
    ``run.json`` is removed again, so a refused run leaves no trace; after a refusal (an
    :class:`~edgeadapt.errors.EdgeAdaptError`, e.g. an infeasible memory budget found once the model
    is loaded) the same holds when it also holds only the run's ``logs/`` and a ``checkpoints/``
    without a checkpoint (no results), so the rerun with the fix needs no ``--overwrite``.

    Example::

        with claim_output(recipe.out, "train", recipe, overwrite=args.overwrite) as out:
            ...  # compute and write into out
    """
    directory = check_output_dir(directory, field)  # a file, a file parent, not writable: refused
    with OutputLock(directory, field):
        recover_dir(directory, locked=True)  # a killed --overwrite run or re-save: the old output back
        digest = check_output(directory, command, config, overwrite=overwrite, resumable=resumable,
                              field=field)
        existed = directory.is_dir()
        fresh = not existed or not any(directory.iterdir())
        aside = None
        if overwrite and not fresh:
            aside = sibling(directory, "prev")
            remove_tree(aside)
            os.rename(directory, aside)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / RUN_FILE, json.dumps(
            {"command": command, "config_hash": digest, "config": result_config(config)}, indent=1,
            sort_keys=True))
        try:
            yield directory
        except BaseException as exc:
            if aside is not None:  # put back what was there
                remove_tree(directory)
                os.rename(aside, directory)
            elif fresh and _holds_no_results(directory, refused=isinstance(exc, EdgeAdaptError)):
                for entry in directory.iterdir():
                    remove_tree(entry)
                if not existed:
                    directory.rmdir()
            raise
        if aside is not None:  # done: the old contents go (renamed "old" first: a kill cannot restore them)
            done = sibling(directory, "old")
            remove_tree(done)
            os.rename(aside, done)
            remove_tree(done)
