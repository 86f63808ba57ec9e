"""The documented custom-adapter example (a plain PyTorch model) works with pruning, LoRA, the
knowledge base and sync exactly, and the rule for saving it is explicit: in memory only."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.numerics import max_error
from edgeadapt.offline.artifacts import save_kb
from edgeadapt.offline.knowledge_base import KBSettings, init_kb
from edgeadapt.offline.lora import LoraSettings, add_lora, merge_checked, merge_lora, save_lora_artifact
from edgeadapt.offline.neuron_index import load_index, save_index
from edgeadapt.online.proxy import extract_proxy
from edgeadapt.online.sync import sync
from edgeadapt.pruning.apply import apply_plan
from edgeadapt.pruning.checkpoint import save_pruned
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


def _fm_and_batches(seed: int = 0):
    ex = _example()
    torch.manual_seed(seed)
    return ex, ex.MyAdapter(ex.MyClassifier()), ex.make_batches(2, seed, size=8)


def _state(adapter) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in adapter.model.state_dict().items()}


def test_features_are_the_heads_input_and_logits_one_forward():
    _, fm, batches = _fm_and_batches()
    seen = []
    fm.model.head.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    logits = fm.logits(batches[0])
    assert logits.shape == (8, 3) and len(seen) == 1
    assert torch.equal(seen[0], fm.features(batches[0]))


def test_the_kb_at_full_width_computes_the_fm_and_an_untrained_proxy_syncs_back_exactly():
    _, fm, batches = _fm_and_batches()
    kb = init_kb(fm, batches, KBSettings(importance="fisher", bottleneck=4))
    assert kb.index.base_hash == fm.base_hash() and kb.adapter.neuron_index is kb.index
    assert any(list(b.neurons) != sorted(b.neurons) for b in kb.index.blocks)  # really reordered
    for batch in batches:
        with torch.no_grad():
            diff, allowed = max_error(kb.adapter.logits(batch), fm.logits(batch), torch.float32, 2)
        assert diff <= allowed, (diff, allowed)
    # gates with saliency != 1 (input-dependent), so extraction folds and sync must unfold
    with torch.no_grad():
        for p in kb.gates.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    kb0, fm0 = _state(kb.adapter), _state(fm)
    proxy = extract_proxy(kb, batches, 0.5)
    assert proxy.adapter.blocks()[0].mlp.width == 32
    assert proxy.adapter.neuron_index.to_dict() == kb.index.to_dict()  # a proxy knows its KB order
    sync(kb, proxy, fm)
    for before, after in ((kb0, _state(kb.adapter)), (fm0, _state(fm))):
        for k in before:  # at most a rounding of the fold/unfold, relative to the value
            torch.testing.assert_close(after[k], before[k], rtol=1e-6, atol=1e-9, msg=k)


def test_lora_merges_exactly_into_the_custom_model_and_needs_linear_projections():
    _, fm, batches = _fm_and_batches()
    hash0 = fm.base_hash()
    trainable = add_lora(fm, LoraSettings(rank=2, alpha=4))
    assert any("lora_A" in n for n in trainable) and "head.weight" in trainable
    with torch.no_grad():
        for n, p in fm.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # a trained-looking update, so the merge changes the weights
    report = merge_checked(fm, batches[0])
    merge_lora(fm)
    assert report["merge_max_abs_diff"] < 1e-5
    assert type(fm.model.blocks[0].attn.q) is nn.Linear  # plain modules again, same names
    assert fm.base_hash() != hash0  # the merged weights are the new base

    class Scaled(nn.Module):  # a projection with a weight that is not an nn.Linear
        def __init__(self, inner: nn.Linear) -> None:
            super().__init__()
            self.weight, self.bias = inner.weight, inner.bias

        def forward(self, x):
            return nn.functional.linear(x, self.weight, self.bias)

    fm.model.blocks[1].fc_in = Scaled(fm.model.blocks[1].fc_in)
    with pytest.raises(ConfigError, match=r"nn\.Linear projections.*are not: blocks\.1\.fc_in \(Scaled\)"):
        add_lora(fm, LoraSettings(targets=["mlp_in"]))


def test_a_custom_models_artifacts_are_refused_before_writing_and_its_index_saves(tmp_path):
    _, fm, batches = _fm_and_batches()
    kb = init_kb(fm, batches, KBSettings(importance="magnitude", bottleneck=4))
    for call in (lambda: save_kb(kb, tmp_path / "kb"),
                 lambda: save_lora_artifact(fm, tmp_path / "lora", LoraSettings(), {}, {}),
                 lambda: save_pruned(fm, tmp_path / "model")):  # was an AttributeError on base_config
        with pytest.raises(ConfigError, match="custom model adapter.*in memory"):
            call()
    assert list(tmp_path.iterdir()) == []
    assert load_index(save_index(kb.index, tmp_path / "index")).to_dict() == kb.index.to_dict()
