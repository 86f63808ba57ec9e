"""The datasets edgeadapt knows by name: built-in offline data and real loaders for local and hub data.

- ``digits``: scikit-learn's handwritten digits as 3-channel images (offline); ``only_classes`` keeps
  a subset of the digits with their labels unchanged (also on ``digits-c``), for class-incremental streams.
- ``digits-c``: digits under one of CIFAR-10-C's 19 corruptions, its parameters at 32×32 (offline).
- ``builtin-docs``: Python's bundled documentation text (offline).
- ``stdlib-text``: text shipped with Python by ``source`` (docs, docstrings, code, e-mail, licences), offline.
- ``text-files``: local .txt/.jsonl/.json/.parquet files (``root`` = a file or folder).
- ``wikitext2``, ``c4``: Hugging Face datasets by name (``root`` = a folder of local files).
- ``image-folder``: ``root/<class>/<image>`` (or ``root/{train,val,test}/<class>/...``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgeadapt.data.registry import register_dataset
from edgeadapt.data.splits import ImageSplit, TextSplit
from edgeadapt.errors import ConfigError

DIGITS = tuple(str(i) for i in range(10))
_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_SPLIT_SEED = {"train": 0, "val": 1, "test": 2}
MIN_TEXT_DOCUMENTS = 3  # text-files without split files: one each for train, val and test


def parse_only_classes(spec: str | int | list[int] | tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The digit classes an ``only_classes`` option keeps: ``"0-4"``, ``"5,7,9"``, ``"0-2,8"``, one
    digit, or a list of digits (``[0, 1, 2]`` in YAML); ``None`` keeps all ten. A class outside 0-9,
    an empty or malformed list is a :class:`~edgeadapt.errors.ConfigError`."""
    if spec is None:
        return None
    if isinstance(spec, (list, tuple)):
        spec = ",".join(map(str, spec))
    out: set[int] = set()
    try:
        for part in str(spec).split(","):
            lo, _, hi = part.strip().partition("-")
            out.update(range(int(lo), int(hi if hi else lo) + 1))
    except ValueError:
        out = set()
    if not out or not out <= set(range(len(DIGITS))):
        raise ConfigError(f"only_classes: {spec!r} must list digit classes 0-9, e.g. '0-4' or '5,7,9'")
    return tuple(sorted(out))


def keep_classes(split: ImageSplit, only: tuple[int, ...] | None) -> ImageSplit:
    """``split`` restricted to the samples of the classes ``only`` (labels and class names unchanged,
    so a model's head keeps its ten outputs: class-incremental streams); all of it for ``None``."""
    if only is None:
        return split
    return split.subset(torch.isin(split.labels, torch.tensor(only)).nonzero().flatten())


def _no_root(name: str, root: Path | None) -> None:
    if root is not None:
        raise ConfigError(f"dataset {name!r} is built in and takes no root; remove 'root' ({root})")


@register_dataset(name="digits", task="image-classification", classes=DIGITS, class_aliases=dict(zip(_NAMES, DIGITS)))
class Digits:
    """scikit-learn's 1,797 handwritten digits, upsampled to size x size, 3 channels."""

    splits = ("train", "val", "test")

    def __init__(self, size: int = 16, only_classes: str | int | None = None):
        self.size = size
        self.only = parse_only_classes(only_classes)

    def load(self, root: Path | None, split: str) -> ImageSplit:
        from edgeadapt.data.digits import digits_tensors

        _no_root("digits", root)
        x, y = digits_tensors(split, size=self.size)
        return keep_classes(ImageSplit(x, y, DIGITS), self.only)


@register_dataset(name="digits-c", task="image-classification", classes=DIGITS,
                  class_aliases=dict(zip(_NAMES, DIGITS)))
class DigitsC:
    """Digits under one of CIFAR-10-C's 19 corruptions at a severity 1-5, with CIFAR-10-C's
    parameters (seeded). The images are corrupted at 32×32 — the size those parameters are for —
    then box-averaged to ``size`` (bilinear if larger); clean 16×16 digits are exactly the box
    average of clean 32×32 ones, so at 16 only the corruption differs from ``digits``."""

    splits = ("train", "val", "test")

    def __init__(self, corruption: str = "gaussian_noise", severity: int = 3, size: int = 16,
                 corruption_seed: int = 0, only_classes: str | int | None = None):
        from edgeadapt.data.corruptions import check_corruption

        check_corruption(corruption, severity)
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ConfigError(f"digits-c: size must be an integer >= 8, got {size!r}")
        self.corruption, self.severity, self.size, self.seed = corruption, severity, size, corruption_seed
        self.only = parse_only_classes(only_classes)

    def load(self, root: Path | None, split: str) -> ImageSplit:
        from edgeadapt.data.corruptions import REFERENCE_SIZE, corrupt

        clean = Digits(REFERENCE_SIZE).load(root, split)
        # Each split gets its own noise so a model cannot memorise the corruption pattern.
        seed = self.seed * 10 + _SPLIT_SEED[split]
        images = corrupt(clean.images, self.corruption, self.severity, seed=seed, size=self.size)
        return keep_classes(ImageSplit(images, clean.labels, DIGITS), self.only)


@register_dataset(name="builtin-docs", task="language-modeling")
class BuiltinDocs:
    """Paragraphs of Python's bundled documentation (pydoc_data), split by topic hash."""

    splits = ("train", "val", "test")

    def load(self, root: Path | None, split: str) -> TextSplit:
        from edgeadapt.data.text import builtin_paragraphs

        _no_root("builtin-docs", root)
        return TextSplit(tuple(builtin_paragraphs(split)))


