"""Memory knobs: accumulation = big batch, checkpointing = no checkpointing, freezing, BN, plans."""

from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from edgeadapt.errors import ConfigError
from edgeadapt.memory.accounting import measure_peak
from edgeadapt.memory.knobs import BlockChain, apply_plan, block_chain, micro_batches, split_batch, train_step
from edgeadapt.memory.plan import ADAPTATION_LOSS, LossTraits, MemoryPlan, check_micro_batching
from edgeadapt.models.registry import load_adapter
from tests.conftest import make_batches


class Capture(torch.optim.Optimizer):
    """An optimizer whose step records the gradients (train_step zeroes them after stepping)."""

    def __init__(self, params):
        super().__init__(list(params), {})
        self.grads: dict[int, torch.Tensor | None] = {}

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                self.grads[id(p)] = None if p.grad is None else p.grad.detach().clone()


def _grads(adapter, batch, plan, **kw):
    with apply_plan(adapter.model, plan, block_chain(adapter)) as knobs:
        opt = Capture(adapter.model.parameters())
        train_step(adapter, batch, plan, opt, **kw)
        return [opt.grads[id(p)] for p in adapter.model.parameters()], knobs


def _assert_close(a, b, rel=1e-5):
    """Relative error of the whole gradient vector (a parameter whose true gradient is 0 only has
    rounding noise, so per-tensor relative errors are meaningless there)."""
    assert [x is None for x in a] == [y is None for y in b]
    x = torch.cat([t.flatten() for t in a if t is not None])
    y = torch.cat([t.flatten() for t in b if t is not None])
    assert (x - y).norm() <= rel * y.norm(), ((x - y).norm() / y.norm()).item()


def _big_batch(adapter, size=6):
    return make_batches(adapter, n=1, size=size)[0]


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-llama"])
@pytest.mark.parametrize("micro", [1, 2, 4])
def test_accumulation_gives_the_big_batch_gradient(name, micro):
    adapter = load_adapter(name)
    batch = _big_batch(adapter)  # the LM batch has padding in row 0: micro-batches are token-weighted
    whole, _ = _grads(adapter, batch, MemoryPlan())
    split, _ = _grads(adapter, batch, MemoryPlan(micro_batch_size=micro))
    _assert_close(split, whole)


def test_token_weighting_matters_for_a_padded_lm_batch():
    adapter = load_adapter("tiny-llama")
    batch = _big_batch(adapter)
    whole, _ = _grads(adapter, batch, MemoryPlan())
    by_rows, _ = _grads(adapter, batch, MemoryPlan(micro_batch_size=2),
                        traits=LossTraits(weight="samples"), loss_fn=lambda a, b: a.task_loss(b))
    with pytest.raises(AssertionError):
        _assert_close(by_rows, whole, rel=1e-3)


@pytest.mark.parametrize(("name", "segments"), [("tiny-vit", 2), ("tiny-vit", 4), ("tiny-llama", 1)])
def test_checkpointing_gives_the_same_gradients_and_less_memory(name, segments):
    adapter = load_adapter(name)
    batch = _big_batch(adapter)
    plain, _ = _grads(adapter, batch, MemoryPlan())
    plan = MemoryPlan(checkpoint_segments=segments)
    ckpt, knobs = _grads(adapter, batch, plan)
    _assert_close(ckpt, plain, rel=1e-6)
    assert sum(len(s) for s in knobs.segments) == len(block_chain(adapter).blocks)

    def peak(p):
        with apply_plan(adapter.model, p, block_chain(adapter)):
            _, report = measure_peak(lambda: adapter.task_loss(batch).backward(), modules=[adapter.model])
        adapter.model.zero_grad(set_to_none=True)
        return report.peak_bytes
    assert peak(plan) < peak(MemoryPlan())


