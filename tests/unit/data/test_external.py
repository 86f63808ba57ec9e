"""External-data loaders on small local fixtures: HF text tables, text files, LM blocks, image folders.

Nothing here downloads: hub loaders read local copies through ``data_files`` and the one hub call
checks that offline mode fails fast with an actionable message.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from edgeadapt.data.external import HF_TEXT_DATASETS, load_hf_text, load_text_files
from edgeadapt.data.image_folder import load_image_folder, scan_image_folder
from edgeadapt.errors import PathError

# WikiText's raw rows: headings, paragraphs with trailing newlines, and empty separator rows.
WIKI_TEST = ["", " = Valkyria = \n", "", " The game began development in 2010 . \n", "  ",
             " It met with positive sales in Japan . \n", ""]
WIKI_TRAIN = [" = Robert = \n", "", " Robert is an English actor . \n"]


def _parquet(path: Path, rows: list[str]) -> Path:
    pq.write_table(pa.table({"text": rows}), path)
    return path


def _c4_jsonl_gz(path: Path, rows: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, text in enumerate(rows):
            f.write(json.dumps({"text": text, "timestamp": "2019-04-25", "url": f"https://x/{i}"}) + "\n")
    return path


# --- load_hf_text -----------------------------------------------------------------------------------

def test_wikitext_from_local_parquet_keeps_nonempty_raw_lines(tmp_path: Path) -> None:
    files = {"train": str(_parquet(tmp_path / "train.parquet", WIKI_TRAIN)),
             "test": str(_parquet(tmp_path / "test.parquet", WIKI_TEST))}
    got = load_hf_text("wikitext2", "test", data_files=files, cache_dir=tmp_path / "hf")
    assert got == [" = Valkyria = \n", " The game began development in 2010 . \n",
                   " It met with positive sales in Japan . \n"]
    assert load_hf_text("wikitext2", "train", data_files=files, cache_dir=tmp_path / "hf") == \
        [" = Robert = \n", " Robert is an English actor . \n"]


def test_split_names_map_to_the_source_and_max_docs_limits(tmp_path: Path) -> None:
    val = _parquet(tmp_path / "validation.parquet", WIKI_TEST)
    # our "val" finds a mapping keyed by the source's own split name
    got = load_hf_text("wikitext2", "val", data_files={"validation": [val]}, cache_dir=tmp_path / "hf",
                       max_docs=2)
    assert got == [" = Valkyria = \n", " The game began development in 2010 . \n"]
    with pytest.raises(ValueError, match="no entry for split 'test'"):
        load_hf_text("wikitext2", "test", data_files={"validation": [val]}, cache_dir=tmp_path / "hf")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_hf_text("wikitext2", "dev", data_files=str(val))


def test_c4_from_local_json_and_table_uses_validation_shards(tmp_path: Path) -> None:
    rows = ["Beginners BBQ Class Taking Place in Missoula!", "", "Discussion in 'Mac OS X Lion' started."]
    path = _c4_jsonl_gz(tmp_path / "c4-validation.00000-of-00008.json.gz", rows)
    assert load_hf_text("c4", "test", data_files=path, cache_dir=tmp_path / "hf") == [rows[0], rows[2]]
    c4 = HF_TEXT_DATASETS["c4"]
    assert c4.splits["test"] == c4.splits["val"] == "validation"
    assert c4.shards is not None and c4.shards["validation"].endswith("00000-of-00008.json.gz")


def test_unknown_dataset_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"dataset 'wikitext3'.*'c4'.*'wikitext2'"):
        load_hf_text("wikitext3", "test")


def test_missing_or_unsupported_local_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "test.parquet"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_hf_text("wikitext2", "test", data_files=[str(missing)])
    odd = tmp_path / "test.csv"
    odd.write_text("text\nhello\n")
    with pytest.raises(ValueError, match="must all be one of"):
        load_hf_text("wikitext2", "test", data_files=odd)


def test_offline_and_not_cached_fails_fast_with_a_fix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(PathError, match=r"not cached.*offline mode is on.*data_files=.*HF_HUB_OFFLINE"):
        load_hf_text("wikitext2", "test", cache_dir=tmp_path / "empty")
    assert time.perf_counter() - start < 10


# --- load_text_files --------------------------------------------------------------------------------

def test_txt_paragraphs_split_on_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("First paragraph\nstill first.\n\n \n  Second one.  \n\nok\n")
    assert load_text_files(path) == ["First paragraph\nstill first.", "Second one.", "ok"]
    assert load_text_files(str(path), min_chars=3) == ["First paragraph\nstill first.", "Second one."]


def test_jsonl_json_parquet_and_a_sorted_directory(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.jsonl").write_text('{"text": "from jsonl"}\n\n{"text": "second"}\n')
    (tmp_path / "a.txt").write_text("from txt")
    (tmp_path / "sub" / "c.json").write_text(json.dumps([{"text": "from json"}, "bare string"]))
    _parquet(tmp_path / "sub" / "d.parquet", ["from parquet", ""])
    (tmp_path / "README.md").write_text("not read")
    assert load_text_files(tmp_path / "b.jsonl") == ["from jsonl", "second"]
    assert load_text_files(tmp_path) == ["from txt", "from jsonl", "second", "from json", "bare string",
                                         "from parquet"]


def test_text_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_text_files([missing])
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    with pytest.raises(ValueError, match="no text"):
        load_text_files(tmp_path / "blank.txt")
    (tmp_path / "bad.jsonl").write_text('{"body": "no text field"}\n')
    with pytest.raises(ValueError, match="'text'"):
        load_text_files(tmp_path / "bad.jsonl")
    (tmp_path / "x.md").write_text("markdown")
    with pytest.raises(ValueError, match="unsupported"):
        load_text_files(tmp_path / "x.md")


# --- image folders ----------------------------------------------------------------------------------

COLOURS = {"bird": (0, 0, 255), "cat": (255, 0, 0), "dog": (0, 255, 0)}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """root/{bird: 1, cat: 2, dog: 3} solid-colour images of mixed sizes and formats, plus clutter."""
    from PIL import Image

    root = tmp_path / "images"
    for name, count in (("bird", 1), ("cat", 2), ("dog", 3)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            suffix = ".jpg" if name == "dog" and i == 0 else ".png"
            Image.new("RGB", (8 + i, 6), COLOURS[name]).save(root / name / f"{i}{suffix}")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()  # hidden directories are not classes
    return root


def test_scan_sorts_classes_and_files(folder: Path) -> None:
    files, labels, classes = scan_image_folder(folder)
    assert classes == ["bird", "cat", "dog"]
    assert labels == [0, 1, 1, 2, 2, 2]
    assert [f.name for f in files] == ["0.png", "0.png", "1.png", "0.jpg", "1.png", "2.png"]


def test_load_image_folder_shape_range_and_labels(folder: Path) -> None:
    x, y, names = load_image_folder(folder, size=4)
    assert x.shape == (6, 3, 4, 4) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert y.tolist() == [0, 1, 1, 2, 2, 2] and y.dtype == torch.long and names == ["bird", "cat", "dog"]
    # solid colours survive the resize: bird is blue, cat red (PNG is lossless)
    assert torch.equal(x[0, :, 0, 0], torch.tensor([-1.0, -1.0, 1.0]))
    assert torch.equal(x[1].mean(dim=(1, 2)), torch.tensor([1.0, -1.0, -1.0]))
    assert np.argmax(x[3].mean(dim=(1, 2)).numpy()) == 1  # the dog JPEG is mostly green


def test_class_order_is_validated_against_the_folder(folder: Path) -> None:
    load_image_folder(folder, 4, classes=["bird", "cat", "dog"])
    with pytest.raises(ValueError, match="order"):
        load_image_folder(folder, 4, classes=["cat", "dog", "bird"])
    with pytest.raises(ValueError, match=r"missing \['horse'\], unexpected \['dog'\]"):
        load_image_folder(folder, 4, classes=["bird", "cat", "horse"])


def test_ignore_and_remap(folder: Path) -> None:
    _, y, names = load_image_folder(folder, 4, ignore_classes=["bird"])
    assert y.tolist() == [0, 0, 1, 1, 1] and names == ["cat", "dog"]
    _, y, names = load_image_folder(folder, 4, ignore_classes=["bird"], remap={1: 1, 2: 0})
    assert y.tolist() == [1, 1, 0, 0, 0] and names == ["dog", "cat"]
    _, y, names = load_image_folder(folder, 4, remap={0: 0, 1: 0, 2: 1})  # merge bird and cat
    assert y.tolist() == [0, 0, 0, 1, 1, 1] and names == ["bird|cat", "dog"]


@pytest.mark.parametrize("kwargs, message", [
    ({"ignore_classes": ["horse"]}, "not folder classes"),
    ({"ignore_classes": ["bird", "cat", "dog"]}, "every class"),
    ({"ignore_classes": ["bird"], "remap": {0: 0, 1: 1, 2: 0}}, r"invalid or ignored \[0\]"),
    ({"remap": {0: 0, 1: 1}}, r"unmapped classes \['dog'\]"),
    ({"remap": {0: 0, 1: 2, 2: 3}}, "without gaps"),
    ({"remap": {0: -1, 1: 0, 2: 1}}, "without gaps"),
])
def test_ignore_and_remap_are_validated(folder: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_image_folder(folder, 4, **kwargs)


def test_folder_errors(tmp_path: Path, folder: Path) -> None:
    (folder / "fish").mkdir()
    with pytest.raises(ValueError, match="class 'fish'.*no images"):
        load_image_folder(folder, 4)
    with pytest.raises(ValueError, match="not found"):
        scan_image_folder(tmp_path / "absent")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no class directories"):
        scan_image_folder(tmp_path / "flat")
    (folder / "fish" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_image_folder(folder, 4)
