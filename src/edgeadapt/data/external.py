"""Text from outside the package: Hugging Face datasets, local text files, and LM blocks.

The built-in corpus (``text.py``) is offline; these loaders bring in the corpora that pruning and
perplexity papers report on (WikiText-2, C4, described in one table) or a user's own text. Local
mirrors are read through ``data_files`` with the matching ``datasets`` builder, which is how the
tests run: nothing downloads unless a hub dataset is asked for with offline mode off.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from edgeadapt.errors import ConfigError, PathError


@dataclass(frozen=True)
class HFTextSource:
    """Where a text dataset lives on the Hub and how our split names map onto its own."""

    path: str  # hub id passed to ``datasets.load_dataset``
    config: str | None  # config (subset) name
    field: str  # column holding the text
    splits: Mapping[str, str]  # our split (train/val/test) -> the source's split name
    shards: Mapping[str, str] | None = None  # source split -> one file, so C4 isn't fetched whole


HF_TEXT_DATASETS: dict[str, HFTextSource] = {
    "wikitext2": HFTextSource("Salesforce/wikitext", "wikitext-2-raw-v1", "text",
                              {"train": "train", "val": "validation", "test": "test"}),
    # C4 has no test split; SparseGPT/Wanda evaluate on the first validation shard.
    "c4": HFTextSource(
        "allenai/c4", "en", "text", {"train": "train", "val": "validation", "test": "validation"},
        shards={"train": "en/c4-train.00000-of-01024.json.gz",
                "validation": "en/c4-validation.00000-of-00008.json.gz"}),
}

_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".txt": "text"}


def _resolve(name: str, split: str) -> tuple[HFTextSource, str]:
    """The table entry and the source's split name; the source's own name is accepted too."""
    if name not in HF_TEXT_DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {sorted(HF_TEXT_DATASETS)}")
    src = HF_TEXT_DATASETS[name]
    if split not in src.splits and split not in src.splits.values():
        raise ConfigError(f"unknown split {split!r} for {name!r}; choose one of {sorted(src.splits)}")
    return src, src.splits.get(split, split)


def _suffix(path: Path) -> str:
    """The format suffix, looking through a ``.gz`` compression suffix."""
    return (path.with_suffix("") if path.suffix == ".gz" else path).suffix.lower()


def _load_local(data_files: str | Path | Sequence[str | Path] | Mapping[str, Any], split: str,
                source_split: str, cache_dir: str | Path | None) -> Any:
    """Pick the files for ``split``, check them, and read them with the matching builder."""
    if isinstance(data_files, Mapping):
        key = split if split in data_files else source_split
        if key not in data_files:
            raise ConfigError(f"data_files has no entry for split {split!r}; keys: {sorted(data_files)}")
        data_files = data_files[key]
    items = [data_files] if isinstance(data_files, (str, Path)) else list(data_files)
    paths = [Path(p).expanduser() for p in items]
    for p in paths:
        if not p.is_file():
            raise PathError(f"data file not found: {p}")
    builders = {_BUILDERS.get(_suffix(p)) for p in paths}
    if None in builders or len(builders) != 1:
        raise ConfigError(f"data_files must all be one of {sorted(_BUILDERS)} (optionally .gz); got {items}")
    from datasets import load_dataset

    return load_dataset(builders.pop(), data_files=list(map(str, paths)), split="train", cache_dir=cache_dir)


def _load_hub(name: str, src: HFTextSource, source_split: str, cache_dir: str | Path | None) -> Any:
    import datasets

    shard = (src.shards or {}).get(source_split)
    # Like SparseGPT/Wanda: name one shard and no config; C4's "en" config lists all 1,032 files.
    args = (src.path,) if shard else (src.path, src.config)
    extra = {"data_files": {source_split: shard}} if shard else {}
    try:
        return datasets.load_dataset(*args, split=source_split, cache_dir=cache_dir, **extra)
    except OSError as err:  # hub and datasets errors (offline, not found) are all OSErrors
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
        if not (offline or getattr(datasets.config, "HF_HUB_OFFLINE", False)):
            raise
        raise PathError(
            f"dataset {name!r} ({src.path}, split {source_split!r}) is not cached"
            f"{f' in {cache_dir}' if cache_dir else ''} and offline mode is on (HF_HUB_OFFLINE=1). "
            "Pass data_files= pointing at local .parquet/.json/.txt copies, or unset HF_HUB_OFFLINE "
            "once to download it into the cache.") from err


def load_hf_text(name: str, split: str,
                 data_files: str | Path | Sequence[str | Path] | Mapping[str, Any] | None = None,
                 cache_dir: str | Path | None = None, max_docs: int | None = None) -> list[str]:
    """Non-empty text rows of a table dataset (see ``HF_TEXT_DATASETS``) for ``split``.

    ``split`` is ours (train/val/test) or the source's name. ``data_files`` (a file, a list, or a
    mapping from split to files) reads local copies instead of the hub. Rows are otherwise kept
    as-is: WikiText perplexity joins its raw lines with ``"\\n\\n"`` (see :func:`edgeadapt.data.tokens.corpus_ids`).

    >>> load_hf_text("wikitext2", "test", data_files="mirror/wikitext2-test.parquet")  # doctest: +SKIP
    """
    src, source_split = _resolve(name, split)
    if max_docs is not None and max_docs < 1:
        raise ConfigError(f"max_docs must be >= 1, got {max_docs}")
    ds = _load_hub(name, src, source_split, cache_dir) if data_files is None \
        else _load_local(data_files, split, source_split, cache_dir)
    if src.field not in ds.column_names:
        raise ConfigError(f"dataset {name!r} has no column {src.field!r}; columns: {ds.column_names}")
    return list(islice((t for t in ds[src.field] if t and t.strip()), max_docs))


def _record_text(item: Any, path: Path) -> str:
    text = item.get("text") if isinstance(item, Mapping) else item
    if not isinstance(text, str):
        raise ConfigError(f"{path}: each record must be a string or an object with a 'text' string")
    return text


def _read_texts(path: Path) -> list[str]:
    kind = _suffix(path)
    if kind == ".parquet":
        import pyarrow.parquet as pq

        if "text" not in pq.read_schema(path).names:
            raise ConfigError(f"{path}: parquet file has no 'text' column")
        return [t for t in pq.read_table(path, columns=["text"]).column("text").to_pylist() if t]
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
        content = f.read()
    if kind == ".txt":
        return [p.strip() for p in re.split(r"\n\s*\n", content)]
    if kind == ".jsonl":
        return [_record_text(json.loads(line), path) for line in content.splitlines() if line.strip()]
    data = json.loads(content)  # .json: one record or a list of records
    return [_record_text(item, path) for item in (data if isinstance(data, list) else [data])]


def _expand(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        p = Path(p).expanduser()
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and _suffix(f) in _BUILDERS)
        elif p.is_file():
            if _suffix(p) not in _BUILDERS:
                raise ConfigError(f"unsupported text file {p}; expected one of {sorted(_BUILDERS)}")
            files.append(p)
        else:
            raise PathError(f"text path not found: {p}")
    return files


def load_text_files(paths: str | Path | Sequence[str | Path], min_chars: int = 1) -> list[str]:
    """Texts from local files: ``.txt`` (paragraphs split on blank lines), ``.jsonl``/``.json``
    (field ``"text"``) and ``.parquet`` (column ``"text"``), each optionally gzipped. A directory
    means every such file below it, sorted. Texts shorter than ``min_chars`` are dropped."""
    files = _expand(paths)
    texts = [t for f in files for t in _read_texts(f) if len(t.strip()) >= max(min_chars, 1)]
    if not texts:
        where = [str(f) for f in files] or paths
        raise ConfigError(f"no text of at least {min_chars} characters found in {where}")
    return texts
