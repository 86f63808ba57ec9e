"""Artifact directories: atomic writes, a manifest, and verification on load.

Every stage writes a directory holding ``manifest.json`` (kind, format version, edgeadapt
version, base-model identity, the producing config, and a SHA-256 per file) next to its
``*.safetensors`` weights and JSON plans. :func:`read_manifest` refuses a directory whose kind,
version, required files or fields, file hashes or weight headers do not match, naming what is
wrong (:class:`~edgeadapt.errors.ArtifactError`). Every file is written with the permissions a plain
``open()`` gives (0644 under the usual umask), through a temp file and a rename; temp files a killed
write left behind are removed by the next manifest write in that directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Callable, Mapping, Sequence
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
    directory with a manifest is always complete."""
    from edgeadapt import __version__

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
