"""What a model's config bounds is checked when a config is validated, with both numbers (issue 12 §1, §3).

Positions, vocabulary, image size, channels and number of labels: each limit is refused by
``parse_config`` (what every command runs before compute) and by ``edgeadapt validate`` (exit 2),
naming the field, the config's value and the model's limit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgeadapt.cli.main import main
from edgeadapt.config import parse_config
from edgeadapt.data import config as data_config
from edgeadapt.data.config import DataSection, check_data_fits_model, check_stream_fits_model
from edgeadapt.data.text import bpe_tokenizer
from edgeadapt.errors import ConfigError
from edgeadapt.models.registry import load_adapter

TRAIN = {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3}


def _train(model: str, data: dict, out: Path) -> dict:
    return {"model": model, "data": data, "train": TRAIN, "out": str(out)}


def _vit_dir(tmp_path: Path, name: str, **config) -> Path:
    adapter = load_adapter("tiny-vit", num_labels=config.pop("num_labels", 10))
    for key, value in config.items():
        setattr(adapter.model.config, key, value)
    adapter.model.save_pretrained(tmp_path / name)
    return tmp_path / name


@pytest.fixture(scope="module")
def small_vocab_gpt2(tmp_path_factory) -> Path:
    """A GPT-2 whose embedding has 1000 rows, shipped with a 2048-token tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("gpt2") / "gpt2-small-vocab"
    GPT2LMHeadModel(GPT2Config(vocab_size=1000, n_positions=64, n_embd=32, n_layer=2, n_head=2)
                    ).save_pretrained(path)
    bpe_tokenizer(2048).save_pretrained(path)
    return path


def _validate(tmp_path: Path, data: dict, capsys) -> tuple[int, str]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    code = main(["validate", str(path)])
    return code, capsys.readouterr().err


def _refused(data: dict, *numbers: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    for n in numbers:
        assert n in str(info.value), (n, str(info.value))
    return str(info.value)


# -- positions -------------------------------------------------------------------------------------

def test_train_max_length_beyond_the_position_table(tmp_path, capsys):
    data = _train("tiny-gpt2", {"name": "builtin-docs", "max_length": 512}, tmp_path / "out")
    message = _refused(data, "data.max_length", "512", "256")
    assert "give at most 256" in message
    code, err = _validate(tmp_path, data, capsys)
    assert code == 2 and "512" in err and "256" in err


def test_llm_prune_seq_len_beyond_gpt2_positions_is_caught_by_validate(tmp_path, capsys):
    data = {"kind": "llm-prune", "model": "tiny-gpt2", "seq_len": 512, "unit_sparsity": 0.2,
            "save": str(tmp_path / "m"), "log_dir": str(tmp_path / "l")}
    _refused(data, "seq_len", "512", "256")
    code, err = _validate(tmp_path, data, capsys)
    assert code == 2 and "seq_len: 512" in err and "256 positions" in err


# -- vocabulary ------------------------------------------------------------------------------------

def test_train_tokenizer_larger_than_the_embedding(tmp_path, small_vocab_gpt2, capsys):
    data = _train(str(small_vocab_gpt2), {"name": "builtin-docs", "max_length": 32}, tmp_path / "out")
    _refused(data, "data.tokenizer", "2048 tokens", "vocab_size 1000")
    code, err = _validate(tmp_path, data, capsys)
    assert code == 2 and "2048" in err and "1000" in err
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2  # refused before compute
    assert not (tmp_path / "out").exists()


def test_llm_prune_tokenizer_larger_than_the_embedding(tmp_path, small_vocab_gpt2, capsys):
    base = {"kind": "llm-prune", "unit_sparsity": 0.2, "seq_len": 32,
            "save": str(tmp_path / "m"), "log_dir": str(tmp_path / "l")}
    _refused({**base, "model": str(small_vocab_gpt2)}, "model", "2048 tokens", "vocab_size 1000")
    tokenizer = tmp_path / "tok"
    bpe_tokenizer(2048).save_pretrained(tokenizer)
    parse_config({**base, "model": "tiny-llama", "tokenizer": str(tokenizer)})  # 2048 ids in 2048 rows: fits
    small = tmp_path / "small-model"
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64)).save_pretrained(small)
    _refused({**base, "model": str(small), "tokenizer": str(tokenizer)}, "tokenizer:", "2048 tokens",
             "vocab_size 512")
    code, err = _validate(tmp_path, {**base, "model": str(small), "tokenizer": str(tokenizer)}, capsys)
    assert code == 2 and "2048" in err and "512" in err


def test_llm_prune_tokenizer_must_be_a_local_directory():
    _refused({"kind": "llm-prune", "model": "tiny-llama", "unit_sparsity": 0.2, "tokenizer": "gpt2"},
             "tokenizer: 'gpt2' is not a local directory")


