"""The MiniLM torch-pruning peer's ``iterative_steps`` removes exactly the one-shot count (torch-pruning's
own ``iterative_steps`` overshoots local head counts), re-scores between steps, and keeps BERT runnable."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

_PATH = Path(__file__).resolve().parents[3] / "benchmarks" / "peer_torch_pruning.py"


def _load_peer():
    """Import the benchmark module by path (``benchmarks/`` is not a package)."""
    if "peer_torch_pruning" not in sys.modules:
        spec = importlib.util.spec_from_file_location("peer_torch_pruning", _PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["peer_torch_pruning"]


peer = _load_peer()


@pytest.fixture
def bert():
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=50, hidden_size=96, num_hidden_layers=2, num_attention_heads=12,
                                 intermediate_size=64))
    g = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 50, (2, 8), generator=g)} for _ in range(2)]
    return model.eval(), batches


def loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch).last_hidden_state.pow(2).mean()


@pytest.mark.parametrize("target,count", [("heads", lambda m: [a.attention.self.num_attention_heads
                                                               for a in m.encoder.layer]),
                                          ("ffn", lambda m: [a.intermediate.dense.out_features
                                                             for a in m.encoder.layer])])
def test_iterative_steps_remove_exactly_the_one_shot_count_and_stay_runnable(bert, target, count):
    model, batches = bert
    before = count(model)
    calls = []
    counting = lambda m, b: calls.append(1) or loss(m, b)  # noqa: E731
    peer.prune_with_torch_pruning(model, target, 0.5, "taylor", batches, counting, iterative_steps=4)
    assert count(model) == [n - round(0.5 * n) for n in before]  # torch-pruning's own: 12 -> 2 heads
    assert len(calls) == 4 * len(batches)  # gradients accumulated afresh before every step
    model(**batches[0])