@register_dataset(name="stdlib-text", task="language-modeling")
class StdlibText:
    """Text that ships with Python, by ``source``: pydoc-topics, docstrings, source-code, email, licences.

    The built-in text drift stream (:data:`edgeadapt.data.text_domains.DEFAULT_TEXT_STREAM`); splits
    by document hash; ``max_chars`` bounds the characters read per source."""

    splits = ("train", "val", "test")

    def __init__(self, source: str = "pydoc-topics", max_chars: int = 400_000):
        from edgeadapt.data.text_domains import check_source

        check_source(source, max_chars)
        self.source, self.max_chars = source, max_chars

    def load(self, root: Path | None, split: str) -> TextSplit:
        from edgeadapt.data.text_domains import domain_texts

        _no_root("stdlib-text", root)
        return TextSplit(tuple(domain_texts(self.source, split, self.max_chars)))


@register_dataset(name="text-files", task="language-modeling")
class TextFiles:
    """Local text files (.txt/.jsonl/.json/.parquet): ``root`` is a file or a folder.

    A folder with ``train``/``val``/``test`` subfolders (or files named so) gives those splits; with
    train and test but no val files, seeded 10% (at least one) of the train documents are the
    validation split (empty for a single train document). Otherwise seeded documents (paragraphs of a
    .txt, records of a .jsonl/.json/.parquet) are held out: 80/10/10, and for a small corpus (3-7
    documents) one validation and one test document. Fewer than :data:`MIN_TEXT_DOCUMENTS` documents
    cannot fill three splits: a :class:`ConfigError` says so, with the count and the fix."""

    splits = ("train", "val", "test")

    def load(self, root: Path | None, split: str) -> TextSplit:
        from edgeadapt.data.external import load_text_files

        if root is None:
            raise ConfigError("dataset 'text-files' needs root: a text file or a folder of them")
        parts = _split_paths(root, split)
        train_parts = _split_paths(root, "train")
        if split != "test" and train_parts is not None and _split_paths(root, "val") is None:
            # Named train files but no val: carve val from train, never from the test files.
            docs = TextSplit(tuple(load_text_files(train_parts)))
            train, val = docs.split(0.1, seed=0) if len(docs) > 1 else (docs, TextSplit(()))
            return train if split == "train" else val
        if parts is not None:
            return TextSplit(tuple(load_text_files(parts)))
        docs = TextSplit(tuple(load_text_files(root)))
        n = len(docs)
        if n < MIN_TEXT_DOCUMENTS:
            chars = sum(map(len, docs.texts))
            raise ConfigError(
                f"dataset 'text-files': {root} holds {n} document{'s' * (n != 1)} ({chars} characters; a "
                f"document is a paragraph of a .txt file, separated by blank lines, or a record of a "
                f".jsonl/.json/.parquet file), so the 'val' split would be empty: train, val and test need "
                f"one document each, at least {MIN_TEXT_DOCUMENTS} in all; add text (or blank lines between "
                f"paragraphs), or give the splits yourself as train/val/test files or subfolders")
        # 20% held out (then halved), but at least one document each for val and test; for 8+ documents
        # this is exactly the 80/10/10 split of earlier versions.
        held_out = 0.2 if round(0.2 * n) >= 2 else 2 / n
        train, rest = docs.split(held_out, seed=0)
        val, test = rest.split(0.5, seed=0)
        return {"train": train, "val": val, "test": test}[split]


def _split_paths(root: Path, split: str) -> list[Path] | None:
    """Files for ``split`` under ``root`` (a ``split`` subfolder or files whose stem starts with it)."""
    if not root.is_dir():
        return None
    aliases = {"val": ("val", "valid", "validation"), "train": ("train",), "test": ("test",)}[split]
    for alias in aliases:
        if (root / alias).is_dir():
            return [root / alias]
    files = sorted(p for p in root.iterdir() if p.is_file() and p.name.split(".")[0].split("-")[0] in aliases)
    return files or None


class _HubText:
    splits = ("train", "val", "test")
    hub_name = ""

    def __init__(self, max_docs: int | None = None):
        self.max_docs = max_docs

    def load(self, root: Path | None, split: str) -> TextSplit:
        from edgeadapt.data.external import load_hf_text

        files = None
        if root is not None:
            files = _split_paths(root, split)
            if files is None:
                raise ConfigError(f"dataset {self.hub_name!r}: no local files for split {split!r} under {root} "
                                 "(expected a train/val/test subfolder or files named train*, validation*, test*)")
        return TextSplit(tuple(load_hf_text(self.hub_name, split, data_files=[str(f) for f in files] if files else None,
                                            max_docs=self.max_docs)))


@register_dataset(name="wikitext2", task="language-modeling")
class WikiText2(_HubText):
    """WikiText-2 (raw) from the Hugging Face hub, or local parquet/json files under root."""

    hub_name = "wikitext2"


@register_dataset(name="c4", task="language-modeling")
class C4(_HubText):
    """One shard of C4 (English) from the Hugging Face hub, or local files under root."""

    hub_name = "c4"


@register_dataset(name="image-folder", task="image-classification")
class ImageFolder:
    """Local images: root/<class>/<image> or root/{train,test}/<class>/<image>."""

    splits = ("train", "test")

    def __init__(self, size: int = 32):
        self.size = size

    def load(self, root: Path | None, split: str) -> ImageSplit:
        from edgeadapt.data.image_folder import load_image_folder

        if root is None:
            raise ConfigError("dataset 'image-folder' needs root: a folder of <class>/<image> subfolders")
        if (root / "train").is_dir() and (root / "test").is_dir():
            x, y, classes = load_image_folder(root / split, self.size)
            return ImageSplit(x, y, tuple(classes))
        x, y, classes = load_image_folder(root, self.size)
        train, test = ImageSplit(x, y, tuple(classes)).split(0.2, seed=0)
        return train if split == "train" else test
