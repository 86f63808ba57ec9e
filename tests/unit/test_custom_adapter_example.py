"""The documented custom-adapter example works with pruning, exactly."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.pruning.apply import apply_plan
from edgeadapt.pruning.plan import PruningPlan
from edgeadapt.pruning.prune import prune

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_adapter.py"


def _example():
    """The example as a module (registered in ``sys.modules``, as its dataclasses need)."""
    if "custom_adapter" not in sys.modules:
        spec = importlib.util.spec_from_file_location("custom_adapter", EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        sys.modules["custom_adapter"] = module
        spec.loader.exec_module(module)
    return sys.modules["custom_adapter"]


def test_custom_adapter_satisfies_the_protocol_and_prunes():
    ex = _example()
    torch.manual_seed(0)
    adapter = ex.MyAdapter(ex.MyClassifier())
    assert isinstance(adapter, ModelAdapter)
    batch = {"input_ids": torch.randint(0, 100, (4, 10)), "labels": torch.randint(0, 3, (4,))}
    before = adapter.features(batch)
    apply_plan(adapter, PruningPlan.dense(adapter.fingerprint()))
    assert torch.equal(adapter.features(batch), before)
    prune(adapter, ["heads", "neurons"], "taylor", [batch], unit_sparsity=0.5)
    assert [b.attention.num_heads for b in adapter.blocks()] == [2, 2]
    assert adapter.features(batch).shape == before.shape
