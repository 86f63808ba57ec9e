"""llm-prune recovery takes a MemoryPlan as ``recovery.memory`` (recovery is the shared TrainConfig):
it validates with the config, reaches the loop, and a tiny recovery runs with its blocks frozen."""

from __future__ import annotations

import pytest
import torch

from edgeadapt.config import parse_config
from edgeadapt.data.tokens import token_blocks
from edgeadapt.errors import ConfigError
from edgeadapt.llm import pipeline
from edgeadapt.memory.plan import MemoryPlan

PLAN = {"micro_batch_size": 4, "freeze_blocks": 1, "checkpoint_segments": 1}


def cfg(tmp_path, **recovery):
    return parse_config({"kind": "llm-prune", "model": "tiny-llama", "dataset": "builtin-docs", "seq_len": 32,
                         "batch_size": 8, "param_sparsity": 0.3, "save": str(tmp_path / "model"),
                         "log_dir": str(tmp_path / "logs"),
                         "recovery": {"method": "lora", "lora": {"rank": 4, "alpha": 8},
                                      "learning_rate": 1e-2, "epochs": 1, "patience": None, **recovery}})


def test_a_plan_validates_and_reaches_the_train_config(tmp_path):
    c = cfg(tmp_path, memory=PLAN)
    assert c.recovery.memory == MemoryPlan(**PLAN)
    assert c.recovery.train_config(c.seed, "cpu").memory == MemoryPlan(**PLAN)
    with pytest.raises(ConfigError, match="freeze_blocks or freeze_fraction"):
        cfg(tmp_path, memory={"freeze_blocks": 1, "freeze_fraction": 0.5})
    with pytest.raises(ConfigError, match="recovery.memory.micro_batch_size"):
        cfg(tmp_path, memory={"micro_batch_size": 0})


def test_recovery_runs_under_a_plan(tmp_path):
    c = cfg(tmp_path, memory=PLAN)
    adapter = pipeline.load_lm(c)
    ids = pipeline.token_ids(adapter, pipeline.corpus(c, "train"))
    train = token_blocks(ids, c.seq_len, c.batch_size, shuffle=True, max_blocks=16)
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    result = pipeline.recover(c, adapter, train, ids[:256], device="cpu")
    assert result["steps"] == 2
    after = adapter.model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert not any(k.startswith("model.layers.0.") or k.startswith("model.embed") for k in changed)  # frozen
    assert any(k.startswith("model.layers.1.") for k in changed)  # LoRA trained and merged there