def test_frozen_blocks_get_no_gradient_no_optimizer_state_and_store_nothing():
    adapter = load_adapter("tiny-vit")
    batch = _big_batch(adapter)
    chain = block_chain(adapter)
    plan = MemoryPlan(freeze_fraction=0.5)
    seen = []
    adapter.model.get_submodule(chain.blocks[1]).register_forward_hook(
        lambda m, a, out: seen.append(out.requires_grad))
    with apply_plan(adapter.model, plan, chain) as knobs:
        assert knobs.num_frozen == 2
        frozen = {id(p) for p in knobs.frozen_parameters}
        stem_and_leading = [*chain.stem, *chain.blocks[:2]]
        expect = {id(p) for path in stem_and_leading for p in adapter.model.get_submodule(path).parameters()}
        assert frozen == expect
        opt = torch.optim.AdamW(knobs.trainable_parameters(), lr=1e-3)
        train_step(adapter, batch, plan, opt)
        for p in adapter.model.parameters():
            assert (id(p) in frozen) == (p not in opt.state)
        assert seen == [False]  # block 1 ran under no_grad: no graph, no saved activations
        adapter.task_loss(batch).backward()
        assert all(p.grad is None for p in knobs.frozen_parameters)
        assert all(p.grad is not None for p in knobs.trainable_parameters())
    assert all(p.requires_grad for p in adapter.model.parameters())  # undone
    assert "forward" not in adapter.model.get_submodule(chain.blocks[0]).__dict__


def test_close_keeps_a_forward_another_tool_patched_before():
    adapter = load_adapter("tiny-vit")
    block = adapter.model.get_submodule(block_chain(adapter).blocks[0])
    theirs = block.forward  # an instance-level patch, as accelerate's hooks make
    block.forward = theirs
    with apply_plan(adapter.model, MemoryPlan(freeze_blocks=1), block_chain(adapter)):
        assert block.forward is not theirs
    assert block.__dict__["forward"] is theirs


def test_freezing_fraction_and_counts_are_validated():
    assert MemoryPlan(freeze_fraction=0.5).frozen_blocks(5) == 2
    assert MemoryPlan(freeze_fraction=1.0).frozen_blocks(4) == 4
    with pytest.raises(ConfigError, match="freeze_blocks"):
        MemoryPlan(freeze_blocks=5).frozen_blocks(4)
    adapter = load_adapter("tiny-llama")
    with pytest.raises(ConfigError, match="checkpoint_segments"):
        apply_plan(adapter.model, MemoryPlan(freeze_blocks=1, checkpoint_segments=2), block_chain(adapter))
    assert all(p.requires_grad for p in adapter.model.parameters())  # a refused plan leaves no trace


def test_plan_round_trips_and_validates():
    plan = MemoryPlan(micro_batch_size=4, freeze_fraction=0.25, checkpoint_segments=2, batchnorm="warn")
    assert MemoryPlan.model_validate_json(plan.model_dump_json()) == plan
    assert MemoryPlan.model_validate_json(MemoryPlan().model_dump_json()) == MemoryPlan()
    for bad in ({"micro_batch_size": 0}, {"freeze_fraction": 1.5}, {"checkpoint_segments": -1},
                {"freeze_blocks": 1, "freeze_fraction": 0.5}, {"batchnorm": "maybe"}, {"micro": 2}):
        with pytest.raises(ValidationError):
            MemoryPlan(**bad)


def test_a_loss_that_is_not_per_sample_is_never_micro_batched():
    plan = MemoryPlan(micro_batch_size=2)
    with pytest.raises(ConfigError, match="adaptation loss.*not a sum over samples"):
        check_micro_batching(plan, 8, ADAPTATION_LOSS)
    assert check_micro_batching(MemoryPlan(), 8, ADAPTATION_LOSS) == 8  # whole batch: fine
    assert check_micro_batching(plan, 8, LossTraits()) == 2
    with pytest.raises(ConfigError, match="at least 2 samples per batch"):  # 'mmd needs at least 2 samples'
        check_micro_batching(MemoryPlan(), 1, ADAPTATION_LOSS)
    with pytest.raises(ConfigError, match="one of 1"):  # 5 = 2 + 2 + 1: the last part breaks MMD
        check_micro_batching(plan, 5, LossTraits(min_samples=2))
    adapter = load_adapter("tiny-vit")
    with pytest.raises(ConfigError, match="adaptation loss"):
        train_step(adapter, _big_batch(adapter), plan, torch.optim.SGD(adapter.model.parameters(), lr=0.1),
                   loss_fn=lambda a, b: a.task_loss(b), traits=ADAPTATION_LOSS)


