"""Block chains and descendants: exact at full width, narrower inside, distilled, saved and reloaded."""

from __future__ import annotations

import json

import pytest
import torch

from edgeadapt.errors import ArtifactError, ConfigError
from edgeadapt.models.registry import load_adapter
from edgeadapt.offload.artifact import load_descendants, save_descendants
from edgeadapt.offload.blocks import block_chain, distill, make_descendants

MODELS = ("tiny-resnet", "tiny-vit")


@pytest.fixture(scope="module", params=MODELS)
def built(request):
    adapter = load_adapter(request.param)
    torch.manual_seed(0)
    size = adapter.model.config.image_size
    x = torch.randn(6, 3, size, size)
    return adapter, make_descendants(adapter), x


@pytest.mark.parametrize("name", ["tiny-resnet", "tiny-regnet", "tiny-mobilenetv2", "tiny-mobilevit",
                                  "tiny-vit"])
def test_composed_chain_is_the_model(name):
    adapter = load_adapter(name)
    size = adapter.model.config.image_size
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        assert torch.equal(block_chain(adapter)(x), adapter.model(pixel_values=x).logits)


def test_full_width_descendant_equals_its_block_and_narrower_ones_keep_the_output_shape(built):
    adapter, desc, x = built
    blocks = block_chain(adapter).blocks
    full = desc.widths.index(1.0)
    h = x
    with torch.no_grad():
        for b, block in enumerate(blocks):
            out = block(h)
            assert torch.equal(desc.modules[b][full](h), out), desc.names[b]
            for w in range(len(desc.widths)):
                assert desc.modules[b][w](h).shape == out.shape
            h = out
        assert torch.equal(desc.chain([1.0] * len(blocks))(x), adapter.model(pixel_values=x).logits)
    # every block with inner units is narrower at 0.25 than at full width (stem and head have none)
    narrowed = [desc.params(b, desc.widths.index(0.25)) < desc.params(b, full) for b in range(len(blocks))]
    assert narrowed[1:-1] == [True] * (len(blocks) - 2)
    assert not narrowed[-1]


def test_distillation_lowers_the_block_loss_and_leaves_full_width_alone(built):
    _, desc, x = built
    before = [p.clone() for p in desc.modules[1][desc.widths.index(1.0)].parameters()]
    losses = distill(desc, [x[:3], x[3:]], epochs=3, lr=1e-2)
    key = f"{desc.names[1]}/0.25"
    assert losses[key][-1] < losses[key][0]
    after = list(desc.modules[1][desc.widths.index(1.0)].parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert not any(k.startswith("head/") for k in losses)


def test_artifact_round_trip_and_tampering(built, tmp_path):
    _, desc, x = built
    save_descendants(desc, tmp_path / "desc", config={"epochs": 3})
    again = load_descendants(tmp_path / "desc")
    assert again.names == desc.names and again.widths == desc.widths
    mix = [desc.widths[b % len(desc.widths)] for b in range(len(desc.names))]
    with torch.no_grad():
        assert torch.equal(again.chain(mix)(x), desc.chain(mix)(x))
    manifest = json.loads((tmp_path / "desc" / "manifest.json").read_text())
    assert manifest["kind"] == "offload-descendants" and manifest["config"] == {"epochs": 3}
    plan = tmp_path / "desc" / "plans" / "width-1.json"
    plan.write_text(plan.read_text().replace("1", "2", 1))
    with pytest.raises(ArtifactError, match="hash mismatch"):
        load_descendants(tmp_path / "desc")


def test_refusals(built):
    adapter, desc, _ = built
    with pytest.raises(ConfigError, match="include 1.0"):
        make_descendants(adapter, widths=(0.5, 0.25))
    with pytest.raises(ConfigError, match="not built"):
        desc.chain([0.6] * len(desc.names))


def test_a_family_without_a_head_entry_is_refused():
    with pytest.raises(ConfigError, match="offload chains are built for"):
        block_chain(load_adapter("tiny-bert"))


@pytest.mark.parametrize("name", ["tiny-resnet", "tiny-vit"])
def test_a_bf16_chain_takes_float32_inputs(name):
    """Before: `offload serve` on a bf16 checkpoint failed ('expected scalar type Float but found
    BFloat16'): the first block got the float32 images or frames as they came."""
    adapter = load_adapter(name)
    adapter.model.to(torch.bfloat16).eval()
    size = adapter.model.config.image_size
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        chain = block_chain(adapter)
        out = chain(x)
        middle = chain(chain(x, 0, 2).float(), 2)  # a float32 frame from the wire mid-chain
    assert out.dtype == torch.bfloat16 and out.shape == (2, 10)
    assert torch.equal(middle, out)


def test_descendants_of_a_bf16_checkpoint_reload_in_the_stored_float32(tmp_path):
    """Before: `offload build` upcast a bf16 checkpoint and saved float32 descendants, but
    load_descendants rebuilt them from the config in bf16 (rounding the weights), so `offload serve`
    / `run` on the artifact crashed (float input, bf16 bias) — new-user trial. Now they reload in the
    stored dtype, exactly; trace casts its input as forward does."""
    from edgeadapt.numerics import upcast

    load_adapter("tiny-resnet").model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    adapter = load_adapter(str(tmp_path / "bf16"))
    assert next(adapter.model.parameters()).dtype == torch.bfloat16
    upcast(adapter.model)
    desc = make_descendants(adapter, (1.0, 0.5))
    save_descendants(desc, tmp_path / "d")
    back = load_descendants(tmp_path / "d")
    for row, saved in zip(back.modules, desc.modules):
        for got, want in zip(row, saved):
            for (k, a), b in zip(got.state_dict().items(), want.state_dict().values()):
                assert a.dtype == b.dtype and torch.equal(a, b), k
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        chain = back.chain([0.5] * len(back.names))
        assert torch.equal(chain.trace(x)[-1], chain(x))
        bf16 = load_adapter(str(tmp_path / "bf16"))
        bf16.model.eval()
        assert block_chain(bf16).trace(x)[-1].dtype == torch.bfloat16  # float32 images, bf16 chain
