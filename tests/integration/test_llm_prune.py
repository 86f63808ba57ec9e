"""`edgeadapt llm-prune` end to end on tiny-llama and the built-in corpus: train mode prunes,
recovers (perplexity goes down) and saves; test mode reloads and writes the report. Recovery stops
early on a worsening validation perplexity and a killed recovery resumes to the same weights."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from edgeadapt.cli.main import main
from edgeadapt.config import parse_config
from edgeadapt.data.tokens import token_blocks
from edgeadapt.pruning.budget import prune_to_param_sparsity
from edgeadapt.pruning.importance import random_scores

BASE = {"kind": "llm-prune", "model": "tiny-llama", "dataset": "builtin-docs", "seq_len": 32,
        "batch_size": 16, "param_sparsity": 0.3, "targets": ["heads", "neurons"],
        "pruning": {"importance": "taylor", "scope": "global", "calibration_batches": 2},
        "recovery": {"method": "lora", "max_train_blocks": 320, "lora": {"rank": 8, "alpha": 16},
                     "learning_rate": 1e-2, "epochs": 1, "patience": None},
        "evaluation": {"max_eval_tokens": 2048, "sweep": [0.5], "speed_repeats": 2, "speed_batch_size": 4},
        "tracker": "tensorboard"}


def config(tmp_path, **changes):
    data = {**BASE, "save": str(tmp_path / "model"), "log_dir": str(tmp_path / "logs"), **changes}
    return parse_config(data)


@pytest.mark.slow
def test_train_then_test_mode_from_one_yaml(tmp_path, capsys):
    path = tmp_path / "prune.yaml"
    where = {"save": str(tmp_path / "model"), "log_dir": str(tmp_path / "logs")}
    path.write_text(yaml.safe_dump({**BASE, **where}))
    assert main(["llm-prune", "--config", str(path), "--mode", "train"]) == 0
    m = json.loads((tmp_path / "model" / "prune_metrics.json").read_text())
    assert abs(m["prune"]["param_sparsity"] - 0.3) < 0.03 and m["budget"] == {"param_sparsity": 0.3}
    assert m["recovered_ppl"] < m["pruned_ppl"]  # recovery helps
    assert (tmp_path / "model" / "manifest.json").is_file()
    assert [r["target"] for r in m["sweep"]] == [0.5]
    assert (tmp_path / "logs" / "train" / "metrics.csv").is_file()
    assert list((tmp_path / "logs" / "train").rglob("events.out.tfevents*"))  # the tracker got metrics

    assert main(["llm-prune", "--config", str(path), "--mode", "test"]) == 0
    out = capsys.readouterr().out
    assert "builtin-docs test perplexity" in out
    results = json.loads((tmp_path / "logs" / "test_results.json").read_text())
    assert results["params"]["pruned"] < results["params"]["dense"]
    assert results["train"]["peak_memory_bytes"]["pruned"] < results["train"]["peak_memory_bytes"]["dense"]
    for name in ("report.md", "perplexity_vs_sparsity.png", "recovery_curves.png"):
        assert (tmp_path / "logs" / name).is_file(), name
    assert "after recovery" in (tmp_path / "logs" / "report.md").read_text()


def test_test_mode_without_a_saved_model_says_what_to_run(tmp_path, capsys):
    path = tmp_path / "prune.yaml"
    path.write_text(yaml.safe_dump({**BASE, "save": str(tmp_path / "none")}))
    assert main(["llm-prune", "--config", str(path), "--mode", "test"]) == 2
    assert "--mode train" in capsys.readouterr().err


def test_recovery_stops_early_on_worsening_perplexity(tmp_path, monkeypatch):
    from edgeadapt.llm import pipeline

    seen = iter(range(100, 1000))  # validation perplexity gets worse after every epoch
    monkeypatch.setattr(pipeline, "_ppl", lambda cfg, a, ids, device: float(next(seen)))
    cfg = config(tmp_path, recovery={"method": "full", "max_train_blocks": 64, "learning_rate": 1e-2,
                                     "epochs": 5, "patience": 1})
    adapter = pipeline.load_lm(cfg)
    ids = pipeline.token_ids(adapter, pipeline.corpus(cfg, "train"))
    train = token_blocks(ids, cfg.seq_len, cfg.batch_size, shuffle=True, max_blocks=64)
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    result = pipeline.recover(cfg, adapter, train, ids[:512], baseline=50.0)
    assert result["stop_reason"] == "patience"
    assert len([h for h in result["history"] if "val_perplexity" in h]) == 2
    # even the best epoch (100) is worse than right after pruning (50): the pruned weights come back
    assert result["kept_pruned_weights"]
    for k, v in adapter.model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)


def test_killed_recovery_resumes_to_the_same_weights(tmp_path):
    from edgeadapt.llm import pipeline
    cfg = config(tmp_path, recovery={"method": "lora", "max_train_blocks": 96, "checkpoint_every": 2,
                                     "learning_rate": 1e-2, "epochs": 2, "patience": None})

    def fresh():
        adapter = pipeline.load_lm(cfg)
        prune_to_param_sparsity(adapter, 0.3, ["neurons"], random_scores(adapter))
        return adapter

    adapter = fresh()
    ids = pipeline.token_ids(adapter, pipeline.corpus(cfg, "train"))
    train = token_blocks(ids, cfg.seq_len, cfg.batch_size, shuffle=True, max_blocks=96)
    val = ids[:256]
    reference = pipeline.recover(cfg, fresh(), train, val, checkpoint_dir=tmp_path / "ref")

    class Killed(Exception):
        pass

    def kill(info):
        if info.step == 5:
            raise Killed

    with pytest.raises(Killed):
        pipeline.recover(cfg, fresh(), train, val, checkpoint_dir=tmp_path / "ck", callbacks=[kill])
    resumed_model = fresh()
    resumed = pipeline.recover(cfg, resumed_model, train, val, checkpoint_dir=tmp_path / "ck")
    assert resumed["steps"] == reference["steps"] == 12
    ref_model = fresh()
    pipeline.recover(cfg, ref_model, train, val, checkpoint_dir=tmp_path / "ref")  # finished: a no-op reload
    for (name, a), (_, b) in zip(ref_model.model.named_parameters(), resumed_model.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_llm_pretrain_learns_and_caches(tmp_path, capsys):
    out = tmp_path / "ref"
    assert main(["llm-pretrain", "--out", str(out), "--epochs", "1"]) == 0
    first = capsys.readouterr().out
    assert "tiny-llama-ref" in first and (out / "manifest.json").is_file()
    ppl = float(first.rsplit("test perplexity", 1)[1].split()[0])
    assert ppl < 2048 / 2  # far better than a uniform guess over the 2048-token vocabulary
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert main(["llm-pretrain", "--out", str(out), "--epochs", "1"]) == 0  # cached: no training
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert capsys.readouterr().out == first