def test_micro_batches_carry_their_share_of_rows_or_tokens():
    rows = micro_batches({"x": torch.zeros(5, 2)}, MemoryPlan(micro_batch_size=2), LossTraits())
    assert [share for _, share in rows] == [0.4, 0.4, 0.2]
    ids = torch.ones(3, 5, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    tokens = micro_batches({"input_ids": ids, "attention_mask": mask}, MemoryPlan(micro_batch_size=1),
                           LossTraits(weight="tokens"))
    assert [share for _, share in tokens] == [0.8, 0.2]  # 4 + 1 targets; the last row has none


def test_a_cnn_adapter_chain_comes_from_its_stages_less_the_stem():
    cnn = SimpleNamespace(model=TinyBNNet(), embeddings=lambda: ["stem"],
                          stages=lambda: ["stem", "stages.0", "stages.1"])
    assert block_chain(cnn) == BlockChain(blocks=("stages.0", "stages.1"), stem=("stem",))
    vit = load_adapter("tiny-vit")
    assert block_chain(vit) == BlockChain(tuple(f"vit.layers.{i}" for i in range(4)), ("vit.embeddings",))


def test_split_batch_slices_rows_and_shares_the_rest():
    batch = {"x": torch.arange(10).reshape(5, 2), "scale": torch.tensor(2.0)}
    parts = split_batch(batch, 2)
    assert [len(p["x"]) for p in parts] == [2, 2, 1]
    assert all(p["scale"] is batch["scale"] for p in parts)


class TinyBNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.stages = nn.ModuleList([nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4),
                                                   nn.ReLU()) for _ in range(2)])
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.stem(x)
        for s in self.stages:
            x = s(x)
        return self.head(x.mean((2, 3)))


def _bn_setup():
    torch.manual_seed(0)
    model = TinyBNNet()
    adapter = SimpleNamespace(model=model)
    batch = {"x": torch.randn(8, 3, 6, 6), "y": torch.randint(0, 3, (8,))}
    chain = BlockChain(blocks=("stages.0", "stages.1"), stem=("stem",))
    loss = lambda a, b: nn.functional.cross_entropy(a.model(b["x"]), b["y"])  # noqa: E731
    return model, adapter, batch, chain, loss


def test_batchnorm_is_frozen_at_small_micro_batches_so_accumulation_stays_exact():
    model, adapter, batch, chain, loss = _bn_setup()
    model.train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    plan = MemoryPlan(micro_batch_size=2, batchnorm="freeze")
    reference = copy.deepcopy(model).eval()  # eval-mode BN: what the frozen policy computes
    ref_opt = Capture(reference.parameters())
    train_step(SimpleNamespace(model=reference), batch, MemoryPlan(), ref_opt, loss_fn=loss,
               traits=LossTraits())
    with apply_plan(model, plan, chain):
        opt = Capture(model.parameters())
        train_step(adapter, batch, plan, opt, loss_fn=loss, traits=LossTraits())
    _assert_close([opt.grads[id(p)] for p in model.parameters()],
                  [ref_opt.grads[id(p)] for p in reference.parameters()])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())  # running stats untouched
    assert all(m.training for m in model.modules())  # modes restored


def test_batchnorm_warns_or_trains_when_asked():
    model, adapter, batch, chain, loss = _bn_setup()
    with pytest.warns(UserWarning, match="BatchNorm"):
        apply_plan(model, MemoryPlan(micro_batch_size=2, batchnorm="warn"), chain).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_plan(model, MemoryPlan(micro_batch_size=2, batchnorm="train"), chain).close()
        apply_plan(model, MemoryPlan(micro_batch_size=32, batchnorm="warn"), chain).close()  # large enough


def test_checkpointed_batchnorm_statistics_update_once():
    model, adapter, batch, chain, loss = _bn_setup()
    twin = copy.deepcopy(model)
    for m, plan in ((model, MemoryPlan()), (twin, MemoryPlan(checkpoint_segments=1))):
        with apply_plan(m, plan, chain):
            train_step(SimpleNamespace(model=m), batch, plan, Capture(m.parameters()), loss_fn=loss,
                       traits=LossTraits())
    for k, v in model.state_dict().items():
        assert torch.allclose(twin.state_dict()[k], v), k


class Scaled(nn.Module):
    """Its parent changes each block's output before the next block: not a plain chain."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x) * 0.5
        return x.sum()


def test_a_segment_over_a_non_chain_is_refused_by_name():
    model = Scaled()
    with apply_plan(model, MemoryPlan(checkpoint_segments=1), BlockChain(("layers.0", "layers.1"))):
        with pytest.raises(ConfigError, match="layers.1 does not take the previous block's output"):
            model(torch.randn(3, 4, requires_grad=True))
    with apply_plan(model, MemoryPlan(checkpoint_segments=2), BlockChain(("layers.0", "layers.1"))):
        model(torch.randn(3, 4, requires_grad=True)).backward()  # one block per segment: fine
