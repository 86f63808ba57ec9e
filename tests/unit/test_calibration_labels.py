"""Calibration labels are the model's labels, or none (issue 12 §1).

A classifier whose label space is not the digits' is scored on its own predictions: a 2-label ViT
used to crash on digit 8 (``Target 8 is out of bounds``) and a 1000-label ViT silently used
digits 0-9 as ImageNet classes.
"""

from __future__ import annotations

import pytest
import torch

from edgeadapt.cli.main import main
from edgeadapt.data.calibration import calibration_batches, label_mismatch
from edgeadapt.data.registry import dataset_info
from edgeadapt.errors import ConfigError
from edgeadapt.models.registry import load_adapter
from edgeadapt.pruning.importance import score
from edgeadapt.pruning.prune import prune

DIGITS = dataset_info("digits")


def _vit(num_labels: int, id2label: dict[int, str] | None = None):
    adapter = load_adapter("tiny-vit", num_labels=num_labels)
    if id2label is not None:
        adapter.model.config.id2label = id2label
        adapter.model.config.label2id = {v: k for k, v in id2label.items()}
    return adapter


@pytest.mark.parametrize("num_labels", [2, 1000])
def test_other_label_space_calibrates_on_predictions(num_labels):
    adapter = _vit(num_labels)
    with pytest.warns(UserWarning, match=f"{num_labels} labels and the data 10 classes.*own predictions"):
        batches = calibration_batches(adapter, num_batches=2, batch_size=8)
    assert batches and all("labels" not in b for b in batches)
    # The scores are exactly those of batches labelled with the model's own argmax, not the digits'.
    ours = score(adapter, "taylor", batches)
    with torch.no_grad():
        predicted = [{**b, "labels": adapter.model(pixel_values=b["pixel_values"]).logits.argmax(-1)}
                     for b in batches]
    same = score(adapter, "taylor", predicted)
    for kind in ours:
        for a, b in zip(ours[kind], same[kind]):
            torch.testing.assert_close(a, b)
    if num_labels == 1000:  # digits as ImageNet classes 0-9 would score other neurons
        digit_labels = calibration_batches(_vit(10), num_batches=2, batch_size=8)
        relabelled = [{**b, "labels": d["labels"]} for b, d in zip(batches, digit_labels)]
        wrong = score(adapter, "taylor", relabelled)
        assert any(not torch.allclose(a, b) for kind in ours for a, b in zip(ours[kind], wrong[kind]))


@pytest.mark.parametrize("num_labels", [2, 1000])
def test_taylor_and_fisher_prune_a_vit_with_other_labels(num_labels):
    for importance in ("taylor", "fisher"):
        adapter = _vit(num_labels)
        with pytest.warns(UserWarning, match="own predictions"):
            batches = calibration_batches(adapter, num_batches=2, batch_size=8)
        prune(adapter, ["heads", "neurons"], importance, batches, unit_sparsity=0.25, device="cpu")
        assert adapter.plan.summary().startswith("layers 4/4, head units 12/16")


def test_the_digits_own_label_space_keeps_its_labels(recwarn):
    # Placeholder names (LABEL_i) say nothing; names equal to the classes or their aliases match.
    for adapter in (_vit(10), _vit(10, {i: str(i) for i in range(10)}),
                    _vit(10, dict(enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven",
                                             "eight", "nine"))))):
        batches = calibration_batches(adapter, num_batches=1, batch_size=8)
        assert "labels" in batches[0] and int(batches[0]["labels"].max()) < 10
    assert not [w for w in recwarn if "calibration" in str(w.message)]


def test_ten_named_labels_that_are_not_digits_are_not_the_digits():
    adapter = _vit(10, {i: f"class-{i}" for i in range(10)})
    assert "class-0" in label_mismatch(adapter.model, DIGITS.classes, DIGITS.class_aliases)
    with pytest.warns(UserWarning, match="not the data's classes"):
        batches = calibration_batches(adapter, num_batches=1, batch_size=8)
    assert "labels" not in batches[0]


@pytest.mark.parametrize("num_labels", [2, 1000])
def test_cli_prune_taylor_of_a_vit_with_other_labels(tmp_path, num_labels, capsys):
    model = tmp_path / "vit"
    _vit(num_labels).model.save_pretrained(model)
    code = main(["--quiet", "prune", str(model), "--importance", "taylor", "--unit-sparsity", "0.25",
                 "--target", "heads", "--calibration-batches", "2", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "edgeadapt prune: warning: calibration:" in err and "own predictions" in err
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_text_calibration_never_exceeds_the_models_positions():
    adapter = load_adapter("tiny-gpt2")
    adapter.model.config.n_positions = 16
    batches = calibration_batches(adapter, num_batches=1, batch_size=4, max_length=128)
    assert batches[0]["input_ids"].shape[1] <= 16


def test_text_calibration_refuses_token_ids_beyond_the_vocabulary():
    adapter = load_adapter("tiny-gpt2")  # its BPE has 2048 tokens
    adapter.model.config.vocab_size = 1000
    with pytest.raises(ConfigError, match=r"token id \d{4} but the model has vocab_size 1000"):
        calibration_batches(adapter, num_batches=1, batch_size=4)
