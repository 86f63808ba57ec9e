"""Every shipped YAML parses; config errors name the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeadapt.config import ConfigError, load_config, parse_config, planned_outputs, validate_config
from edgeadapt.data.stream import parse_stream

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GOOD = {"model": "tiny-vit", "data": {"name": "digits"},
        "train": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3}, "out": "runs/x"}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path, monkeypatch, tmp_path):
    # Paths inside configs are relative to the repository root, and some name the artifact an
    # earlier step writes (runs/source-vit): stand in a copy of the tree with that artifact's config.
    from edgeadapt.models.tiny import TINY

    (tmp_path / "configs").symlink_to(CONFIGS)
    (tmp_path / "runs" / "source-vit").mkdir(parents=True)
    (tmp_path / "runs" / "source-vit" / "base_config.json").write_text(TINY["tiny-vit"][0]().to_json_string())
    monkeypatch.chdir(tmp_path)
    # Other inputs an earlier step writes (runs/ref-llama, a downloaded model) are what `validate` notes.
    cfg, _ = validate_config(path, planned_outputs(sorted(CONFIGS.glob("*.yaml"))))
    assert path.name.startswith(f"{cfg.kind}-")


@pytest.mark.parametrize("path", sorted((CONFIGS / "streams").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_stream_parses(path):
    assert len(parse_stream(path)) >= 2


def _bad(**changes):
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in GOOD.items()}
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[leaf]
        else:
            node[leaf] = value
    return data


@pytest.mark.parametrize("changes, message", [
    ({"model": KeyError}, r"model: required field is missing"),
    ({"train__epochs": KeyError}, r"train\.epochs: required field is missing"),
    ({"train__batch_size": "big"}, r"train\.batch_size: .*integer.*got 'big'"),
    ({"train__learning_rate": -1}, r"train\.learning_rate: .*greater than 0"),
    ({"train__epoch": 3}, r"train\.epoch: unknown field"),
    ({"data__name": "digitz"}, r"data\.name: dataset 'digitz' is unknown; choose one of"),
    ({"data__name": "digits-c", "data__options": {"corruption": "fogg", "severity": 3}}, r"corruption .fogg."),
    ({"data__name": "digits-c", "data__options": {"corruption": "fog", "severity": -2}}, r"severity"),
    ({"data__options": {"colour": 1}}, r"data\.options.*colour.*takes"),
    ({"data__root": "/no/such/dir"}, r"data\.root: .*does not exist"),
    ({"model": "tiny-llama"}, r"data\.name: dataset 'digits' is image-classification data but model 'tiny-llama'"),
    ({"model": "not-a-model"}, r"model: .*neither a built-in"),
    ({"kind": "deploy"}, r"kind: 'deploy' is not a config kind"),
])
def test_bad_configs_name_the_field_and_the_fix(changes, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(_bad(**changes), source="t.yaml")


def test_non_mapping_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        parse_config([1, 2])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


LLM = {"kind": "llm-prune", "model": "tiny-llama", "param_sparsity": 0.2}


@pytest.mark.parametrize("changes, message", [
    ({"param_sparsity": 1.0}, r"param_sparsity: .*must be in \[0, 1\)"),
    ({"param_sparsity": -0.1}, r"param_sparsity: .*must be in \[0, 1\)"),
    ({"targets": ["filters"]}, r"targets\.0: .*'heads', 'neurons' or 'layers'"),
    ({"dataset": "text-files", "data_root": "/no/such/folder"}, r"data_root: .*does not exist"),
    ({"dataset": "text-files"}, r"data_root: dataset text-files needs local text"),
    ({"tracker": "neptune"}, r"tracker: "),
    ({"recovery": {"method": "qlora"}}, r"recovery\.method: "),
    ({"evaluation": {"sweep": [1.5]}}, r"evaluation\.sweep must be in \[0, 1\)"),
])
def test_llm_prune_config_errors_name_the_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({**LLM, **changes})


def test_reference_lm_recipe_matches_its_yaml():
    import yaml

    from edgeadapt.recipes.reference_lm import REFERENCE_LM_RECIPE

    assert yaml.safe_load((CONFIGS / "train-llama-ref-docs.yaml").read_text()) == REFERENCE_LM_RECIPE
