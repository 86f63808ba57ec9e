"""A text drift stream from text that ships with every Python install (nothing downloads).

Five sources, each a distinct kind of text, registered as one dataset ``stdlib-text`` with the
option ``source``:

- ``pydoc-topics``: the documentation topics (``pydoc_data.topics``), prose paragraphs: exactly
  the ``builtin-docs`` dataset and its splits (the domain a knowledge base is usually built on);
- ``docstrings``: module, class and function docstrings of the standard library, read with
  :mod:`ast` from the source files (nothing is imported);
- ``source-code``: the standard library's code, one top-level statement group per text, with
  its docstrings removed (those are the ``docstrings`` source);
- ``email``: the e-mail messages of the standard library's test data
  (``test/test_email/data/msg_*.txt``), base64 attachment lines dropped; needs the ``test``
  package (some distributions ship it separately: an error names the missing folder);
- ``licences``: Python's ``LICENSE.txt`` and the licence files of the installed packages
  (``site-packages``), deduplicated.

Splits are by *document* (a module file, a message, a licence file): documents are ordered by a
SHA-256 of ``source/key``, the first 10% are test, the next 10% validation and the rest train (at
least one document each), so no document spans two splits; a paragraph repeated across documents
is kept only in the first. At most ``max_chars`` characters are read per source (whole documents,
in hash order), so the domains are of comparable size and load in seconds. ``pydoc-topics`` keeps
builtin-docs' own topic-hash splits, so its test text is held out from a model trained on it.

The shift is real. Perplexity of the reference LM (``runs/ref-llama``: ``tiny-llama-ref`` trained
on ``builtin-docs``, whose test perplexity is 124.2) on each source's test split, 128-token blocks,
default ``max_chars``, CPU, Python 3.11.7:

==============  ==========  ===========
source          perplexity  test tokens
==============  ==========  ===========
pydoc-topics         124.2       11,392
docstrings           289.6       27,136
source-code         1124.5       15,104
email                708.4        4,096
licences             299.5        7,552
==============  ==========  ===========

:data:`DEFAULT_TEXT_STREAM` goes from the source domain to farther text and back to prose
(124 → 290 → 1125 → 708 → 300), like the image stream mixing hard and easy domains: a method that
only helps on the far domains, or forgets prose while adapting to code, shows it.
"""

from __future__ import annotations

import ast
import hashlib
import re
import sys
import sysconfig
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

from edgeadapt.data.text import builtin_paragraphs
from edgeadapt.errors import ConfigError

SOURCES = ("pydoc-topics", "docstrings", "source-code", "email", "licences")
# The built-in text stream: the source domain, then farther text, then back to prose (module docstring).
DEFAULT_TEXT_STREAM = SOURCES
DEFAULT_MAX_CHARS = 400_000
MIN_CHARS = 80
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "lib2to3", "turtledemo"}
_BASE64_LINE = re.compile(r"^[A-Za-z0-9+/=]{40,}$")
_LICENCE_NAMES = ("LICENSE", "LICENCE", "COPYING")

Doc = tuple[str, Callable[[], list[str]]]  # (key, reader of the document's texts)
Document = tuple[str, tuple[str, ...]]  # (key, texts)


def stdlib_dir() -> Path:
    """The standard library folder of the running Python (``Lib`` of a source tree)."""
    return Path(sysconfig.get_paths()["stdlib"])


def _paragraphs(text: str, collapse: bool = True) -> list[str]:
    """Blank-line separated paragraphs of ``text`` of at least :data:`MIN_CHARS` characters;
    with ``collapse`` each paragraph's whitespace is collapsed to single spaces (prose)."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split()) if collapse else para.strip("\n").rstrip()
        if len(para) >= MIN_CHARS:
            out.append(para)
    return out


def _stdlib_modules() -> list[Path]:
    """The standard library's ``.py`` files, tests, demos and third-party packages excluded."""
    root = stdlib_dir()
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _SKIP_DIRS.isdisjoint(rel.parts[:-1]) and not rel.name.startswith("test_"):
            files.append(path)
    if not files:
        raise ConfigError(f"stdlib-text: no standard-library source files under {root}; this Python "
                          "install ships only compiled modules, so the docstrings and source-code sources "
                          "cannot be read; choose source pydoc-topics, email or licences")
    return sorted(files)


def _parse(path: Path) -> tuple[str, ast.Module] | None:
    try:
        source = path.read_text(encoding="utf-8")
        return source, ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return None  # a few stdlib files are deliberately broken or not UTF-8; skip them


_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def docstring_paragraphs(path: Path) -> list[str]:
    parsed = _parse(path)
    if parsed is None:
        return []
    texts = []
    for node in ast.walk(parsed[1]):
        if isinstance(node, _DOC_NODES):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                texts.extend(_paragraphs(doc))
    return texts


def code_chunks(path: Path) -> list[str]:
    """Top-level statement groups of a module (a def, a class, a run of other statements), with
    every docstring's lines removed."""
    parsed = _parse(path)
    if parsed is None:
        return []
    source, tree = parsed
    lines = source.splitlines()
    drop: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, _DOC_NODES) and node.body and isinstance(node.body[0], ast.Expr) \
                and isinstance(getattr(node.body[0], "value", None), ast.Constant) \
                and isinstance(node.body[0].value.value, str):
            drop.update(range(node.body[0].lineno - 1, node.body[0].end_lineno))
    texts: list[str] = []
    pending: list[str] = []
    for node in tree.body:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
        chunk = "\n".join(line.rstrip() for i, line in enumerate(lines[start:node.end_lineno], start)
                          if i not in drop and line.strip())
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            texts.extend(["\n".join(pending)] if pending else [])
            pending = []
            texts.append(chunk)
        elif chunk:
            pending.append(chunk)
    texts.extend(["\n".join(pending)] if pending else [])
    return [t for t in texts if len(t) >= MIN_CHARS]


