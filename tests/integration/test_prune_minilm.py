"""Whole stage on the real pretrained MiniLM: Taylor pruning beats random pruning on fidelity."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from edgeadapt.data.calibration import calibration_batches
from edgeadapt.data.text import builtin_paragraphs, text_batches
from edgeadapt.pruning.apply import apply_plan
from edgeadapt.pruning.checkpoint import load_pruned, save_pruned
from edgeadapt.pruning.plan import PruningPlan
from edgeadapt.pruning.prune import prune

pytestmark = pytest.mark.slow


def _embed(adapter, batches):
    with torch.no_grad():
        return torch.cat([adapter.features(b) for b in batches])


def test_taylor_ffn_pruning_keeps_embeddings_closer_than_random(minilm_adapter, tmp_path):
    dense = minilm_adapter
    held_out = list(text_batches(dense.tokenizer, builtin_paragraphs("test")[:48], 16, 96))
    reference = _embed(dense, held_out)

    taylor = copy.deepcopy(dense)
    prune(taylor, ["neurons"], "fisher", calibration_batches(taylor, 4, 8, max_length=96), unit_sparsity=0.25)
    rand = copy.deepcopy(dense)
    plan = PruningPlan.dense(rand.fingerprint())
    g = torch.Generator().manual_seed(0)
    for b in plan.blocks:
        b.neurons = sorted(torch.randperm(1536, generator=g)[:1152].tolist())
    apply_plan(rand, plan)

    cos_taylor = F.cosine_similarity(_embed(taylor, held_out), reference).mean().item()
    cos_random = F.cosine_similarity(_embed(rand, held_out), reference).mean().item()
    assert cos_taylor > cos_random + 0.02, (cos_taylor, cos_random)
    assert 0.5 < cos_taylor < 1.0

    save_pruned(taylor, tmp_path / "minilm-pruned")
    again = load_pruned(tmp_path / "minilm-pruned")
    assert torch.equal(_embed(again, held_out[:1]), _embed(taylor, held_out[:1]))
    assert sum(p.numel() for p in again.model.parameters()) == 22_713_216 - 6 * 384 * 769
