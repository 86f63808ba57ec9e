"""The offline stage end to end: `edgeadapt offline all` on the ViT (digits), the real MiniLM and a
tiny Llama (docs corpus): artifacts chain, reload, and the knowledge base serves every width."""

from __future__ import annotations

import json

import pytest
import yaml

from edgeadapt.artifacts import ArtifactError
from edgeadapt.config import parse_config
from edgeadapt.data.registry import build_dataset
from edgeadapt.offline.artifacts import load_kb
from edgeadapt.offline.lora import load_lora_artifact
from edgeadapt.offline.neuron_index import load_index
from edgeadapt.offline.pipeline import run_offline
from edgeadapt.online.proxy import extract_proxy
from edgeadapt.pruning.checkpoint import load_model
from tests.conftest import REPO


@pytest.mark.slow
def test_offline_all_on_the_source_vit(offline_vit_dir, source_vit_dir):
    root = offline_vit_dir
    fm = load_lora_artifact(root / "lora")
    kb = load_kb(root / "kb", expect_base_hash=fm.base_hash())
    index = load_index(root / "index")
    assert index.to_dict() == kb.index.to_dict()
    report = json.loads((root / "kb" / "report.json").read_text())
    fm_acc = report["fm"]["accuracy"]
    assert fm_acc >= 0.9
    # the KB keeps the FM's accuracy at full width and stays useful at a quarter of the width
    assert report["widths"]["1.0"]["accuracy"] >= fm_acc - 0.02
    assert report["widths"]["0.25"]["accuracy"] >= 0.85

    data = build_dataset("digits", size=16)
    proxy = extract_proxy(kb, data.val.unlabeled().batches(256), 0.25).adapter
    n = sum(p.numel() for p in proxy.model.parameters())
    assert n < 0.35 * sum(p.numel() for p in fm.model.parameters())
    assert proxy.evaluate(data.test.batches(256))["accuracy"] >= 0.85

    # the KB refuses a foundation model it was not built from
    with pytest.raises(ArtifactError, match="another base model"):
        load_kb(root / "kb", expect_base_hash=load_model(source_vit_dir).base_hash())


@pytest.mark.slow
@pytest.mark.parametrize("config", ["offline-minilm-docs.yaml", "offline-llama-docs.yaml"])
def test_offline_all_on_text_models(config, tmp_path):
    data = yaml.safe_load((REPO / "configs" / config).read_text())  # not relative to the cwd
    data["out"] = str(tmp_path / "offline")
    data["tracking"] = {"backends": ["csv"]}
    for step in ("lora", "kb"):
        data[step]["train"].update(epochs=1, max_steps=4, progress=False)
    data["kb"]["settings"]["calibration_batches"] = 2
    data["data"]["max_length"] = 32
    reports = run_offline(parse_config(data))
    assert reports["index"]["round_trip_max_diff"] == 0.0
    assert reports["index"]["tensors_changed_by_kb_training"] > 0
    widths = reports["kb"]["widths"]
    assert set(widths) == {str(w) for w in data["kb"]["widths"]}
    assert all("loss" in m for m in widths.values())
    fm = load_lora_artifact(tmp_path / "offline" / "lora")
    kb = load_kb(tmp_path / "offline" / "kb", expect_base_hash=fm.base_hash())
    assert kb.adapter.tokenizer is not None
