"""edgeadapt.online.api.adapt: the online stage as one call on a tiny ViT and a quickly built KB;
the source data comes from the argument or the KB's recorded offline config; run_adapt keeps its
results schema."""

from __future__ import annotations

import json

import pytest

import edgeadapt
from edgeadapt.data.registry import build_dataset
from edgeadapt.data.stream import DriftStream
from edgeadapt.errors import ConfigError
from edgeadapt.models.registry import load_adapter
from edgeadapt.offline.artifacts import save_kb
from edgeadapt.offline.lora import LoraSettings, save_lora_artifact
from edgeadapt.online.api import adapt, static_baseline
from edgeadapt.online.pipeline import AdaptConfig, run_adapt
from tests.unit.online.conftest import OFFLINE_RECORD

BUDGET = {"steps": 2, "batch_size": 16}


def test_adapt_runs_source_and_edgeadapt_over_a_two_domain_stream(vit_kb):
    fm, kb = vit_kb
    results = adapt(fm, kb, DriftStream.parse("fog:5,contrast:4"), methods=["source", "edgeadapt"],
                    budget=BUDGET, width=0.5, source="digits", progress=False)
    assert [r["method"] for r in results["rows"]] == ["source", "edgeadapt"]
    assert results["domains"] == ["fog:5", "contrast:4"] and len(results["per_domain"]) == 4
    rows = {r["method"]: r for r in results["rows"]}
    assert rows["edgeadapt"]["params"] < rows["source"]["params"]  # a half-width proxy retrained
    assert rows["edgeadapt"]["peak_memory_bytes"] > 0 == rows["source"]["peak_memory_bytes"]
    assert results["proxy_width"] == 0.5 and results["source"] == "digits"
    # the FM's clean accuracy on the source test split, as run_adapt reported it before
    test = build_dataset("digits", size=16).test
    assert results["clean_accuracy"] == fm.evaluate(test.batches(256))["accuracy"]


def test_the_package_exports_adapt_and_drift_stream_lazily():
    assert edgeadapt.adapt is adapt and edgeadapt.DriftStream is DriftStream


def test_source_defaults_to_the_dataset_the_kb_records(vit_kb, tmp_path):
    fm, kb = vit_kb
    save_kb(kb, tmp_path / "kb", config=OFFLINE_RECORD)
    results = adapt(fm, tmp_path / "kb", "fog:5", methods=["source"], budget=BUDGET, progress=False)
    assert results["source"] == "digits" and "clean_accuracy" in results
    save_kb(kb, tmp_path / "bare")
    with pytest.raises(ConfigError, match=r"source: .*bare records no source dataset; pass source="):
        adapt(fm, tmp_path / "bare", "fog:5", methods=["source"], progress=False)
    with pytest.raises(ConfigError, match=r"source: give the source data"):
        adapt(fm, kb, "fog:5", methods=["source"], progress=False)


def test_source_as_batches_feeds_the_static_baseline(vit_kb):
    fm, kb = vit_kb
    batches = list(build_dataset("digits", size=16).train.batches(32))[:2]
    results = adapt(fm, kb, "fog:5", methods=["static"], budget=BUDGET, width=0.5, source=batches,
                    static_epochs=1, progress=False)
    assert results["source"] == "batches" and not any(k.startswith("clean_") for k in results)
    (row,) = results["rows"]
    assert row["method"] == "static" and row["params"] < sum(p.numel() for p in fm.model.parameters())


def test_static_baseline_fine_tunes_on_the_data_it_is_given(vit_kb):
    fm, _ = vit_kb
    batch = next(iter(build_dataset("digits", size=16).train.batches(32)))
    untrained = static_baseline(fm, 0.5, 0, lambda _e: [batch])
    tuned = static_baseline(fm, 0.5, 3, lambda _e: [batch])
    assert tuned.evaluate([batch])["loss"] < untrained.evaluate([batch])["loss"]


