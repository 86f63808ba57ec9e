"""CNN adapters (ResNet, RegNet/ResNeXt, MobileNetV2, MobileViT): load, run, train, refuse transformer ops."""

from __future__ import annotations

import pytest
import torch

from edgeadapt.errors import ConfigError
from edgeadapt.models.cnn import CNNAdapter
from edgeadapt.models.inspect import inspect_model
from edgeadapt.models.registry import load_adapter, model_image_size, model_modality, wrap
from tests.conftest import make_batches

CNNS = ["tiny-resnet", "tiny-regnet", "tiny-mobilenetv2", "tiny-mobilevit"]
STAGES = {"tiny-resnet": 4, "tiny-regnet": 4, "tiny-mobilenetv2": 18, "tiny-mobilevit": 7}


@pytest.mark.parametrize("name", CNNS)
def test_tiny_cnn_takes_digits_at_32_and_has_a_chain_of_stages(name):
    adapter = load_adapter(name)
    assert isinstance(adapter, CNNAdapter) and adapter.modality == "image"
    assert model_image_size(name) == 32 and model_modality(name) == "image"
    batch = make_batches(adapter, n=1)[0]
    assert adapter.logits(batch).shape == (4, 10)
    feats = adapter.features(batch)
    assert feats.shape == (4, adapter.fingerprint()["hidden_size"])
    stages = adapter.stages()
    assert len(stages) == STAGES[name] == adapter.fingerprint()["num_layers"]
    assert adapter.embeddings() == stages[:1]
    # the chain is what the planner freezes and checkpoints: running it block by block, then the
    # pooling and head, reproduces the model's logits
    outputs = []
    hooks = [adapter.model.get_submodule(p).register_forward_hook(lambda m, a, o: outputs.append((a[0], o)))
             for p in stages]
    try:
        adapter.logits(batch)
    finally:
        for h in hooks:
            h.remove()
    for (_, prev_out), (next_in, _) in zip(outputs, outputs[1:]):
        assert next_in is prev_out


@pytest.mark.parametrize("name", CNNS)
def test_loss_decreases_in_a_few_steps(name):
    adapter = load_adapter(name)
    adapter.model.train()
    batch = make_batches(adapter, n=1, size=8)[0]
    opt = torch.optim.Adam(adapter.model.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        loss = adapter.task_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_seeded_builds_are_identical_and_base_hash_is_stable():
    a, b = load_adapter("tiny-resnet"), load_adapter("tiny-resnet")
    assert a.base_hash() == b.base_hash()
    assert load_adapter("tiny-resnet", seed=1).base_hash() != a.base_hash()
    assert a.fingerprint() == b.fingerprint()


@pytest.mark.parametrize("op", ["blocks", "layers_path", "set_attention_units", "set_layers"])
def test_transformer_only_operations_refuse_and_name_channel_pruning(op):
    adapter = load_adapter("tiny-resnet")
    args = {"blocks": (), "layers_path": (), "set_attention_units": (0, 1), "set_layers": ([0],)}[op]
    with pytest.raises(ConfigError, match="channel"):
        getattr(adapter, op)(*args)


@pytest.mark.parametrize("name", ["tiny-resnet", "tiny-mobilevit"])
def test_a_local_hf_directory_of_a_cnn_family_loads(tmp_path, name):
    adapter = load_adapter(name)
    adapter.model.save_pretrained(tmp_path)
    again = load_adapter(str(tmp_path))
    assert isinstance(again, CNNAdapter) and again.family == adapter.family
    mine, theirs = adapter.model.state_dict(), again.model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert again.fingerprint() == adapter.fingerprint()
    assert model_image_size(str(tmp_path)) == 32


def test_wrap_builds_a_cnn_adapter_from_a_transformers_model():
    from transformers import ResNetConfig, ResNetForImageClassification

    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                      layer_type="bottleneck", num_labels=3)).eval()
    adapter = wrap(model, name="mine")
    assert isinstance(adapter, CNNAdapter) and adapter.head() == "classifier.1"
    assert len(adapter.stages()) == 3  # embedder + one layer per stage
    # a ResNet config names no image_size (real checkpoints: 224); inspect and tracing need one
    assert model.config.image_size == 224
    info = inspect_model(adapter)
    assert [r.ffn_width for r in info.blocks] == [8, 8, 16] and info.total_flops > 0


def test_rebase_of_a_dense_cnn_takes_a_new_hash():
    adapter = load_adapter("tiny-regnet")
    old = adapter.base_hash()
    with torch.no_grad():
        next(adapter.model.parameters()).add_(1.0)
    adapter.rebase()
    assert adapter.base_hash() != old and adapter.parent_hash == old


@pytest.mark.parametrize("name", CNNS)
def test_tiny_cnns_start_from_a_trainable_init(name):
    # transformers' MobileNetV2/MobileViT init (N(0, 0.02), BatchNorm scales too) made logits ~1e-26
    adapter = load_adapter(name)
    bns = [m for m in adapter.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)
    adapter.model.train()
    batch = make_batches(adapter, n=1, size=8)[0]
    with torch.no_grad():
        assert adapter.features(batch).abs().mean() > 1e-2


@pytest.mark.slow
def test_train_recipe_trains_and_saves_a_cnn(tmp_path):
    from edgeadapt.config import load_config
    from edgeadapt.pruning.checkpoint import load_model
    from edgeadapt.recipes.train import run_training

    recipe = load_config("configs/train-resnet-digits.yaml", kind="train")
    recipe = recipe.model_copy(update={"out": tmp_path / "run", "train": recipe.train.model_copy(
        update={"epochs": 2})})
    outcome = run_training(recipe)
    assert outcome.test["accuracy"] > 0.5
    again = load_model(tmp_path / "run")
    assert isinstance(again, CNNAdapter) and again.fingerprint() == load_adapter("tiny-resnet").fingerprint()


@pytest.mark.parametrize("name", ["tiny-mobilenetv2", "tiny-resnet"])
def test_a_bf16_cnn_checkpoint_evaluates_and_trains_on_float32_images(name, tmp_path):
    """Before: transformers' CNNs do not cast pixel_values, so a bf16 checkpoint failed in
    evaluate/train/memory plan with 'Input type (torch.FloatTensor) and weight type
    (CPUBFloat16Type) should be the same'."""
    import torch

    from edgeadapt.data.registry import build_dataset
    from edgeadapt.memory.estimator import estimate
    from edgeadapt.memory.plan import MemoryPlan

    load_adapter(name).model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    adapter = load_adapter(str(tmp_path / "bf16"))
    assert next(adapter.model.parameters()).dtype == torch.bfloat16
    batches = list(build_dataset("digits", size=32).test.batches(16))[:2]
    assert 0.0 <= adapter.evaluate(batches)["accuracy"] <= 1.0
    adapter.model.float()  # training upcasts to float32 master weights; inputs follow the weights
    assert adapter.task_loss(batches[0]).dtype == torch.float32
    adapter.model.to(torch.bfloat16)
    assert estimate(adapter, MemoryPlan(), batches[0]).predicted_bytes > 0