def test_llm_prune_needs_a_causal_lm(tmp_path, capsys):
    data = {"kind": "llm-prune", "model": "tiny-bert", "unit_sparsity": 0.2}
    _refused(data, "model: 'tiny-bert'", "needs a causal LM")
    code, _ = _validate(tmp_path, data, capsys)
    assert code == 2


# -- image size, channels, labels ------------------------------------------------------------------

def test_train_image_size_other_than_the_models(tmp_path, capsys):
    data = _train("tiny-vit", {"name": "digits", "options": {"size": 32}}, tmp_path / "out")
    _refused(data, "data.options.size: 32", "16x16", "image_size 16")
    code, err = _validate(tmp_path, data, capsys)
    assert code == 2 and "32" in err and "16" in err


def test_train_channels_other_than_the_datas(tmp_path, capsys):
    model = _vit_dir(tmp_path, "vit-gray", num_channels=1)
    data = _train(str(model), {"name": "digits"}, tmp_path / "out")
    _refused(data, "3-channel", "takes 1", "num_channels 1")
    code, err = _validate(tmp_path, data, capsys)
    assert code == 2 and "num_channels 1" in err


@pytest.mark.parametrize("num_labels", [2, 1000])
def test_train_classes_other_than_a_pretrained_heads_labels(tmp_path, num_labels, capsys):
    model = _vit_dir(tmp_path, f"vit{num_labels}", num_labels=num_labels)
    data = _train(str(model), {"name": "digits"}, tmp_path / "out")
    _refused(data, "10 classes", f"{num_labels} labels")
    code, err = _validate(tmp_path, data, capsys)
    assert code == 2 and f"{num_labels} labels" in err and "10 classes" in err


def test_a_tiny_model_gets_a_head_for_the_datas_classes(tmp_path):
    # train builds tiny-* heads for the data: 9 classes after ignoring one is fine there...
    data = _train("tiny-vit", {"name": "digits", "ignore_classes": ["9"]}, tmp_path / "out")
    parse_config(data)
    # ...but a fixed head (offline's FM) with 10 labels does not take 9 classes.
    section = DataSection(name="digits", ignore_classes=["9"])
    with pytest.raises(ConfigError, match="9 classes but model 'tiny-vit' has 10 labels"):
        check_data_fits_model(section, "tiny-vit")
    merged = DataSection(name="digits", remap={i: i % 5 for i in range(10)})
    assert merged.num_classes() == 5


def test_the_adapt_stream_needs_a_ten_label_three_channel_model(tmp_path):
    check_stream_fits_model("tiny-vit")
    with pytest.raises(ConfigError, match="10 classes but model .* has 2 labels"):
        check_stream_fits_model(str(_vit_dir(tmp_path, "vit2", num_labels=2)))


# -- models and data that loading would refuse -----------------------------------------------------

@pytest.mark.parametrize("data", [
    {"kind": "llm-prune", "model": "llama-9000b", "unit_sparsity": 0.2},
    {"model": "llama-9000b", "data": {"name": "builtin-docs"}, "train": TRAIN, "out": "runs/x"},
])
def test_unknown_model_is_refused_by_validate(tmp_path, data, capsys):
    code, err = _validate(tmp_path, data, capsys)
    assert code == 2 and "model: " in err and "'llama-9000b'" in err and "built-in name" in err


def test_uncached_hub_dataset_names_the_configs_field(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data_config, "hub_dataset_cached", lambda name: name not in ("wikitext2", "c4"))
    llm = {"kind": "llm-prune", "model": "tiny-llama", "unit_sparsity": 0.2, "dataset": "wikitext2"}
    train = _train("tiny-llama", {"name": "wikitext2"}, tmp_path / "out")
    # What a command runs before compute: a ConfigError naming the field that takes local copies.
    _refused(llm, "data_root: dataset 'wikitext2' is not in the local Hugging Face cache",
             "HF_HUB_OFFLINE=0 edgeadapt data show wikitext2")
    _refused(train, "data.root: dataset 'wikitext2' is not in the local Hugging Face cache")
    _refused({**llm, "dataset": "builtin-docs", "evaluation": {"datasets": ["c4"]}},
             "evaluation.datasets: dataset 'c4'", "remove c4 from evaluation.datasets")
    # `validate`: caching it is an earlier step, noted like an input an earlier config writes.
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(llm))
    assert main(["validate", str(path)]) == 0
    assert "dataset wikitext2 not cached yet" in capsys.readouterr().out
    path.write_text(yaml.safe_dump(train))
    assert main(["train", "--config", str(path)]) == 2
    assert "data.root: dataset 'wikitext2'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_hub_dataset_cached_asks_datasets_offline(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Salesforce/wikitext' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset_builder", offline)
    assert not data_config.hub_dataset_cached("wikitext2")
    assert data_config.hub_dataset_cached("builtin-docs")
    monkeypatch.setattr(datasets, "load_dataset_builder", lambda *a, **k: object())
    assert data_config.hub_dataset_cached("c4")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # online: loading downloads
    monkeypatch.setattr(datasets, "load_dataset_builder", offline)
    assert data_config.hub_dataset_cached("wikitext2")


