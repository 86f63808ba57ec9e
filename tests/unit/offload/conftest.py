"""Shared set-up for the offload tests."""

from __future__ import annotations

import torch
from torch import nn

from edgeadapt.data.registry import build_dataset
from edgeadapt.models.registry import load_adapter


def trained_tiny_resnet(epochs: int = 2):
    """tiny-resnet trained ``epochs`` epochs on digits at 32×32 (≈92% test accuracy after two), in
    eval mode, and the digits splits: ``(adapter, splits)``."""
    adapter = load_adapter("tiny-resnet")
    splits = build_dataset("digits", size=32)
    torch.manual_seed(0)
    opt = torch.optim.Adam(adapter.model.parameters(), 3e-3)
    adapter.model.train()
    for epoch in range(epochs):
        for b in splits.train.batches(64, shuffle=True, seed=epoch):
            logits = adapter.model(pixel_values=b["pixel_values"]).logits
            loss = nn.functional.cross_entropy(logits, b["labels"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    adapter.model.eval()
    return adapter, splits
