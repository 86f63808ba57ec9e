"""Artifact directories: atomic writes, a manifest, and verification on load.

Every stage writes a directory holding ``manifest.json`` (kind, format version, edgeadapt
version, base-model identity, the producing config, and a SHA-256 per file) next to its
``*.safetensors`` weights and JSON plans. :func:`read_manifest` refuses a directory whose kind,
version, required files or fields, file hashes or weight headers do not match, naming what is
wrong (:class:`~edgeadapt.errors.ArtifactError`). Every file is written with the permissions a plain
``open()`` gives (0644 under the usual umask), through a temp file and a rename; temp files a killed
write left behind are removed by the next manifest write in that directory.

Re-saving over a valid artifact never leaves a moment without one (:func:`replacing_dir`): the new
artifact is written into a sibling ``.<name>.new-<pid>.tmp``, verified, and swapped in by two renames
(old aside to ``.<name>.old-<pid>.tmp``, new in, old removed). :func:`recover_dir` undoes what a
killed writer left (run on load, on claim and before every replacement): a staged copy is removed, an
old copy set aside is put back, so the previous valid artifact is what loads.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeadapt.errors import ArtifactError

MANIFEST = "manifest.json"
TMP_SUFFIX = ".tmp"

# The files each artifact kind cannot be loaded without, and the manifest fields it needs. A manifest
# that omits one (``"files": {}`` would otherwise switch verification off) is refused on load.
REQUIRED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pruned-model": (("model.safetensors", "base_config.json", "plan.json"), ("base",)),
    "knowledge-base": (("model/manifest.json", "gates.safetensors", "index.json", "kb.json"), ("base",)),
    "neuron-index": (("index.json",), ("base",)),
    "train-checkpoint": (("model.safetensors", "state.pt"), ()),
}


def _public_mode() -> int:
    """The mode a plain ``open()`` gives a new file under the current umask (0644 under 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_with(path: Path, write: Callable[[Path], None]) -> None:
    """Create ``path`` by calling ``write(tmp)`` on a temp file in the same directory, then
    renaming it over ``path``: a reader sees the old file or the whole new one, never a part.
    The result gets the permissions a plain ``open()`` would (``mkstemp`` makes 0600 files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _public_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and a rename."""
    atomic_write_with(Path(path), lambda tmp: tmp.write_bytes(data))


def clean_stale_temps(directory: Path) -> list[Path]:
    """Remove the ``*.tmp`` files a killed write left in ``directory`` (not recursive); returns them.
    Called when a manifest is written, i.e. after this process's own temp files were renamed."""
    directory = Path(directory)
    removed = [p for p in directory.glob(f"*{TMP_SUFFIX}") if p.is_file()] \
        + [p for p in directory.glob(f".*{TMP_SUFFIX}") if p.is_file()]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def check_safetensors_header(path: Path) -> None:
    """Refuse a ``*.safetensors`` file whose header is not a JSON object of the declared length
    (:class:`ArtifactError` naming the file), instead of a ``SafetensorError`` at load time."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ArtifactError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > size - 8:
            raise ArtifactError(f"{path} has a broken safetensors header (declares {n} header bytes in a "
                                f"{size}-byte file); re-create the artifact")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict):
        raise ArtifactError(f"{path} has a broken safetensors header (not a JSON object); "
                            "re-create the artifact")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path, kind: str, version: int, files: list[str],
                   **fields: Any) -> dict[str, Any]:
    """Hash ``files`` (relative to ``directory``) and write the manifest last, atomically, so a
    directory with a manifest is always complete. Every listed file gets the mode a plain ``open()``
    gives (libraries such as safetensors create 0600 files)."""
    from edgeadapt import __version__

    for name in files:
        try:
            os.chmod(directory / name, _public_mode())
        except OSError:
            pass  # not ours to change (or missing: refused below by the hash)
    manifest = {"kind": kind, "format_version": version, "edgeadapt_version": __version__,
                **fields, "files": {f: sha256_file(directory / f) for f in files}}
    clean_stale_temps(directory)
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True, default=str))
    return manifest


def _check_structure(directory: Path, manifest: dict[str, Any], kind: str, required: Sequence[str],
                     fields: Sequence[str]) -> dict[str, Any]:
    """The manifest is an object with a non-empty ``files`` map of hex digests naming every
    required file, and the fields the kind needs (``base`` with a ``hash``)."""
    where = directory / MANIFEST
    files = manifest.get("files")
    if not isinstance(files, Mapping) or not all(isinstance(v, str) for v in files.values()):
        raise ArtifactError(f"{where}: 'files' must map each file to its SHA-256, found {files!r}")
    if not files:
        raise ArtifactError(f"{where} lists no files, so nothing could be verified; re-create the artifact")
    missing = [f for f in required if f not in files]
    if missing:
        raise ArtifactError(f"{where} does not list the {kind} file(s) {missing}, so they cannot be "
                            "verified; re-create the artifact")
    for name in fields:
        value = manifest.get(name)
        if not isinstance(value, dict) or (name == "base" and not isinstance(value.get("hash"), str)):
            raise ArtifactError(f"{where} lacks {name!r} (the base model's identity and hash); "
                                "re-create the artifact")
    return manifest


def read_manifest(directory: str | Path, kind: str, version: int, verify: bool = True) -> dict[str, Any]:
    """Load and check a manifest: it exists, is an object with ``kind`` and ``version``, lists
    every file its kind requires (:data:`REQUIRED`) and the fields it needs, and (``verify``)
    every listed file exists with its recorded hash and every ``*.safetensors`` file has a sound
    header. Raises :class:`ArtifactError` naming the problem."""
    directory = Path(directory)
    path = directory / MANIFEST
    recover_dir(directory)  # a killed re-save or --overwrite run: put the previous artifact back
    if not directory.is_dir():
        wait_for_swap(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not an edgeadapt artifact (no {MANIFEST}: the directory "
                            "does not exist)")
    if not path.is_file():
        raise ArtifactError(f"{directory} is not an edgeadapt artifact (no {MANIFEST}; an interrupted "
                            "write leaves none): re-create it")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is corrupted (invalid JSON: {exc})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} is not a JSON object (found a {type(manifest).__name__}); "
                            "re-create the artifact")
    if manifest.get("kind") != kind:
        raise ArtifactError(f"{directory} holds a {manifest.get('kind')!r} artifact, expected {kind!r}")
    if manifest.get("format_version") != version:
        raise ArtifactError(f"{directory} has format version {manifest.get('format_version')}, this "
                            f"edgeadapt reads version {version}; re-create the artifact")
    required, fields = REQUIRED.get(kind, ((), ()))
    _check_structure(directory, manifest, kind, required, fields)
    if verify:
        for name, digest in manifest["files"].items():
            f = directory / name
            if not f.is_file():
                raise ArtifactError(f"{directory} is incomplete: {name} is missing")
            if name.endswith(".safetensors"):
                check_safetensors_header(f)
            if sha256_file(f) != digest:
                raise ArtifactError(f"{directory}/{name} is corrupted or was modified (hash mismatch)")
    return manifest


# -- replacing a directory: never a moment without a valid version -----------------------------------

# A sibling of a directory being replaced: ``new`` (the staged replacement), ``old`` (the previous
# version set aside during the swap, or being removed), ``prev`` (what an --overwrite run set aside
# until it finishes; see edgeadapt.rundir.claim_output). The writer's PID tells a killed writer's
# leftovers from a running one's.
ROLES = ("new", "old", "prev")


def lock_path(directory: str | Path) -> Path:
    """The lock file of ``directory`` (edgeadapt.rundir.OutputLock): ``<parent>/.<name>.lock``, beside
    the directory so that swapping the directory never swaps its lock."""
    directory = Path(directory).absolute()
    return directory.parent / f".{directory.name}.lock"


def sibling(directory: str | Path, role: str, pid: int | None = None) -> Path:
    """``<parent>/.<name>.<role>-<pid>.tmp``: where a replacement of ``directory`` stages or sets aside."""
    directory = Path(directory)
    return directory.parent / f".{directory.name}.{role}-{pid or os.getpid()}{TMP_SUFFIX}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` is running (a zombie, killed but not yet reaped, is not)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def leftovers(directory: str | Path) -> list[tuple[str, int, Path]]:
    """``(role, pid, path)`` of every sibling a replacement of ``directory`` made (:func:`sibling`)."""
    directory = Path(directory).absolute()
    roles, name = "|".join(ROLES), re.escape(directory.name)
    pattern = re.compile(rf"^\.{name}\.({roles})-(\d+){re.escape(TMP_SUFFIX)}$")
    try:
        names = os.listdir(directory.parent)
    except OSError:
        return []
    found = [(m.group(1), int(m.group(2)), directory.parent / n) for n in names if (m := pattern.match(n))]
    return sorted(found, key=lambda f: (f[2].stat().st_mtime if f[2].exists() else 0.0, str(f[2])))


def remove_tree(path: Path) -> None:
    """Remove a file, a link or a directory tree; a missing path is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _try_lock(directory: Path) -> int | None:
    """A held non-blocking flock on ``directory``'s lock file, or None when another run holds it (or
    the lock file cannot be created, e.g. a read-only parent)."""
    try:
        fd = os.open(lock_path(directory), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        return None
    return fd


def recover_dir(directory: str | Path, *, locked: bool = False) -> list[Path]:
    """Undo what a killed replacement of ``directory`` left beside it; returns the paths removed.

    * ``prev`` (a killed ``--overwrite`` run): its output is incomplete, so ``directory`` is removed
      and what was there before is put back;
    * ``old`` with ``directory`` missing (killed between the two renames of a swap): put back;
    * every other leftover of a dead writer (a half-written ``new``, an ``old`` half removed) is removed.

    Leftovers of running writers are left alone. Unless ``locked`` (the caller holds the directory's
    lock), this takes the lock first and does nothing when another run holds it."""
    directory = Path(directory)
    dead = [(role, path) for role, pid, path in leftovers(directory) if not pid_alive(pid)]
    if not dead:
        return []
    fd = None if locked else _try_lock(directory)
    if not locked and fd is None:
        return []
    try:
        prev = [path for role, path in dead if role == "prev"]
        old = [path for role, path in dead if role == "old"]
        if prev:
            remove_tree(directory)
            os.rename(prev[0], directory)
        elif old and not os.path.lexists(directory):
            os.rename(old[0], directory)
        removed = [path for _, path in dead if os.path.lexists(path)]
        for path in removed:
            remove_tree(path)
        return removed
    finally:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def wait_for_swap(directory: Path, seconds: float = 2.0) -> None:
    """While a running writer has set ``directory`` aside for the instant of a swap, wait (up to
    ``seconds``) for the new version to be renamed in."""
    deadline = time.monotonic() + seconds
    while not os.path.lexists(directory) and time.monotonic() < deadline and any(
            role == "old" and pid_alive(pid) for role, pid, _ in leftovers(directory)):
        time.sleep(0.01)


def _owned(directory: Path) -> set[str]:
    """The top-level entries of ``directory`` that belong to its artifact (its manifest and the first
    path component of every file the manifest lists), empty when it has no readable manifest."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return set()
    files = manifest.get("files") if isinstance(manifest, dict) else None
    return {MANIFEST, *(str(f).split("/")[0] for f in files)} if isinstance(files, Mapping) else set()


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _carry(old: Path, new: Path) -> None:
    """Hard-link into ``new`` the entries of ``old`` that are not part of its artifact and that ``new``
    lacks (a run's ``run.json``, checkpoints, logs): ``old`` stays whole until the swap."""
    owned = _owned(old)
    for entry in old.iterdir():
        if entry.name in owned or entry.name.endswith(TMP_SUFFIX) or os.path.lexists(new / entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=_link_or_copy)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry), new / entry.name)
        else:
            _link_or_copy(str(entry), str(new / entry.name))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(staged: Path, directory: Path) -> None:
    """Put the finished ``staged`` directory at ``directory``: a missing one in one rename; an existing
    one is renamed aside (``old``), ``staged`` renamed in, and the old one removed. A kill between the
    two renames is undone by :func:`recover_dir` (the old one is put back)."""
    if os.path.lexists(directory):
        aside = sibling(directory, "old")
        remove_tree(aside)
        os.rename(directory, aside)
        os.rename(staged, directory)
        _fsync_dir(directory.parent)
        remove_tree(aside)
    else:
        os.rename(staged, directory)
        _fsync_dir(directory.parent)


def verify_dir(directory: Path) -> dict[str, Any]:
    """Read ``directory``'s manifest and verify it as the kind and version it declares."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{directory}: the artifact written has no readable {MANIFEST} ({exc})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{directory / MANIFEST} is not a JSON object")
    return read_manifest(directory, str(manifest.get("kind")), manifest.get("format_version"))


@contextmanager
def replacing_dir(directory: str | Path) -> Iterator[Path]:
    """Write a new artifact in place of ``directory`` without ever leaving it without a valid one.

    Yields an empty staging directory beside ``directory``; write the whole artifact (manifest
    included) there. On a normal exit the staged artifact is verified (:func:`verify_dir`), the
    entries of ``directory`` that are not part of its old artifact (a run's ``run.json``,
    checkpoints, logs) are hard-linked in, and it is swapped in (:func:`swap_in`). An exception
    removes the staging directory and leaves ``directory`` untouched; a kill leaves it untouched too
    (the leftover is removed by the next :func:`recover_dir`).

    >>> with replacing_dir("runs/kb") as tmp:  # doctest: +SKIP
    ...     write_everything_into(tmp)
    """
    directory = Path(directory)
    recover_dir(directory)
    staged = sibling(directory, "new")
    remove_tree(staged)
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.mkdir()
    try:
        yield staged
        verify_dir(staged)
        if directory.is_dir():
            _carry(directory, staged)
        swap_in(staged, directory)
    except BaseException:
        remove_tree(staged)
        raise