def _email(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    kept = "\n".join(line.rstrip() for line in text.splitlines() if not _BASE64_LINE.match(line.strip()))
    kept = re.sub(r"\n{3,}", "\n\n", kept).strip()
    return [kept] if len(kept) >= MIN_CHARS else []


def _docs_pydoc() -> Iterator[Doc]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield name, (lambda name=name: _paragraphs(topics[name]))


def _docs_modules(reader: Callable[[Path], list[str]]) -> Iterator[Doc]:
    root = stdlib_dir()
    for path in _stdlib_modules():
        yield path.relative_to(root).as_posix(), (lambda path=path: reader(path))


def _docs_email() -> Iterator[Doc]:
    folder = stdlib_dir() / "test" / "test_email" / "data"
    files = sorted(folder.glob("msg_*.txt")) if folder.is_dir() else []
    if not files:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise ConfigError(f"stdlib-text source 'email' reads the e-mail messages of Python's test data "
                          f"({folder}/msg_*.txt), which this Python install lacks (Debian and Ubuntu ship "
                          f"them in the package libpython{version}-testsuite); install that or choose "
                          f"another source of {list(SOURCES)}")
    for path in files:
        yield path.name, (lambda path=path: _email(path))


def _licence_files() -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    python_licence = stdlib_dir() / "LICENSE.txt"
    if python_licence.is_file():
        found.append(("python/LICENSE.txt", python_licence))
    seen = {p for _, p in found}
    for site in sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}):
        site_path = Path(site)
        if not site_path.is_dir():
            continue
        for pattern in ("*/LICEN[CS]E*", "*/COPYING*", "*.dist-info/licenses/**/*"):
            for path in sorted(site_path.glob(pattern)):
                if path.is_file() and path not in seen and path.name.upper().startswith(_LICENCE_NAMES):
                    seen.add(path)
                    found.append((path.relative_to(site_path).as_posix(), path))
    return found


def _docs_licences() -> Iterator[Doc]:
    files = _licence_files()
    if not files:
        raise ConfigError(f"stdlib-text source 'licences' found no licence files (neither "
                          f"{stdlib_dir() / 'LICENSE.txt'} nor site-packages/*/LICENSE*); choose another "
                          f"source of {list(SOURCES)}")
    for key, path in files:
        yield key, (lambda path=path: _paragraphs(path.read_text(encoding="utf-8", errors="replace")))


def _documents(source: str) -> Iterator[Doc]:
    if source == "pydoc-topics":
        return _docs_pydoc()
    if source == "docstrings":
        return _docs_modules(docstring_paragraphs)
    if source == "source-code":
        return _docs_modules(code_chunks)
    if source == "email":
        return _docs_email()
    return _docs_licences()


def _rank(source: str, key: str) -> str:
    return hashlib.sha256(f"{source}/{key}".encode()).hexdigest()


@lru_cache(maxsize=8)
def domain_documents(source: str, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[Document, ...]:
    """``(key, texts)`` of the documents of ``source`` (cached per process) read in hash order
    until ``max_chars`` characters are held; paragraphs already seen in an earlier document are
    dropped; documents left with no text are skipped. Raises :class:`ConfigError` for an unknown
    source, a missing source folder, or fewer than 3 documents."""
    check_source(source, max_chars)
    docs = sorted(_documents(source), key=lambda doc: _rank(source, doc[0]))
    out: list[Document] = []
    seen: set[str] = set()
    total = 0
    for key, read in docs:
        texts = [t for t in read() if t not in seen]
        if not texts:
            continue
        seen.update(texts)
        out.append((key, tuple(texts)))
        total += sum(len(t) for t in texts)
        if total >= max_chars:
            break
    if len(out) < 3:
        raise ConfigError(f"stdlib-text source {source!r} has {len(out)} document(s) with text here; "
                          "train/val/test need at least 3; choose another source")
    return tuple(out)


def domain_texts(source: str, split: str, max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """The texts of ``source`` in ``split`` (train/val/test): the first 10% of the documents in
    hash order (at least one) are test, the next 10% validation, the rest train. ``pydoc-topics``
    is exactly ``builtin-docs`` (:func:`~edgeadapt.data.text.builtin_paragraphs`, split by topic)."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be one of train/val/test, got {split!r}")
    if source == "pydoc-topics":
        check_source(source, max_chars)
        # exactly ``builtin-docs`` (its topic-hash splits), so the first domain's held-out text is
        # held out from a knowledge base or reference LM trained on builtin-docs too
        return builtin_paragraphs(split)
    docs = domain_documents(source, max_chars)
    n_held = max(1, round(0.1 * len(docs)))
    part = {"test": docs[:n_held], "val": docs[n_held:2 * n_held], "train": docs[2 * n_held:]}[split]
    return [t for _, texts in part for t in texts]


def check_source(source: str, max_chars: int = DEFAULT_MAX_CHARS) -> None:
    """Refuse an unknown ``source`` or a non-positive ``max_chars`` (:class:`ConfigError`)."""
    if source not in SOURCES:
        raise ConfigError(f"stdlib-text: unknown source {source!r}; choose one of {list(SOURCES)}")
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1000:
        raise ConfigError(f"stdlib-text: max_chars must be an integer >= 1000, got {max_chars!r}")
