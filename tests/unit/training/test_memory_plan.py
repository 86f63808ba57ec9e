"""The training loop honours a MemoryPlan: same weights as plain training of the same parameters,
frozen parameters untouched, less peak memory; the plan validates and round-trips in TrainConfig."""

from __future__ import annotations

import pytest
import torch
import yaml

from edgeadapt.errors import ConfigError
from edgeadapt.memory.accounting import measure_peak
from edgeadapt.memory.knobs import block_chain
from edgeadapt.memory.plan import ADAPTATION_LOSS, MemoryPlan
from edgeadapt.models.registry import load_adapter
from edgeadapt.training.config import TrainConfig
from edgeadapt.training.loop import fit
from tests.conftest import make_batches, state

PLAN = MemoryPlan(micro_batch_size=2, freeze_fraction=0.5, checkpoint_segments=2)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(epochs=1, max_steps=3, learning_rate=1e-2, schedule="constant", warmup_fraction=0.0,
                       device="cpu", progress=False, **kw)


def _frozen_names(adapter, plan: MemoryPlan) -> set[str]:
    """Parameter names of the stem and the leading blocks ``plan`` freezes."""
    chain = block_chain(adapter)
    prefixes = [*chain.stem, *chain.blocks[:plan.frozen_blocks(len(chain.blocks))]]
    return {n for n, _ in adapter.model.named_parameters() if any(n.startswith(p + ".") for p in prefixes)}


def _train(plan: MemoryPlan | None, freeze: set[str] = frozenset()):
    adapter = load_adapter("tiny-vit")  # seeded: the same initial weights every time; no dropout
    for name, p in adapter.model.named_parameters():
        p.requires_grad_(name not in freeze)
    batches = make_batches(adapter, n=3, size=8)
    before = state(adapter)
    _, report = measure_peak(lambda: fit(adapter, lambda e: batches, _cfg(memory=plan)), device="cpu",
                             modules=[adapter.model])
    return adapter, before, state(adapter), report.total_bytes


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    x = torch.cat([v.flatten().float() for v in a.values()])
    y = torch.cat([v.flatten().float() for v in b.values()])
    return ((x - y).norm() / y.norm()).item()


def test_a_plan_trains_the_same_weights_with_less_memory():
    adapter, before, planned, peak_planned = _train(PLAN)
    frozen = _frozen_names(adapter, PLAN)
    assert frozen and len(frozen) < len(before)
    # reference: no knobs, the same parameters frozen by hand, the whole batch in one pass
    _, _, reference, peak_plain = _train(None, freeze=frozen)
    assert _rel(planned, reference) < 1e-5
    for name in frozen:  # frozen parameters are untouched ...
        assert torch.equal(planned[name], before[name]), name
    trained = [n for n in before if n not in frozen and n in dict(adapter.model.named_parameters())]
    assert any(not torch.equal(planned[n], before[n]) for n in trained)  # ... and the rest did train
    # the plan is undone afterwards: every parameter trainable again, blocks' forwards restored
    assert all(p.requires_grad for p in adapter.model.parameters())
    assert all("forward" not in m.__dict__ for m in adapter.model.modules())
    # and it needs less memory than training every parameter on the whole batch at once
    _, _, _, peak_full = _train(None)
    assert peak_planned < peak_plain < peak_full, (peak_planned, peak_plain, peak_full)
    print(f"peak bytes: plan {peak_planned}, same params without knobs {peak_plain}, all params {peak_full}")


def test_a_plan_refuses_to_split_a_loss_that_is_not_per_sample():
    adapter = load_adapter("tiny-vit")
    batches = make_batches(adapter, n=1, size=8)
    with pytest.raises(ConfigError, match="not a sum over samples"):
        fit(adapter, lambda e: batches, _cfg(memory=MemoryPlan(micro_batch_size=4)),
            loss_traits=ADAPTATION_LOSS)
    assert all(p.requires_grad for p in adapter.model.parameters())  # undone on the error too


def test_memory_field_validates_and_round_trips():
    cfg = _cfg(memory=PLAN)
    assert TrainConfig.model_validate_json(cfg.model_dump_json()) == cfg
    assert TrainConfig(**yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json")))) == cfg
    assert TrainConfig(memory={"freeze_blocks": 2}).memory == MemoryPlan(freeze_blocks=2)
    with pytest.raises(ValueError, match="freeze_blocks or freeze_fraction"):  # nested: a ValidationError
        TrainConfig(memory={"freeze_blocks": 1, "freeze_fraction": 0.5})
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        TrainConfig(gradient_checkpointing=True, memory={"checkpoint_segments": 2})
    with pytest.raises(ValueError, match="micro_batch_size"):
        TrainConfig(memory={"micro_batch_size": 0})


def test_a_plan_the_model_cannot_take_fails_before_training():
    adapter = load_adapter("tiny-vit")
    before = state(adapter)
    with pytest.raises(ConfigError, match="freeze_blocks"):
        fit(adapter, lambda e: make_batches(adapter, n=1, size=4), _cfg(memory=MemoryPlan(freeze_blocks=9)))
    assert all(torch.equal(v, before[k]) for k, v in state(adapter).items())
