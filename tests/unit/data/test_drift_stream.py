"""DriftStream: domains that name registered datasets with options, built for the model; each bad
domain refused by index, field, value and fix; the corruption shorthand means what it meant."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from edgeadapt.data.registry import build_dataset, register_dataset, unregister_dataset
from edgeadapt.data.splits import ImageSplit, TextSplit
from edgeadapt.data.stream import (
    Domain,
    DriftStream,
    ModelInputs,
    Paragraphs,
    TokenBlocks,
    parse_stream,
    stream_data,
)
from edgeadapt.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


def test_shorthand_means_the_same_digits_c_domains_as_before(tmp_path):
    mapping = [{"dataset": "digits-c", "options": {"corruption": "gaussian_noise", "severity": 5}},
               {"dataset": "digits-c", "options": {"corruption": "fog", "severity": 3}}]
    path = tmp_path / "s.yaml"
    path.write_text("stream:\n  - gaussian_noise:5\n  - {corruption: fog, severity: 3}\n")
    forms = [parse_stream("gaussian_noise:5,fog:3"), parse_stream(path), parse_stream(mapping),
             parse_stream([{"corruption": "gaussian_noise", "severity": 5}, "fog:3"])]
    assert all(f == forms[0] for f in forms)
    assert [str(d) for d in forms[0]] == ["gaussian_noise:5", "fog:3"]  # results keep these names
    assert [(d.dataset, d.corruption, d.severity, d.labelled) for d in forms[0]] == [
        ("digits-c", "gaussian_noise", 5, False), ("digits-c", "fog", 3, False)]
    # the data is what the old code built: digits-c at 16 px, corruption seed = stream seed,
    # unlabeled validation images to adapt on, labelled test images to score on
    (d,) = stream_data("fog:3", size=16, seed=2)
    old = build_dataset("digits-c", corruption="fog", severity=3, size=16, corruption_seed=2)
    assert torch.equal(d.adapt.images, old.val.images) and d.adapt.labels is None
    assert torch.equal(d.test.images, old.test.images) and torch.equal(d.test.labels, old.test.labels)


def test_every_shipped_stream_file_parses_and_round_trips():
    for path in sorted((REPO / "configs" / "streams").glob("*.yaml")):
        stream = DriftStream.parse(path)
        assert DriftStream.parse(stream.to_list()) == stream, path


@pytest.mark.parametrize("spec, match", [
    ([{"dataset": "nope"}],
     r"stream\[0\]\.dataset: 'nope' is not a registered dataset; choose one of: .*digits-c"),
    (["fog:3", {"dataset": "builtin-docs", "options": {"size": 16}}],
     r"stream\[1\]\.options: \['size'\] are not options of dataset 'builtin-docs'; it takes no options"),
    ([{"dataset": "digits-c", "options": {"corruption": "fog", "colour": "red"}}],
     r"stream\[0\]\.options: \['colour'\] are not options of dataset 'digits-c'; it takes corruption, "
     r"severity"),
    ([{"dataset": "digits-c", "options": {"corruption": "fogg"}}],
     r"stream\[0\]\.options: corruption 'fogg'"),
    ([{"dataset": "digits-c", "corruption": "fog"}],
     r"stream\[0\]: unknown field\(s\) \['corruption'\].*options"),
    ([{"dataset": "digits-c", "options": ["fog"]}], r"stream\[0\]\.options: \['fog'\] is not a mapping"),
    (["fog:3", 7], r"stream\[1\]: expected a mapping \{dataset: NAME"),
    ([["fog", 3]], r"stream\[0\]: expected a mapping"),
    ([{"dataset": "digits", "labelled": "yes"}], r"stream\[0\]\.labelled: 'yes' must be true or false"),
    ([{"dataset": "digits", "adapt_split": "test"}],
     r"stream\[0\]: adapt_split and eval_split are both 'test'"),
    ([{"dataset": "digits", "eval_split": "holdout"}], r"stream\[0\]\.eval_split: 'holdout' is not a split"),
    ([{"dataset": "text-files", "root": "/no/such/dir"}],
     r"stream\[0\]\.root: '/no/such/dir' does not exist"),
    ([], r"stream is empty"),
])
def test_bad_domains_are_refused_by_index_field_and_value(spec, match):
    with pytest.raises(ConfigError, match=match):
        DriftStream.parse(spec)


@pytest.fixture
def empty_val():
    @register_dataset(name="test-empty-val", task="image-classification", classes=("a", "b"))
    class EmptyVal:
        """Four images to train and test on, none to adapt on."""

        splits = ("train", "val", "test")

        def load(self, root, split):
            n = 0 if split == "val" else 4
            return ImageSplit(torch.zeros(n, 3, 8, 8), torch.tensor([0, 1, 0, 1][:n]), ("a", "b"))

    yield "test-empty-val"
    unregister_dataset("test-empty-val")


def test_an_empty_domain_is_refused_by_name(empty_val):
    stream = DriftStream.parse(["fog:3", {"dataset": empty_val}])
    with pytest.raises(ConfigError, match=r"stream\[1\] \(test-empty-val\): the 'val' split of dataset "
                                          r"'test-empty-val' has no samples.*adapt_split"):
        stream.build()
    # adapting on another split of the same dataset is fine
    (_, d) = DriftStream.parse(["fog:3", {"dataset": empty_val, "adapt_split": "train"}]).build()
    assert len(d.adapt) == 4 and d.adapt.labels is None


def test_a_text_domain_shorter_than_one_sequence_is_refused_by_name(load, tmp_path):
    (tmp_path / "train.txt").write_text("just a few words\n")
    (tmp_path / "test.txt").write_text("and a few more\n")
    stream = DriftStream.parse([{"dataset": "text-files", "root": str(tmp_path), "adapt_split": "train"}])
    with pytest.raises(ConfigError, match=r"stream\[0\].*'train' split of dataset 'text-files' has fewer "
                                          r"than 128 tokens"):
        stream.build(load("tiny-gpt2"))


def test_a_stream_mixing_two_image_datasets_builds_at_the_models_side():
    stream = DriftStream.parse("fog:3,digits")
    model = SimpleNamespace(model=SimpleNamespace(config={"image_size": 24}), modality="image")
    fog, clean = stream.build(model)
    assert [str(d.domain) for d in (fog, clean)] == ["fog:3", "digits"]
    assert fog.adapt.images.shape[1:] == clean.test.images.shape[1:] == (3, 24, 24)  # not a fixed 16
    assert fog.adapt.labels is None and clean.adapt.labels is None and clean.test.labels is not None
    with pytest.raises(ConfigError, match=r"stream\[0\]\.options\.size: 32 but the model takes 24x24"):
        DriftStream.parse([{"dataset": "digits-c", "options": {"corruption": "fog", "severity": 3,
                                                               "size": 32}}]).build(model)


def test_text_domains_are_tokenized_by_the_models_tokenizer(load, tmp_path):
    (tmp_path / "train.txt").write_text("\n\n".join(f"paragraph {i} about gears and valves " * 8
                                                   for i in range(40)))
    (tmp_path / "test.txt").write_text("\n\n".join(f"held out {i} text on pumps " * 8 for i in range(40)))
    stream = DriftStream.parse([{"dataset": "builtin-docs"},
                                {"dataset": "text-files", "root": str(tmp_path), "name": "manuals",
                                 "adapt_split": "train", "labelled": True}])
    lm = load("tiny-gpt2")
    docs, manuals = stream.build(lm, max_length=32)
    assert isinstance(docs.adapt, TokenBlocks) and docs.adapt.seq_len == 32
    batch = next(iter(manuals.test.batches(4)))
    assert batch["input_ids"].shape == (4, 32)
    assert torch.equal(batch["input_ids"][0], torch.tensor(lm.tokenizer(
        "\n\n".join(build_dataset("text-files", root=tmp_path).test.texts))["input_ids"][:32]))
    assert manuals.labelled and not docs.labelled and str(manuals.domain) == "manuals"
    # an encoder gets padded paragraphs; without a model the raw texts
    (enc_docs, _) = stream.build(load("tiny-bert"), max_length=32)
    assert isinstance(enc_docs.adapt, Paragraphs)
    assert next(iter(enc_docs.adapt.batches(3)))["input_ids"].shape[0] == 3
    assert isinstance(stream.build()[0].adapt, TextSplit)


def test_a_domain_the_model_cannot_take_is_refused(load):
    with pytest.raises(ConfigError, match=r"stream\[1\] \(builtin-docs\): the data is text but the model "
                                          r"takes image input"):
        DriftStream.parse(["fog:3", "builtin-docs"]).build(load("tiny-vit"))
    with pytest.raises(ConfigError, match=r"stream\[0\] \(fog:3\): the data is image but the model "
                                          r"takes text"):
        DriftStream.parse(["fog:3"]).build(load("tiny-gpt2"))


def test_a_labelled_domain_keeps_its_labels_for_adaptation():
    labelled, plain = DriftStream.parse([{"corruption": "fog", "severity": 3, "labelled": True},
                                         {"dataset": "digits-c", "options": {"corruption": "fog",
                                                                             "severity": 3}}]).build()
    assert labelled.labelled and labelled.adapt.labels is not None
    assert not plain.labelled and plain.adapt.labels is None


def test_model_inputs_are_read_from_the_model(load):
    vit, lm = ModelInputs.of(load("tiny-vit")), ModelInputs.of(load("tiny-gpt2"), max_length=10**6)
    assert (vit.modality, vit.image_size, vit.tokenizer) == ("image", 16, None)
    assert lm.modality == "text" and lm.task == "causal-lm" and lm.tokenizer is not None
    assert lm.max_length == load("tiny-gpt2").model.config.n_positions  # capped at the model's positions


def test_describe_names_dataset_split_sizes_and_labels():
    text = DriftStream.parse(["fog:3", {"dataset": "digits", "labelled": True}]).describe(sizes=True)
    first, second = text.splitlines()
    assert "fog:3" in first and "digits-c" in first and "adapt   180 (val)" in first and "360 (test)" in first
    assert "digits" in second and second.endswith("labelled")


def test_domains_compare_by_value_and_keep_names():
    assert Domain.corrupted("fog", 3) == Domain("digits-c", {"severity": 3, "corruption": "fog"})
    assert str(Domain("digits-c", {"corruption": "fog", "severity": 3, "size": 32})) == \
        "digits-c(corruption=fog,severity=3,size=32)"
    assert str(Domain("builtin-docs")) == "builtin-docs" and Domain("builtin-docs").corruption is None


def test_data_show_stream_prints_domains_of_any_dataset(tmp_path, capsys):
    from edgeadapt.cli.main import main

    path = tmp_path / "mixed.yaml"
    path.write_text("stream:\n  - {dataset: digits-c, options: {corruption: fog, severity: 3}}\n"
                    "  - {dataset: builtin-docs, labelled: true}\n")
    assert main(["data", "show", "stream", "--stream", str(path)]) == 0
    fog, docs = capsys.readouterr().out.strip().splitlines()
    assert fog.split()[:3] == ["1.", "fog:3", "digits-c"] and "180 (val)" in fog
    assert docs.split()[:3] == ["2.", "builtin-docs", "builtin-docs"] and docs.endswith("labelled")
    assert main(["data", "show", "stream", "--stream", str(path), "--grid", str(tmp_path / "g.png")]) == 0
    path.write_text("- {dataset: builtin-docs, options: {size: 3}}\n")
    assert main(["data", "show", "stream", "--stream", str(path)]) == 2
    err = capsys.readouterr().err  # the flag typed, the value, which domain and field
    assert f"--stream '{path}' (domain 1, options): ['size'] are not options of dataset 'builtin-docs'" in err
