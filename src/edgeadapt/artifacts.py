"""Artifact directories: atomic writes, a manifest, and verification on load.

Every stage writes a directory holding ``manifest.json`` (kind, format version, edgeadapt
version, base-model identity, the producing config, and a SHA-256 per file) next to its
``*.safetensors`` weights and JSON plans. :func:`read_manifest` refuses a directory whose kind,
version or file hashes do not match, naming what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edgeadapt.errors import ArtifactError

MANIFEST = "manifest.json"




def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path, kind: str, version: int, files: list[str], **fields: Any) -> dict[str, Any]:
    """Hash ``files`` (relative to ``directory``) and write the manifest last, atomically, so a
    directory with a manifest is always complete."""
    from edgeadapt import __version__

    manifest = {"kind": kind, "format_version": version, "edgeadapt_version": __version__,
                **fields, "files": {f: sha256_file(directory / f) for f in files}}
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True, default=str))
    return manifest


def read_manifest(directory: str | Path, kind: str, version: int, verify: bool = True) -> dict[str, Any]:
    """Load and check a manifest: it exists, has ``kind`` and ``version``, and (``verify``) every
    listed file exists with its recorded hash."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory} is not an edgeadapt artifact (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is corrupted (invalid JSON: {exc})") from None
    if manifest.get("kind") != kind:
        raise ArtifactError(f"{directory} holds a {manifest.get('kind')!r} artifact, expected {kind!r}")
    if manifest.get("format_version") != version:
        raise ArtifactError(f"{directory} has format version {manifest.get('format_version')}, this "
                            f"edgeadapt reads version {version}; re-create the artifact")
    if verify:
        for name, digest in manifest.get("files", {}).items():
            f = directory / name
            if not f.is_file():
                raise ArtifactError(f"{directory} is incomplete: {name} is missing")
            if sha256_file(f) != digest:
                raise ArtifactError(f"{directory}/{name} is corrupted or was modified (hash mismatch)")
    return manifest