def test_bad_adapt_arguments_are_refused_before_training(vit_kb):
    fm, kb = vit_kb
    with pytest.raises(ConfigError, match=r"fm: .*not a model adapter"):
        adapt(fm.model, kb, "fog:5", source="digits")
    with pytest.raises(ConfigError, match=r"stream\[0\]\.dataset: 'nope'"):
        adapt(fm, kb, [{"dataset": "nope"}], source="digits")
    with pytest.raises(ConfigError, match=r"width: 0 is not a fraction"):
        adapt(fm, kb, "fog:5", methods=["source"], width=0, source="digits", progress=False)
    with pytest.raises(ConfigError, match=r"source: .*dataset 'nope' is unknown"):
        adapt(fm, kb, "fog:5", source="nope")
    with pytest.raises(ConfigError, match=r"methods: unknown \['nope'\]; choose from source, tent"):
        adapt(fm, kb, "fog:5", methods=["source", "nope"], source="digits")
    with pytest.raises(ConfigError, match=r"methods: \['source'\] listed more than once"):
        adapt(fm, kb, "fog:5", methods=["source", "source"], source="digits")


def test_run_adapt_writes_the_same_results_schema(vit_kb, tmp_path):
    fm, kb = vit_kb
    save_lora_artifact(fm, tmp_path / "offline" / "lora", LoraSettings(), {}, {})
    save_kb(kb, tmp_path / "offline" / "kb", config=OFFLINE_RECORD)
    cfg = AdaptConfig(offline=tmp_path / "offline", stream="fog:5,contrast:4",
                      methods=["source", "edgeadapt"], budget=BUDGET, width=0.5, out=tmp_path / "adapt")
    run_adapt(cfg, progress=False)
    results = json.loads((tmp_path / "adapt" / "results.json").read_text())
    assert {"rows", "domains", "per_domain", "config", "clean_accuracy", "proxy_width"} <= set(results)
    assert results["domains"] == ["fog:5", "contrast:4"] and len(results["per_domain"]) == 4
    for key in ("method", "mean_accuracy", "retrain_seconds", "peak_memory_bytes", "params"):
        assert all(key in r for r in results["rows"]), key
    assert results["config"]["stream"] == "fog:5,contrast:4"


def test_adapt_config_takes_the_new_stream_forms_and_a_source():
    stream = [{"dataset": "digits-c", "options": {"corruption": "fog", "severity": 3}}, {"dataset": "digits"}]
    assert AdaptConfig(stream=stream, source="digits").stream == stream
    with pytest.raises(ValueError, match=r"stream\[1\]\.options: \['size'\] are not options"):
        AdaptConfig(stream=["fog:3", {"dataset": "builtin-docs", "options": {"size": 8}}])
    with pytest.raises(ValueError, match=r"dataset 'nope' is unknown"):
        AdaptConfig(source="nope")
    assert AdaptConfig().methods is None  # every registered method that fits the model (methods_for)
    with pytest.raises(ValueError, match=r"methods: unknown \['nope'\]"):
        AdaptConfig(methods=["nope"])


def test_adapt_config_passes_method_options_and_refuses_unknown_methods(vit_kb):
    """Before: an adapt YAML could not set per-method settings (the safeguard, EATA's margin)."""
    cfg = AdaptConfig(method_options={"edgeadapt": {"safeguard": {"enabled": False}}})
    assert cfg.method_options == {"edgeadapt": {"safeguard": {"enabled": False}}}
    with pytest.raises(ValueError, match=r"method_options: \['nope'\] are not registered methods"):
        AdaptConfig(method_options={"nope": {}})
    fm, kb = vit_kb
    with pytest.raises(ConfigError, match="safeguard"):  # a misspelt setting is refused by name
        adapt(fm, kb, "fog:5", methods=["edgeadapt"], budget=BUDGET, source="digits", progress=False,
              method_options={"edgeadapt": {"safeguard": {"enabeld": False}}})


def test_bad_budget_and_a_max_length_beyond_the_positions_are_config_errors(vit_kb):
    """Before: budget={"steps": 0} raised a raw pydantic ValidationError, and max_length=5000 on a
    256-position model was silently capped."""
    fm, kb = vit_kb
    with pytest.raises(ConfigError, match=r"budget.steps: .*greater than or equal to 1 \(got 0\)"):
        adapt(fm, kb, "fog:5", methods=["source"], budget={"steps": 0}, source="digits", progress=False)
    gpt2 = load_adapter("tiny-gpt2")
    with pytest.raises(ConfigError, match=r"max_length: 5000 tokens is more than the model's 256 positions"):
        adapt(gpt2, kb, [{"dataset": "stdlib-text", "options": {"source": "email"}}], methods=["source"],
              source="builtin-docs", max_length=5000, progress=False)
