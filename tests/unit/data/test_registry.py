"""The dataset registry: registration rules, seeded splits, class handling, caching, built-ins."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from edgeadapt.data.registry import (
    build_dataset,
    dataset_info,
    list_datasets,
    register_dataset,
    unregister_dataset,
)
from edgeadapt.data.splits import ImageSplit, TextSplit


@pytest.fixture
def toy():
    """A 3-class dataset with train/test only, so the registry must carve out validation."""
    calls = []

    @register_dataset(name="toy-shapes", task="image-classification", classes=["circle", "square", "star"],
                      class_aliases={"round": "circle"})
    class Toy:
        splits = ("train", "test")

        def __init__(self, size: int = 4):
            self.size = size

        def load(self, root, split):
            calls.append(split)
            n = 60 if split == "train" else 30
            labels = torch.arange(n) % 3
            images = labels.float().view(n, 1, 1, 1).expand(n, 3, self.size, self.size).clone()
            return ImageSplit(images, labels, ("circle", "square", "star"))

    yield Toy, calls
    unregister_dataset("toy-shapes")


def test_builtins_are_registered():
    names = {d.name for d in list_datasets()}
    assert {"digits", "digits-c", "builtin-docs", "text-files", "wikitext2", "c4", "image-folder"} <= names
    assert dataset_info("digits").classes == tuple("0123456789")


@pytest.mark.parametrize("name", ["Bad Name", "", "-x", "UPPER", "a/b"])
def test_malformed_names_are_refused(name):
    with pytest.raises(ValueError, match="malformed"):
        register_dataset(name=name, task="text")


def test_duplicates_unknown_tasks_and_bad_classes_are_refused(toy):
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(name="toy-shapes", task="image-classification")
    with pytest.raises(ValueError, match="task"):
        register_dataset(name="toy-2", task="segmentation")
    with pytest.raises(ValueError, match="distinct"):
        register_dataset(name="toy-2", task="image-classification", classes=["a", "a"])
    with pytest.raises(ValueError, match="unknown class"):
        register_dataset(name="toy-2", task="image-classification", classes=["a"], class_aliases={"b": "c"})
    with pytest.raises(ValueError, match="load"):
        register_dataset(name="toy-2", task="text")(type("NoLoad", (), {}))


def test_validation_split_is_seeded_stratified_and_disjoint(toy):
    a = build_dataset("toy-shapes", val_fraction=0.2, seed=1)
    b = build_dataset("toy-shapes", val_fraction=0.2, seed=1)
    assert (len(a.train), len(a.val), len(a.test)) == (48, 12, 30)
    assert torch.equal(a.val.labels, b.val.labels)
    assert torch.bincount(a.val.labels).tolist() == [4, 4, 4]
    c = build_dataset("toy-shapes", val_fraction=0.2, seed=2)
    assert c is not a  # another seed is another cache entry


def test_results_are_cached_in_process(toy):
    _, calls = toy
    build_dataset("toy-shapes", size=4)
    n = len(calls)
    build_dataset("toy-shapes", size=4)
    assert len(calls) == n
    build_dataset("toy-shapes", size=5)
    assert len(calls) == n + 2


def test_ignore_classes_by_alias_and_automatic_renumbering(toy):
    s = build_dataset("toy-shapes", ignore_classes=["round"])
    assert s.train.classes == ("square", "star")
    assert set(s.train.labels.tolist()) == {0, 1}
    # image value encodes the original class: square (1) must now be label 0
    assert torch.all(s.train.images[s.train.labels == 0] == 1)


def test_remap_merges_classes(toy):
    s = build_dataset("toy-shapes", remap={0: 0, 1: 1, 2: 1})
    assert s.test.classes == ("circle", "square+star")
    assert torch.bincount(s.test.labels).tolist() == [10, 20]


@pytest.mark.parametrize("remap, match", [({0: 0, 1: 1}, "missing"), ({0: 0, 1: 2, 2: 2}, "without gaps"),
                                          ({0: 0, 1: 1, 2: 1, 5: 0}, "unexpected")])
def test_bad_remaps_are_refused(toy, remap, match):
    with pytest.raises(ValueError, match=match):
        build_dataset("toy-shapes", remap=remap)


def test_class_order_is_validated_against_the_data():
    @register_dataset(name="toy-misordered", task="image-classification", classes=["a", "b"])
    class Misordered:
        splits = ("train", "test")

        def load(self, root, split):
            return ImageSplit(torch.zeros(4, 3, 2, 2), torch.tensor([0, 1, 0, 1]), ("b", "a"))

    try:
        with pytest.raises(ValueError, match="registered order"):
            build_dataset("toy-misordered")
    finally:
        unregister_dataset("toy-misordered")


def test_unknown_dataset_and_option_are_named():
    with pytest.raises(ValueError, match="unknown; choose one of: .*digits"):
        build_dataset("digitz")
    with pytest.raises(ValueError, match="no option.*colour"):
        build_dataset("digits", colour=True)
    with pytest.raises(ValueError, match="takes no root"):
        build_dataset("digits", root="/tmp")


def test_digits_and_digits_c_builtins():
    clean = build_dataset("digits", size=16)
    fog = build_dataset("digits-c", corruption="fog", severity=3, size=16)
    assert clean.test.images.shape == fog.test.images.shape == (360, 3, 16, 16)
    assert torch.equal(clean.test.labels, fog.test.labels)
    assert (fog.test.images - clean.test.images).abs().mean() > 0.05
    with pytest.raises(ValueError, match="corruption"):
        build_dataset("digits-c", corruption="fogg", severity=3)
    with pytest.raises(ValueError, match="severity"):
        build_dataset("digits-c", corruption="fog", severity=-1)


def test_builtin_docs_and_local_text_files(tmp_path):
    docs = build_dataset("builtin-docs")
    assert isinstance(docs.train, TextSplit) and len(docs.train) > 900 and len(docs.test) > 100
    assert not set(docs.train.texts) & set(docs.test.texts)
    (tmp_path / "notes.txt").write_text("\n\n".join(f"paragraph number {i} about edge devices" for i in range(50)))
    local = build_dataset("text-files", root=tmp_path)
    assert len(local.train) + len(local.val) + len(local.test) == 50
    with pytest.raises(ValueError, match="needs root"):
        build_dataset("text-files")


def test_image_folder_with_seeded_split(tmp_path):
    from PIL import Image

    for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.new("RGB", (8, 8), colour).save(tmp_path / c / f"{i}.png")
    s = build_dataset("image-folder", root=tmp_path, size=8)
    assert s.train.classes == ("cat", "dog")
    assert len(s.train) + len(s.val) + len(s.test) == 20
    red = s.test.images[s.test.labels == 0]
    assert torch.allclose(red[:, 0], torch.ones_like(red[:, 0])) and torch.allclose(red[:, 2], -torch.ones_like(red[:, 2]))


def test_wikitext2_by_name_from_a_local_mirror(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = {"train": ["= Title =", "", "the cat sat on the mat"] * 4, "validation": ["val line one", ""],
             "test": ["test line one", "", "test line two"]}
    for split, rows in lines.items():
        pq.write_table(pa.table({"text": rows}), tmp_path / f"{split}-00000-of-00001.parquet")
    s = build_dataset("wikitext2", root=tmp_path)
    assert s.test.texts == ("test line one", "test line two")
    assert s.val.texts == ("val line one",) and len(s.train) == 8


def test_bpe_tokenizer_trained_on_a_corpus_is_cached_and_distinct():
    from edgeadapt.data.text import bpe_tokenizer

    corpus = ["edge devices adapt under drift"] * 50 + ["knowledge base proxy model"] * 50
    tok = bpe_tokenizer(300, corpus)
    again = bpe_tokenizer(300, corpus)
    assert tok.get_vocab() == again.get_vocab()
    # a corpus-specific vocabulary encodes its own words in fewer tokens than the docs BPE does
    assert len(tok("knowledge base proxy")["input_ids"]) < len(bpe_tokenizer(300)("knowledge base proxy")["input_ids"])


BUILTIN = ["builtin-docs", "c4", "digits", "digits-c", "image-folder", "text-files", "wikitext2"]


@pytest.mark.parametrize("first,second", [("edgeadapt.data.registry", "edgeadapt.data.builtin"),
                                          ("edgeadapt.data.builtin", "edgeadapt.data.registry"),
                                          ("edgeadapt.data.builtin", None),
                                          ("edgeadapt.data.registry", None)])
def test_the_builtin_datasets_are_registered_whatever_is_imported_first(first, second):
    # A fresh interpreter: the import order is the one under test, not this session's.
    lines = [f"import {first}"] + ([f"import {second}"] if second else []) + [
        "from edgeadapt.data.registry import list_datasets",
        "import json; print(json.dumps(sorted(d.name for d in list_datasets())))"]
    proc = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert set(BUILTIN) <= set(json.loads(proc.stdout))
