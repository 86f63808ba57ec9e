"""Proxy budgets: a parameter count or bytes of retraining memory picks the widest proxy that fits;
an infeasible budget names the smallest feasible one; an empty window and width 0 are refused."""

from __future__ import annotations

import pytest
import torch

from edgeadapt.models.registry import load_adapter
from edgeadapt.offline.knowledge_base import KBSettings, init_kb
from edgeadapt.online.proxy import (
    candidate_widths,
    extract_proxy,
    proxy_params,
    proxy_step_memory,
    width_for_memory,
    width_for_params,
)
from tests.conftest import make_batches


def params(adapter) -> int:
    return sum(p.numel() for p in adapter.model.parameters())


@pytest.fixture(scope="module")
def vit_kb():
    fm = load_adapter("tiny-vit")
    batch = make_batches(fm, n=1, size=4)[0]
    torch.manual_seed(0)
    return init_kb(fm, [batch], KBSettings(importance="magnitude")), batch


def test_predicted_params_match_the_extracted_proxy(vit_kb):
    kb, batch = vit_kb
    for width in (0.25, 0.5, 1.0):
        assert proxy_params(kb, width) == params(extract_proxy(kb, [batch], width).adapter)


def test_params_budget_gives_the_widest_fitting_proxy(vit_kb):
    kb, batch = vit_kb
    at_half = proxy_params(kb, 0.5)
    width = width_for_params(kb, at_half + 1)
    assert width == 0.5
    proxy = extract_proxy(kb, [batch], width).adapter
    assert params(proxy) <= at_half + 1
    # the next wider candidate would not fit
    wider = [w for w in candidate_widths(kb) if w > width][0]
    assert proxy_params(kb, wider) > at_half + 1
    assert width_for_params(kb, 10**9) == 1.0


def test_infeasible_params_budget_names_the_smallest_feasible(vit_kb):
    kb, _ = vit_kb
    smallest = proxy_params(kb, candidate_widths(kb)[0])
    with pytest.raises(ValueError, match=rf"proxy_params=1,000 is infeasible.*proxy_params >= {smallest:,}"):
        width_for_params(kb, 1000)
    with pytest.raises(ValueError, match="positive integer"):
        width_for_params(kb, 0)


def test_memory_budget_is_monotone_and_respected(vit_kb):
    kb, batch = vit_kb
    x = {k: v for k, v in batch.items() if k != "labels"}

    def loss(model):
        return lambda m, b: m.model(pixel_values=b["pixel_values"]).logits.logsumexp(-1).mean()

    small, full = proxy_step_memory(kb, 0.25, loss, x), proxy_step_memory(kb, 1.0, loss, x)
    assert 0 < small < full
    width = width_for_memory(kb, (small + full) // 2, loss, x)
    assert 0.25 <= width < 1.0
    assert proxy_step_memory(kb, width, loss, x) <= (small + full) // 2
    with pytest.raises(ValueError, match="bytes of retraining memory"):
        width_for_memory(kb, 1024, loss, x)


def test_empty_window_and_zero_width_are_refused(vit_kb):
    kb, batch = vit_kb
    with pytest.raises(ValueError, match="window is empty"):
        extract_proxy(kb, [], 0.5)
    with pytest.raises(ValueError, match="width"):
        extract_proxy(kb, [batch], 0.0)
