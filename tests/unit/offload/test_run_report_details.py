"""Small report details found by the new-user re-check: exact accuracy against the floor, and the
image side a build used when the model's config names none."""

from __future__ import annotations

import json

import torch

from edgeadapt.cli.offload import size_note
from edgeadapt.offload.run import measured_accuracy


def test_an_accuracy_equal_to_the_floor_is_exact():
    """Before: a float32 mean read 14 of 20 right as 0.69999999, so --floor 0.7 was reported missed."""
    labels = torch.arange(20) % 10
    logits = torch.nn.functional.one_hot(labels, 10).float()
    logits[:6] = logits[:6].roll(1, dims=1)  # 6 wrong, 14 right
    assert measured_accuracy(logits, labels) == 0.7 and measured_accuracy(logits[:0], labels[:0]) == 0.0


def test_a_build_says_when_the_image_side_is_the_default(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    assert "names no image_size" in size_note(str(tmp_path), None)
    assert size_note(str(tmp_path), 16) == ""  # given on the command line
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet", "image_size": 32}))
    assert size_note(str(tmp_path), None) == "" and size_note("tiny-resnet", None) == ""
