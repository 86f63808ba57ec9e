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


# -- 2. only_classes and a model with fewer labels ------------------------------------------------

TRAIN = {"epochs": 1, "batch_size": 32, "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def vit3(tmp_path_factory) -> Path:
    """A tiny ViT saved as a plain Hugging Face directory with a 3-label head."""
    from edgeadapt.models.registry import load_adapter

    path = tmp_path_factory.mktemp("vit") / "vit3"
    load_adapter("tiny-vit", num_labels=3).model.save_pretrained(path)
    return path


def _train_cfg(model: Path, data: dict, out: Path) -> dict:
    return {"kind": "train", "model": str(model), "data": data, "train": TRAIN, "out": str(out)}


@pytest.mark.parametrize("only", ["0-2", [0, 1, 2]])
def test_a_three_label_model_takes_three_digits_by_only_classes(vit3, tmp_path, only):
    """Before: refused as '10 classes but 3 labels' (the list form crashed with a TypeError);
    `train` then asked transformers for a 10-output head on the 3-label checkpoint."""
    import yaml

    from edgeadapt.cli.main import main

    cfg = _train_cfg(vit3, {"name": "digits", "options": {"only_classes": only}}, tmp_path / "out")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["--quiet", "train", "--config", str(tmp_path / "c.yaml")]) == 0
    assert (tmp_path / "out" / "metrics.json").is_file()


def test_only_classes_beyond_the_models_labels_names_field_values_and_fix(vit3, tmp_path):
    from edgeadapt.config import parse_config

    with pytest.raises(ConfigError) as info:
        parse_config(_train_cfg(vit3, {"name": "digits", "options": {"only_classes": "5,7,9"}}, tmp_path))
    msg = str(info.value)
    for needed in ("data.options.only_classes", "[5, 7, 9]", "num_labels 3", "keep classes below 3",
                   "ignore_classes: [0, 1, 2, 3, 4, 6, 8]"):
        assert needed in msg, (needed, msg)
    # the suggested fix is accepted
    parse_config(_train_cfg(vit3, {"name": "digits", "ignore_classes": [0, 1, 2, 3, 4, 6, 8]}, tmp_path))


def test_label_values_follow_only_classes_then_ignore_classes():
    from edgeadapt.data.config import DataSection

    assert DataSection(name="digits").label_values() is None
    assert DataSection(name="digits", options={"only_classes": [0, 1, 2]}).label_values() == (0, 1, 2)
    # ignoring digit 0 renumbers 1..9 to 0..8, so 5, 7, 9 arrive as 4, 6, 8
    only = DataSection(name="digits", options={"only_classes": "5,7,9"}, ignore_classes=[0])
    assert only.label_values() == (4, 6, 8)
    splits = build_dataset("digits", only_classes="5,7,9", ignore_classes=[0])
    assert sorted(set(splits.train.labels.tolist())) == [4, 6, 8]


# -- 3. a hand-written pruning plan ---------------------------------------------------------------

def test_a_plan_missing_fields_names_them_and_shows_a_valid_example(tmp_path):
    """Before: 'not an edgeadapt pruning plan' / "missing or wrong field ('architecture')"."""
    import json

    from edgeadapt.pruning.plan import EXAMPLE, PlanError, PruningPlan

    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"blocks": [{"index": 0, "neurons": [0, 1, 2]}, {"index": 1}]}))
    missing = r"missing field\(s\) \['format', 'version', 'architecture'\]"
    with pytest.raises(PlanError, match=missing) as info:
        PruningPlan.load(path)
    assert EXAMPLE in str(info.value)
    data = json.loads(EXAMPLE)  # the example itself is a valid plan
    assert PruningPlan.from_dict(data).kept_neurons(PruningPlan.from_dict(data).blocks[0]) == [0, 1, 2]
    del data["architecture"]["ffn_width"]
    with pytest.raises(PlanError, match=r"architecture is missing field\(s\) \['ffn_width'\]"):
        PruningPlan.from_dict(data)


@pytest.mark.parametrize("edit, message", [
    (lambda b: b[0].update(neurons=[0, 1, 500]),
     r"block 0 neurons: index 500 is out of range; .*in \[0, 128\).*got \[0, 1, 500\]"),
    (lambda b: b[1].update(heads=[0, 2]), r"block 1 heads: index 2 is out of range; .*in \[0, 2\)"),
    (lambda b: b[0].update(index=7), r"block index 7 is out of range: the model has 2 layers.*\[0, 2\)"),
])
def test_an_out_of_range_index_names_the_value_the_range_and_the_block(edit, message):
    import json

    from edgeadapt.pruning.plan import EXAMPLE, PlanError, PruningPlan

    data = json.loads(EXAMPLE)
    edit(data["blocks"])
    with pytest.raises(PlanError, match=message):
        PruningPlan.from_dict(data)


