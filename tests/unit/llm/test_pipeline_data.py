"""llm-prune reads its corpus from the configured source: local WikiText-2 parquet mirrors through
HF datasets, local text files (split lists or a 90/5/5 split by document), the built-in corpus."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edgeadapt.config import parse_config
from edgeadapt.llm.pipeline import block_batches, corpus, token_ids
from edgeadapt.models.registry import load_adapter


def cfg(**fields):
    return parse_config({"kind": "llm-prune", "model": "tiny-llama", "sparsity": 0.2, **fields})


def test_wikitext2_from_local_parquet_mirror(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    files = {}
    for split, rows in (("train", [" = A = \n", " alpha beta . \n"]), ("validation", [" gamma . \n"]),
                        ("test", ["", " delta epsilon . \n", " zeta . \n"])):
        pq.write_table(pa.table({"text": rows}), tmp_path / f"{split}.parquet")
        files[split if split != "validation" else "val"] = [tmp_path / f"{split}.parquet"]
    c = cfg(dataset="wikitext2", data_paths=files)
    assert corpus(c, "test") == [" delta epsilon . \n", " zeta . \n"]
    assert corpus(c, "train") == [" = A = \n", " alpha beta . \n"]


def test_text_files_split_lists_and_automatic_split(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("first training document\n")
    (tmp_path / "test.txt").write_text("the held out document\n")
    c = cfg(dataset="text-files",
            data_paths={"train": [tmp_path / "train.txt"], "test": [tmp_path / "test.txt"]})
    assert corpus(c, "test") == ["the held out document"]
    with pytest.raises(ValueError, match="no 'val' files listed"):
        corpus(c, "val")
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(f'{{"text": "document number {i}"}}\n' for i in range(200)))
    c = cfg(dataset="text-files", data_paths=[docs])
    splits = {s: corpus(c, s) for s in ("train", "val", "test")}
    assert sum(len(v) for v in splits.values()) == 200
    assert not set(splits["train"]) & set(splits["test"]) and 150 < len(splits["train"]) < 200


def test_blocks_are_disjoint_seq_len_windows_with_labels() -> None:
    adapter = load_adapter("tiny-llama")
    ids = token_ids(adapter, corpus(cfg(), "val"))
    batches = list(block_batches(ids, 32, 8)(0))
    assert all(b["input_ids"].shape[1] == 32 for b in batches)
    assert sum(len(b["input_ids"]) for b in batches) == len(ids) // 32
    assert (batches[0]["labels"] == batches[0]["input_ids"]).all()
    assert (batches[0]["input_ids"][1, 0] == ids[32])
    with pytest.raises(ValueError, match="seq_len"):
        block_batches(ids[:10], 32, 8)
