"""A new user's first steps, each of which used to end in a misleading or missing answer.

1. a tiny ``text-files`` folder: an empty validation split reported as "0 tokens ... seq_len";
2. ``only_classes`` on digits for a model with fewer labels: the check counted all ten classes;
3. a hand-written pruning plan: undocumented required fields, an index error without the value;
4. ``edgeadapt inspect`` did not show the weights' dtype;
5. ``edgeadapt inspect`` on a knowledge-base directory did not say what it is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeadapt.data.registry import build_dataset
from edgeadapt.errors import ConfigError


def _paragraphs(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        text = f"Document {i} says a few words about pumps and valves. " * 10
        (folder / f"doc{i}.txt").write_text(text + "\n")
    return folder


# -- 1. text-files ----------------------------------------------------------------------------------

def test_two_text_files_are_refused_by_the_empty_split_and_the_document_count(tmp_path):
    """Before: val was silently empty and training failed later with 'the corpus has 0 tokens'."""
    root = _paragraphs(tmp_path / "two", 2)
    with pytest.raises(ConfigError) as info:
        build_dataset("text-files", root=root)
    msg = str(info.value)
    for needed in ("2 documents", "'val' split would be empty", "at least 3", "add text", "train/val/test"):
        assert needed in msg, (needed, msg)


@pytest.mark.parametrize("n", [3, 5, 7])
def test_a_small_text_corpus_gets_one_validation_and_one_test_document(tmp_path, n):
    """Before: 3-7 documents left val empty (20% held out rounded to one document, then halved)."""
    splits = build_dataset("text-files", root=_paragraphs(tmp_path / f"n{n}", n))
    assert [len(splits.train), len(splits.val), len(splits.test)] == [n - 2, 1, 1]
    assert not set(splits.val.texts) & set(splits.train.texts)


def test_a_larger_text_corpus_keeps_its_80_10_10_split(tmp_path):
    splits = build_dataset("text-files", root=_paragraphs(tmp_path / "n20", 20))
    assert [len(splits.train), len(splits.val), len(splits.test)] == [16, 2, 2]


def test_named_train_and_test_files_carve_val_from_train_not_from_the_test_file(tmp_path):
    """Before: without a val file, val was drawn from the whole folder, test documents included."""
    (tmp_path / "train.txt").write_text("\n\n".join(f"training paragraph {i}" for i in range(20)))
    (tmp_path / "test.txt").write_text("\n\n".join(f"held out paragraph {i}" for i in range(20)))
    splits = build_dataset("text-files", root=tmp_path)
    assert [len(splits.train), len(splits.val), len(splits.test)] == [18, 2, 20]
    assert all(t.startswith("training") for t in splits.val.texts)
    assert not set(splits.val.texts) & set(splits.train.texts)


def test_train_refuses_an_empty_split_by_name_before_training(tmp_path):
    """One train document and a test file: the val split is empty, and `train` says so up front
    instead of 'the corpus has 0 tokens'."""
    from edgeadapt.data.config import DataSection, load_splits

    (tmp_path / "train.txt").write_text("one training paragraph only\n")
    (tmp_path / "test.txt").write_text("a test paragraph\n")
    with pytest.raises(ConfigError, match=r"data: the 'val' split of dataset 'text-files' is empty "
                                          r"\(train 1, val 0, test 1 documents"):
        load_splits(DataSection(name="text-files", root=tmp_path))


def test_a_text_shorter_than_one_block_says_so_with_the_fix():
    import torch

    from edgeadapt.data.tokens import token_blocks

    with pytest.raises(ConfigError, match=r"5 tokens, fewer than one block of seq_len=32.*lower seq_len "
                                          r"\(data.max_length\) or give more text"):
        token_blocks(torch.arange(5), seq_len=32, batch_size=2)