# -- llm-pretrain --out ----------------------------------------------------------------------------

def test_llm_pretrain_out_on_another_model_is_a_clear_error(tmp_path, capsys):
    from edgeadapt.pruning.checkpoint import save_pruned

    vit = tmp_path / "vit-run"
    save_pruned(load_adapter("tiny-vit"), vit, config={"kind": "train", "model": "tiny-vit",
                                                       "data": {"name": "digits"}})
    for flags in ([], ["--force"]):
        assert main(["llm-pretrain", "--out", str(vit), *flags]) == 2
        err = capsys.readouterr().err
        assert "--out: " in err and "`edgeadapt train` of 'tiny-vit' on 'digits'" in err
        assert "not the reference LM" in err and "perplexity" not in err
    assert (vit / "model.safetensors").is_file()  # untouched


# -- offline and adapt (checked by their config classes, so the Python API is covered too) ------------

def _offline(model: str, data: dict, out: Path) -> dict:
    step = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3}
    return {"kind": "offline", "model": model, "data": data, "lora": {"train": step},
            "kb": {"train": step}, "out": str(out)}


@pytest.mark.parametrize("data, numbers", [
    ({"name": "digits", "ignore_classes": ["9"]}, ("9 classes", "10 labels")),  # the FM keeps its head
    ({"name": "digits", "options": {"size": 32}}, ("data.options.size: 32", "image_size 16")),
])
def test_offline_data_that_the_foundation_model_cannot_take(tmp_path, data, numbers, capsys):
    cfg = _offline("tiny-vit", data, tmp_path / "off")
    _refused(cfg, *numbers)
    code, err = _validate(tmp_path, cfg, capsys)
    assert code == 2 and all(n in err for n in numbers)
    assert main(["offline", "lora", "--config", str(tmp_path / "c.yaml")]) == 2
    assert not (tmp_path / "off").exists()


def test_offline_and_adapt_configs_built_in_python_are_checked_too(tmp_path):
    """Before: only parse_config/validate ran these checks, so `OfflineConfig(...)` or
    `AdaptConfig(...)` built in Python went on to compute with data the model cannot take."""
    from pydantic import ValidationError

    from edgeadapt.offline.pipeline import OfflineConfig
    from edgeadapt.online.pipeline import AdaptConfig
    from edgeadapt.pruning.checkpoint import save_pruned

    with pytest.raises(ValidationError, match="9 classes.*10 labels"):
        OfflineConfig(**_offline("tiny-vit", {"name": "digits", "ignore_classes": ["9"]}, tmp_path / "o"))
    save_pruned(load_adapter("tiny-vit", num_labels=2), tmp_path / "off" / "lora")
    with pytest.raises(ValidationError, match="2 labels"):
        AdaptConfig(offline=tmp_path / "off")


def test_offline_text_max_length_beyond_positions(tmp_path, capsys):
    cfg = _offline("tiny-llama", {"name": "builtin-docs", "max_length": 300}, tmp_path / "off")
    _refused(cfg, "data.max_length: 300", "256 positions")


def test_adapt_refuses_a_foundation_model_that_cannot_take_the_stream(tmp_path, capsys):
    from edgeadapt.pruning.checkpoint import save_pruned

    save_pruned(load_adapter("tiny-vit", num_labels=2), tmp_path / "off" / "lora")
    _refused({"kind": "adapt", "offline": str(tmp_path / "off")},
             "offline: dataset 'digits-c' has 10 classes", "2 labels")
    code = main(["adapt", "--offline", str(tmp_path / "off"), "--out", str(tmp_path / "rep")])
    assert code == 2 and "2 labels" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()


def test_llm_pretrain_out_with_other_files_or_a_killed_other_run(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    assert main(["llm-pretrain", "--out", str(tmp_path / "notes")]) == 2
    err = capsys.readouterr().err
    assert "1 other entries (a.txt)" in err and "--overwrite" not in err  # llm-pretrain has no --overwrite
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "run.json").write_text('{"command": "train", "config": {"kind": "train", "model": "tiny-vit", '
                                     '"data": {"name": "digits"}}}')
    assert main(["llm-pretrain", "--out", str(killed)]) == 2
    assert "`edgeadapt train` of 'tiny-vit' on 'digits'" in capsys.readouterr().err
    assert (tmp_path / "notes" / "a.txt").read_text() == "mine"