# -- 4. inspect shows the weights' dtype -----------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-llama", "tiny-resnet"])
def test_inspect_shows_the_dtype_of_a_bf16_checkpoint(name, tmp_path, capsys):
    """Before: nothing in `inspect`'s table or JSON said the weights were bfloat16 (a CNN's stage
    table had no weights line at all)."""
    import json

    import torch

    from edgeadapt.cli.main import main
    from edgeadapt.models.registry import load_adapter

    adapter = load_adapter(name)
    adapter.model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    params = sum(p.numel() for p in adapter.model.parameters())
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "bf16")]) == 0
    assert f"weights: bfloat16, {params * 2 / 1e3:.2f}kB" in capsys.readouterr().out
    assert main(["inspect", name, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dtype"] == "float32" and data["weight_bytes"] == params * 4


# -- 5. inspect on a knowledge base ----------------------------------------------------------------

@pytest.fixture(scope="module")
def offline_out(tmp_path_factory) -> Path:
    """`edgeadapt offline all` on tiny-vit with one short epoch per step (a few seconds)."""
    import yaml

    from edgeadapt.cli.main import main

    tmp = tmp_path_factory.mktemp("offline")
    step = {"epochs": 1, "batch_size": 128, "learning_rate": 2e-3}
    cfg = {"kind": "offline", "model": "tiny-vit", "data": {"name": "digits"},
           "lora": {"settings": {"rank": 2, "alpha": 4}, "train": step}, "kb": {"train": step},
           "out": str(tmp / "off")}
    (tmp / "off.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["--quiet", "offline", "all", "--config", str(tmp / "off.yaml")]) == 0
    return tmp / "off"


def test_inspect_describes_an_offline_output_and_its_knowledge_base(offline_out, capsys):
    """Before: 'is not a model: no manifest.json' (the out directory) and "holds a 'knowledge-base'
    artifact, expected 'pruned-model'" (its kb/) — exit 2, saying neither what it is nor what reads it."""
    import json

    from edgeadapt.cli.main import main

    capsys.readouterr()
    assert main(["inspect", str(offline_out)]) == 0
    out = capsys.readouterr().out
    for needed in ("an `edgeadapt offline` output, not a model", "foundation model: tiny-vit",
                   "knowledge base", "neuron index", "proxy widths",
                   f"edgeadapt adapt --offline {offline_out}", f"{offline_out / 'kb' / 'model'}"):
        assert needed in out, (needed, out)
    assert main(["inspect", str(offline_out / "kb"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["what"] == "knowledge-base" and data["model"] == "tiny-vit"
    assert data["read_by"] == f"edgeadapt adapt --offline {offline_out}"
    assert data["parts"][0]["bytes"] > 0 and data["architecture"]["num_layers"] == 4
    # the models inside are still inspected as models
    assert main(["inspect", str(offline_out / "kb" / "model")]) == 0
    assert "weights: float32" in capsys.readouterr().out




def test_train_starts_from_an_edgeadapt_artifact(tmp_path, monkeypatch):
    """Before: a recipe with `model:` set to a pruned artifact (or an earlier train run) passed
    `validate` and then `train` refused it: 'is not a Hugging Face model directory (no config.json)'."""
    from edgeadapt.cli.main import main
    from edgeadapt.pruning.checkpoint import load_model

    monkeypatch.chdir(tmp_path)
    assert main(["--quiet", "prune", "tiny-vit", "--unit-sparsity", "0.5", "--out", "pv"]) == 0
    pruned = sum(p.numel() for p in load_model("pv").model.parameters())
    (tmp_path / "t.yaml").write_text(
        "kind: train\nmodel: pv\nseed: 0\ndata: {name: digits}\n"
        "train: {epochs: 1, batch_size: 64, learning_rate: 3.0e-3}\nout: runs/t\n")
    assert main(["--quiet", "train", "--config", "t.yaml"]) == 0
    trained = load_model("runs/t")
    assert sum(p.numel() for p in trained.model.parameters()) == pruned  # the pruned structure kept
