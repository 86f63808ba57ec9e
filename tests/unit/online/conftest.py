"""Shared set-up for the online-stage tests."""

from __future__ import annotations

import pytest
import torch

from edgeadapt.data.registry import build_dataset
from edgeadapt.models.registry import load_adapter
from edgeadapt.offline.knowledge_base import KBSettings, init_kb

OFFLINE_RECORD = {"offline": {"data": {"name": "digits"}, "seed": 0}}  # what `offline kb` records


@pytest.fixture(scope="module")
def vit_kb():
    """A seeded tiny ViT and a knowledge base built from it on one digits batch: ``(fm, kb)``."""
    torch.manual_seed(0)
    fm = load_adapter("tiny-vit")
    batch = next(iter(build_dataset("digits", size=16).train.batches(16)))
    return fm, init_kb(fm, [batch], KBSettings(importance="magnitude"))
