"""Digit pairs: labels are the digits' sum mod 10, splits never share a source digit, layout."""

from __future__ import annotations

import pytest
import torch

from edgeadapt.data.digit_pairs import digit_pairs, pair_split
from edgeadapt.data.digits import digits_tensors
from edgeadapt.errors import ConfigError


def test_labels_are_sum_mod_10_of_the_source_digits():
    split, idx = pair_split("train", 300, size=32, seed=0)
    _, y = digits_tensors("train", size=16)
    assert torch.equal(split.labels, (y[idx[:, 0]] + y[idx[:, 1]]) % 10)
    assert split.images.shape == (300, 3, 32, 32)
    assert sorted(split.labels.unique().tolist()) == list(range(10))


def test_images_hold_the_source_digits_side_by_side():
    split, idx = pair_split("test", 5, size=32, seed=1)
    x, _ = digits_tensors("test", size=16)
    assert torch.equal(split.images[:, :, 8:24, :16], x[idx[:, 0]])
    assert torch.equal(split.images[:, :, 8:24, 16:], x[idx[:, 1]])
    assert (split.images[:, :, :8] == -1).all() and (split.images[:, :, 24:] == -1).all()


def test_wide_pairs_keep_each_digit_at_full_size():
    split, idx = pair_split("val", 7, size=32, seed=2, wide=True)
    x, y = digits_tensors("val", size=32)
    assert split.images.shape == (7, 3, 32, 64)
    assert torch.equal(split.images[..., :32], x[idx[:, 0]]) and torch.equal(split.images[..., 32:], x[idx[:, 1]])
    assert torch.equal(split.labels, (y[idx[:, 0]] + y[idx[:, 1]]) % 10)
    assert digit_pairs(32, train=4, val=4, test=4, wide=True).test.images.shape == (4, 3, 32, 64)


def test_train_and_test_digits_are_disjoint():
    """Pairs draw only from their own split of digits' partition; those partitions share no sample
    (checked on the raw 8x8 sklearn indices via the images)."""
    tr, tr_idx = pair_split("train", 2000, size=16)
    te, te_idx = pair_split("test", 2000, size=16)
    xtr, _ = digits_tensors("train", size=8)
    xte, _ = digits_tensors("test", size=8)
    train_digits = {tuple(xtr[i].flatten().tolist()) for i in tr_idx.flatten().unique().tolist()}
    test_digits = {tuple(xte[i].flatten().tolist()) for i in te_idx.flatten().unique().tolist()}
    assert len(train_digits) > 1000 and len(test_digits) > 300
    # digits holds a handful of exact duplicate images across its partition; pairs add none
    all_train = {tuple(r.flatten().tolist()) for r in xtr}
    all_test = {tuple(r.flatten().tolist()) for r in xte}
    assert train_digits & test_digits <= all_train & all_test
    assert len(all_train & all_test) <= 5


def test_splits_are_seeded_and_sized():
    a, b = digit_pairs(size=16, train=50, val=20, test=30), digit_pairs(size=16, train=50, val=20, test=30)
    assert [len(s) for s in a] == [50, 20, 30]
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    other = digit_pairs(size=16, train=50, val=20, test=30, seed=1)
    assert not torch.equal(other.train.labels, a.train.labels)


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"n": 5, "size": 15}, {"n": 5, "size": 12}])
def test_bad_arguments_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        pair_split("train", **kwargs)
