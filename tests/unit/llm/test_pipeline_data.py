"""llm-prune reads its corpus through the dataset registry — local WikiText-2 parquet mirrors, local
text files (split folders or the registry's 80/10/10 split by document), the built-in corpus — so a
folder gives the same splits as under `edgeadapt train`; it batches with the one token-block batcher
and picks its GPU with a device string, never by overriding CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edgeadapt.config import parse_config
from edgeadapt.data.registry import build_dataset
from edgeadapt.data.tokens import token_blocks
from edgeadapt.errors import ConfigError
from edgeadapt.llm.pipeline import corpus, select_device, token_ids
from edgeadapt.models.registry import load_adapter


def cfg(**fields):
    return parse_config({"kind": "llm-prune", "model": "tiny-llama", "param_sparsity": 0.2, **fields})


def test_wikitext2_from_local_parquet_mirror(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    root = tmp_path / "wikitext"
    root.mkdir()
    for split, rows in (("train", [" = A = \n", " alpha beta . \n"]), ("validation", [" gamma . \n"]),
                        ("test", ["", " delta epsilon . \n", " zeta . \n"])):
        pq.write_table(pa.table({"text": rows}), root / f"{split}.parquet")
    c = cfg(dataset="wikitext2", data_root=root)
    assert corpus(c, "test") == [" delta epsilon . \n", " zeta . \n"]
    assert corpus(c, "train") == [" = A = \n", " alpha beta . \n"]


def test_text_files_split_folders(tmp_path: Path) -> None:
    for split, text in (("train", "first training document"), ("val", "a validation document"),
                        ("test", "the held out document")):
        (tmp_path / split).mkdir()
        (tmp_path / split / "a.txt").write_text(text + "\n")
    c = cfg(dataset="text-files", data_root=tmp_path)
    assert corpus(c, "test") == ["the held out document"]
    assert corpus(c, "val") == ["a validation document"]


def test_text_files_split_exactly_like_the_registry_used_by_train(tmp_path: Path) -> None:
    """The same folder gives the same test set under `edgeadapt train` (data.root through
    build_dataset) and `edgeadapt llm-prune` (data_root): the registry's 80/10/10 split."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "corpus.jsonl").write_text("".join(f'{{"text": "document number {i}"}}\n' for i in range(200)))
    c = cfg(dataset="text-files", data_root=docs)
    splits = {s: corpus(c, s) for s in ("train", "val", "test")}
    registry = build_dataset("text-files", root=docs, seed=3)  # what `train` builds (any seed)
    for s in ("train", "val", "test"):
        assert splits[s] == list(getattr(registry, s).texts)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [160, 20, 20]


def test_retired_data_paths_is_refused_with_the_new_field(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("text\n")
    with pytest.raises(ConfigError, match="data_paths: replaced by data_root"):
        cfg(dataset="text-files", data_paths=[tmp_path / "a.txt"])


def test_blocks_come_from_the_one_token_block_batcher() -> None:
    adapter = load_adapter("tiny-llama")
    ids = token_ids(adapter, corpus(cfg(), "val"))
    batches = list(token_blocks(ids, 32, 8)(0))
    assert all(b["input_ids"].shape[1] == 32 for b in batches)
    assert sum(len(b["input_ids"]) for b in batches) == len(ids) // 32
    assert (batches[0]["labels"] == batches[0]["input_ids"]).all()
    assert (batches[0]["input_ids"][1, 0] == ids[32])
    with pytest.raises(ValueError, match="seq_len"):
        token_blocks(ids[:10], 32, 8)


# -- gpu_ids and CUDA_VISIBLE_DEVICES --------------------------------------------------------------

def test_gpu_ids_select_a_device_without_touching_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert select_device("auto", [1]) == "cuda:1"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # library code does not write it
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,1")
    assert select_device("auto", [1]) == "cuda:1"  # physical GPU 1 is the second visible one
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert select_device("auto", [1]) == "cuda:0"
    assert select_device(False, []) == "cpu" and select_device("auto", []) == "auto"


def test_cuda_visible_devices_that_disagrees_with_gpu_ids_is_an_error(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ConfigError, match=r"gpu_ids: \[3\] disagrees with CUDA_VISIBLE_DEVICES='0'"):
        select_device("auto", [3])
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"  # not overridden either way
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="disagrees with CUDA_VISIBLE_DEVICES='0'"):
        select_device("auto", [0, 1])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert select_device("auto", [0, 1]) == "cuda"  # accelerate gives each rank its device
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match="accelerate launch --gpu_ids 0,1 --num_processes 2"):
        select_device("auto", [0, 1])
