"""The loop keeps its randomness to itself: ``fit`` seeds private RNG streams, never the caller's."""

from __future__ import annotations

import random

import pytest
import torch

from edgeadapt.data.digits import digits_tensors, image_batches
from edgeadapt.errors import ConfigError
from edgeadapt.models.registry import load_adapter
from edgeadapt.training.loop import TrainConfig, fit, own_rng, seed_everything


def _data():
    x, y = digits_tensors("train")
    return lambda e: image_batches(x[:64], y[:64], 32, shuffle=True, seed=e)


def _snapshot() -> tuple[torch.Tensor, object]:
    return torch.random.get_rng_state(), random.getstate()


CFG = TrainConfig(epochs=1, learning_rate=1e-3, progress=False, seed=7)


def test_fit_leaves_the_callers_rng_streams_untouched():
    adapter, data = load_adapter("tiny-vit", seed=0), _data()  # (importing sklearn draws from random)
    torch.manual_seed(123)
    random.seed(123)
    torch_before, python_before = _snapshot()
    fit(adapter, data, CFG)
    torch_after, python_after = _snapshot()
    assert torch.equal(torch_before, torch_after)
    assert python_before == python_after


def test_fit_is_reproducible_whatever_the_callers_rng_state():
    weights = []
    for caller_seed in (1, 2):
        torch.manual_seed(caller_seed)
        random.seed(caller_seed)
        adapter = load_adapter("tiny-vit", seed=0)

        def noisy_loss(a, batch):  # draws from both process-wide streams inside the loop
            jitter = torch.rand(()) * 1e-3 + random.random() * 1e-3
            return a.task_loss(batch) + jitter * sum(p.sum() for p in a.model.parameters())

        fit(adapter, _data(), CFG, loss_fn=noisy_loss)
        weights.append({k: v.clone() for k, v in adapter.model.state_dict().items()})
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


def test_own_rng_restores_the_streams_even_after_an_error():
    torch_before, python_before = _snapshot()
    with pytest.raises(RuntimeError), own_rng(torch.device("cpu")):
        torch.manual_seed(0)
        random.seed(0)
        raise RuntimeError("boom")
    assert torch.equal(torch.random.get_rng_state(), torch_before) and random.getstate() == python_before


def test_seed_everything_is_the_explicit_process_wide_step():
    seed_everything(5)
    a = (torch.rand(3), random.random())
    seed_everything(5)
    assert torch.equal(torch.rand(3), a[0]) and random.random() == a[1]


def test_a_monitor_the_validation_does_not_produce_is_a_config_error():
    adapter = load_adapter("tiny-vit", seed=0)
    with pytest.raises(ConfigError, match="monitor"):
        fit(adapter, _data(), CFG, evaluate=lambda: {"loss": 1.0}, monitor="accuracy")
