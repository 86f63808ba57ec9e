"""The knowledge base (KB): exact at saturated init, k-WTA keeps the right units, gradients reach
model and gates (never the teacher), sandwich training helps the small widths, the extracted proxy
is the KB at a width, and bad input is refused by name."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from edgeadapt.models.registry import load_adapter
from edgeadapt.numerics import max_error
from edgeadapt.offline.artifacts import load_kb, save_kb
from edgeadapt.offline.gates import GateSet, gate_point, kwta
from edgeadapt.offline.knowledge_base import (
    KBSettings,
    build_kb,
    check_width,
    distill_loss,
    init_kb,
    units_at,
)
from edgeadapt.offline.knowledge_base import outputs as kb_outputs
from edgeadapt.online.proxy import extract_proxy
from edgeadapt.training.config import TrainConfig
from tests.conftest import ALL, TINY, at_width, make_batches, outputs

CHEAP = KBSettings(importance="magnitude")  # no calibration backward: for tests not about importance


def seeded_kb(fm, calibration, settings: KBSettings = CHEAP, seed: int = 0):
    """``init_kb`` with the gate MLPs' first layers (drawn from the global RNG) seeded, so a test
    does not depend on which tests ran before it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return init_kb(fm, calibration, settings)


def params(adapter) -> int:
    return sum(p.numel() for p in adapter.model.parameters())


def perturb_gates(kb, scale: float, seed: int = 0) -> None:
    """Input-dependent saliency, as after training (the last layers start at weight 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in kb.gates.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


# -- saturated init --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_kb_at_full_width_with_saturated_gates_reproduces_its_fm(name, load):
    fm = load(name)
    batches = make_batches(fm, n=2, size=4, length=12)
    settings = KBSettings(importance="magnitude" if name == "minilm" else "taylor")  # minilm: cheap
    kb = seeded_kb(fm, [{k: v[:2] for k, v in batches[0].items()}], settings)
    fm_state = fm.model.state_dict()
    assert any(not torch.equal(fm_state[k], v) for k, v in kb.adapter.model.state_dict().items())  # reordered
    for batch in batches:
        torch.testing.assert_close(outputs(kb.adapter, batch), outputs(fm, batch), atol=1e-5, rtol=0)
    assert all(bool((h == 1).all() and (n == 1).all()) for h, n in kb.gates.last)  # saliency exactly 1
    small = at_width(kb, 0.25, batches[0])
    assert (small - outputs(fm, batches[0])).abs().max() > 1e-4  # width < 1 really cuts units
    torch.testing.assert_close(outputs(kb.adapter, batches[0]), outputs(fm, batches[0]), atol=1e-5, rtol=0)


# -- k-winners-take-all --------------------------------------------------------------------------

def test_kwta_keeps_exactly_k_per_row_and_ties_go_to_lower_indices():
    s = torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.0],
                      [3.0, 1.0, 2.0, 0.0, 4.0]])
    assert kwta(s, 1).tolist() == [[0, 1, 0, 0, 0], [0, 0, 0, 0, 1]]
    assert kwta(s, 2).tolist() == [[0, 1, 0, 1, 0], [1, 0, 0, 0, 1]]
    assert kwta(s, 3).tolist() == [[0, 1, 1, 1, 0], [1, 0, 1, 0, 1]]
    assert kwta(s, 5).tolist() == kwta(s, 9).tolist() == torch.ones(2, 5).tolist()
    assert kwta(torch.ones(3, 4), 2).tolist() == [[1, 1, 0, 0]] * 3  # the saturated start
    r = torch.rand(7, 33, generator=torch.Generator().manual_seed(0))
    for k in (1, 8, 32):
        mask = kwta(r, k)
        assert (mask.sum(-1) == k).all()
        kept_min = r.masked_fill(mask == 0, float("inf")).amin(-1)
        dropped_max = r.masked_fill(mask == 1, float("-inf")).amax(-1)
        assert (kept_min > dropped_max).all()  # the k largest, not any k


# Regression: a linspace(0, 1e-6, n) tie-break fell below float32 resolution, so exact ties went
# to arbitrary units (kwta(ones(1, 128), 64) kept unit 64 and dropped 58).
@pytest.mark.parametrize(("n", "k", "value"), [(128, 64, 1.0),     # tiny FFN width, saturated saliency
                                                 (1536, 768, 1.0),  # MiniLM's FFN width
                                                 (12, 1, 7.0)])     # MiniLM's 12 heads, a large saliency
def test_kwta_ties_go_to_lower_indices_for_wide_rows(n, k, value):
    mask = kwta(torch.full((2, n), value), k)
    assert (mask.sum(-1) == k).all() and (mask[:, :k] == 1).all()


def _gate_values(kb, batch) -> dict[tuple[int, str], torch.Tensor]:
    """Per block and kind, ``[B, units]``: what the gates multiplied each unit's channels by in one
    forward. An all-ones input is injected before the gate hooks and the result read after them,
    so natural zeros (ReLU) cannot pass for dropped units."""
    model, size = kb.adapter.model, len(next(iter(batch.values())))
    points = {(pos, kind): gate_point(block, kind)
              for pos, block in enumerate(kb.adapter.blocks()) for kind in ("heads", "neurons")}
    seen: dict[tuple[int, str], torch.Tensor] = {}
    kb.gates.detach()
    handles = [model.get_submodule(p.module).register_forward_pre_hook(
        lambda _m, args: (torch.ones_like(args[0]), *args[1:])) for p in points.values()]
    kb.gates.attach(kb.adapter)  # pre-hooks run in registration order: ones, gate, capture
    handles += [model.get_submodule(p.module).register_forward_pre_hook(
        lambda _m, args, key=key: seen.__setitem__(key, args[0].detach().clone()))
        for key, p in points.items()]
    try:
        outputs(kb.adapter, batch)
    finally:
        for h in handles:
            h.remove()
    values = {}
    for key, x in seen.items():
        index = points[key].index  # OPT's MLP sees [B*T, hidden]: reshape back to [B, T, ...]
        channels = x.reshape(size, -1, x.shape[-1])[..., index.reshape(-1)].reshape(size, -1, *index.shape)
        assert (channels == channels[:, :1, :, :1]).all(), key  # one value per sample and unit
        values[key] = channels[:, 0, :, 0]
    return values


def test_saturated_kb_at_a_width_keeps_the_most_important_units(load):
    """Every saliency is exactly 1.0 at the start: the kept units must be the KB-order prefix."""
    fm = load("tiny-vit")
    batch = make_batches(fm, n=1, size=4)[0]
    kb = seeded_kb(fm, [batch])
    kb.set_width(0.5)
    for (pos, kind), value in _gate_values(kb, batch).items():
        k = units_at(0.5, value.shape[-1])
        assert (value[:, :k] == 1).all() and (value[:, k:] == 0).all(), (pos, kind)  # the KB-order prefix


# Regression (tiny-opt, "sample"): OPT's MLP feeds fc2 a flattened [B*T, hidden] input, which the
# per-sample [B, units] gate did not fit (RuntimeError from index_copy).
@pytest.mark.parametrize("pooling", ["batch", "sample"])
@pytest.mark.parametrize("name", TINY)
def test_gates_keep_the_top_units_at_width_scaled_by_saliency(name, pooling, load):
    fm = load(name)
    batch = make_batches(fm, n=1, size=6, length=12)[0]
    kb = seeded_kb(fm, [batch], CHEAP.model_copy(update={"pooling": pooling}))
    with torch.no_grad():  # per-sample saliency that stays positive (a kept unit is never scaled to 0)
        g = torch.Generator().manual_seed(0)
        for gate in kb.gates.gates:
            for out in (gate.heads, gate.neurons):
                out.weight.copy_(0.1 * torch.randn(out.weight.shape, generator=g))
    kept_sets_differ = False
    for width in (0.25, 0.5, 1.0):
        kb.set_width(width)
        for (pos, kind), value in _gate_values(kb, batch).items():
            saliency = kb.gates.last[pos][0 if kind == "heads" else 1]
            assert saliency.min() > 0 and saliency.std(0).max() > 0  # positive and input-dependent
            if pooling == "batch":
                saliency = saliency.mean(0, keepdim=True).expand_as(saliency)
            k = units_at(width, saliency.shape[-1])
            top = saliency.topk(k, dim=-1).indices
            expected = torch.zeros_like(saliency).scatter(-1, top, saliency.gather(-1, top))
            torch.testing.assert_close(value, expected, msg=f"width {width} block {pos} {kind}")
            kept = value != 0
            assert (kept.sum(-1) == k).all()
            same = bool((kept == kept[:1]).all())
            assert same or pooling == "sample"  # "batch": one kept set for the whole batch
            kept_sets_differ |= not same
    assert kept_sets_differ == (pooling == "sample")  # "sample" really selects per input


# -- gradients and distillation --------------------------------------------------------------------

@pytest.mark.parametrize("name", TINY)
def test_sandwich_step_trains_model_and_gates_but_not_the_teacher(name, load):
    fm = load(name)
    batch = make_batches(fm, n=1, size=4, length=12)[0]
    kb = seeded_kb(fm, [batch])
    teacher = fm  # left requires_grad=True on purpose: the loss itself must keep gradients off it
    loss = kb.sandwich_loss(teacher)(kb.adapter, batch)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert kb.gates.width == 1.0
    model = kb.adapter.model
    for block in kb.adapter.blocks():
        for path in (block.attention.o.module, block.attention.q.module, block.mlp.output.module,
                     block.mlp.inputs[0].module):
            grad = model.get_submodule(path).weight.grad
            assert grad is not None and grad.abs().sum() > 0, path
    for pos, gate in enumerate(kb.gates.gates):
        for out in (gate.heads, gate.neurons):
            for p in (out.weight, out.bias):
                assert p.grad is not None and p.grad.abs().sum() > 0, pos
    assert all(p.grad is None for p in teacher.model.parameters())


@pytest.mark.parametrize("name", TINY)
def test_distillation_is_zero_for_the_untrained_kb_at_full_width_only(name, load):
    fm = load(name)
    batch = make_batches(fm, n=1, size=4, length=12)[0]
    kb = seeded_kb(fm, [batch])
    fm.model.eval()
    kb.adapter.model.eval()
    with torch.no_grad():
        teacher = kb_outputs(fm, batch)
        full = distill_loss(kb_outputs(kb.adapter, batch), teacher, batch, CHEAP)
        kb.set_width(0.25)
        small = distill_loss(kb_outputs(kb.adapter, batch), teacher, batch, CHEAP)
    assert abs(full) < 1e-6 and small > 1e-4, (full, small)  # float noise vs a real gap (BERT's is small)


@pytest.mark.slow
def test_build_kb_improves_the_smallest_width(source_vit_dir):
    from edgeadapt.data.digits import image_batches
    from edgeadapt.data.registry import build_dataset
    from edgeadapt.pruning.checkpoint import load_pruned

    splits = build_dataset("digits", size=16)
    x, y = splits.train.images[:512], splits.train.labels[:512]
    vx, vy = splits.val.images, splits.val.labels
    fm = load_pruned(source_vit_dir)  # a trained FM (~95%), worth compressing
    fm_state = {k: v.clone() for k, v in fm.model.state_dict().items()}
    calibration = list(image_batches(x[:64], y[:64], 32))
    val = lambda: image_batches(vx, vy, 256)  # noqa: E731
    full = fm.evaluate(val())
    before = seeded_kb(fm, calibration, KBSettings()).evaluate(val(), width=0.25)
    assert before["accuracy"] < full["accuracy"] - 0.1  # precondition: there is something to recover

    cfg = TrainConfig(epochs=4, learning_rate=2e-3, device="cpu", progress=False)
    with torch.random.fork_rng(devices=[]):  # the gates' init draws from the global RNG
        torch.manual_seed(0)
        kb, result = build_kb(fm, lambda e: image_batches(x, y, 32, shuffle=True, seed=e), cfg,
                              KBSettings(), calibration)
    after = kb.evaluate(val(), width=0.25)
    assert after["accuracy"] >= before["accuracy"] + 0.05, (before, after)
    assert after["loss"] < before["loss"]
    assert result.steps == 64 and len(result.history) == 4
    assert any(g.heads.weight.abs().sum() > 0 for g in kb.gates.gates)  # the gates trained too
    assert all(torch.equal(fm_state[k], v) for k, v in fm.model.state_dict().items())  # FM untouched


# -- proxy extraction ------------------------------------------------------------------------------

@pytest.mark.parametrize("gates", ["saturated", "constant"])
@pytest.mark.parametrize("name", TINY)
def test_proxy_is_the_kb_at_its_width(name, gates, load):
    fm = load(name)
    batch = make_batches(fm, n=1, size=4, length=12)[0]
    kb = seeded_kb(fm, [batch])
    if gates == "constant":  # input-independent saliency != 1: the kept set is no prefix, folding matters
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for gate in kb.gates.gates:
                for out in (gate.heads, gate.neurons):
                    out.bias.copy_(0.5 + torch.rand(out.bias.shape, generator=g))
    kb_full, kb_half = outputs(kb.adapter, batch), at_width(kb, 0.5, batch)
    full = extract_proxy(kb, [batch], 1.0)
    torch.testing.assert_close(outputs(full.adapter, batch), kb_full, atol=1e-5, rtol=0)
    assert params(full.adapter) == params(kb.adapter)
    half = extract_proxy(kb, [batch], 0.5)
    assert params(half.adapter) < params(kb.adapter)
    assert not any(m._forward_pre_hooks for m in half.adapter.model.modules())  # a plain model
    torch.testing.assert_close(outputs(half.adapter, batch), kb_half, atol=1e-4, rtol=0)
    torch.testing.assert_close(at_width(kb, 0.5, batch), kb_half, atol=0, rtol=0)  # KB still gated
    if gates == "constant":  # the plan really names other units than the first half
        assert any(list(b.neurons) != list(range(len(b.neurons))) for b in half.plan.blocks)
    with pytest.raises(ValueError, match="window"):
        extract_proxy(kb, [], 0.5)


# Regression: the plan ranked units by the window mean of per-sample k-WTA-masked saliency, while
# GateSet(pooling="batch") keeps the top-k of the batch-mean saliency: other units, other outputs.
@pytest.mark.parametrize("name", TINY)
def test_proxy_is_the_kb_at_its_width_with_trained_gates(name, load):
    fm = load(name)
    batch = make_batches(fm, n=1, size=8, length=12)[0]
    kb = seeded_kb(fm, [batch])
    perturb_gates(kb, 0.1)
    expected = at_width(kb, 0.5, batch)
    proxy = extract_proxy(kb, [batch], 0.5)
    torch.testing.assert_close(outputs(proxy.adapter, batch), expected, atol=1e-4, rtol=0)


# -- bad input -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_kb():
    fm = load_adapter("tiny-vit")
    batches = make_batches(fm, n=1, size=4)
    return seeded_kb(fm, batches), batches


@pytest.mark.parametrize("width", [0, 1.5, -0.1, True, "half", float("nan")])
def test_bad_widths_are_refused_by_name(width, tiny_kb):
    kb, batches = tiny_kb
    for call in (lambda: check_width(width), lambda: units_at(width, 4), lambda: kb.set_width(width),
                 lambda: kb.evaluate(batches, width), lambda: extract_proxy(kb, batches, width)):
        with pytest.raises(ValueError, match="width"):
            call()
    assert kb.gates.width == 1.0


def test_good_widths_pass():
    assert check_width(1) == 1.0 and check_width(0.25) == 0.25
    assert [units_at(w, 4) for w in (0.01, 0.25, 0.26, 0.5, 1.0)] == [1, 1, 2, 2, 4]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"min_width": 0}, "min_width"), ({"min_width": 1.5}, "min_width"), ({"bottleneck": 0}, "bottleneck"),
    ({"pooling": "foo"}, "pooling"), ({"temperature": 0}, "temperature"), ({"gate_l1": -1}, "gate_l1"),
    ({"bottle_neck": 8}, "bottle_neck"),
])
def test_bad_settings_are_refused(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        KBSettings(**kwargs)


def test_unknown_pooling_is_refused(tiny_kb):
    kb, _ = tiny_kb
    with pytest.raises(ValueError, match="pooling"):
        GateSet(kb.adapter, pooling="foo")


def test_gates_are_seeded_and_leave_the_global_rng_untouched(load):
    fm = load("tiny-vit")
    torch.manual_seed(11)
    before = torch.random.get_rng_state()
    a, b = GateSet(fm, seed=3), GateSet(fm, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_kb_importance_uses_the_shared_vocabulary():
    """The KB orders units by the same importance names as prune/llm-prune: its default keeps the
    per-sample squared term (now called fisher), and a retired spelling is refused by name."""
    from edgeadapt.offline.knowledge_base import KBSettings

    assert KBSettings().importance == "fisher"
    with pytest.raises(ValueError, match="use 'taylor'"):
        KBSettings(importance="taylor-abs")
    with pytest.raises(ValueError, match="unknown importance"):
        KBSettings(importance="gradient")


# -- half-precision checkpoints (issue 12 §1) -------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_a_half_precision_kb_reproduces_its_fm_trains_and_reloads_in_its_dtype(dtype, tmp_path):
    fm = load_adapter("tiny-llama")
    fm.model.to(dtype)
    batches = make_batches(fm, n=2, size=4, length=12)
    kb = seeded_kb(fm, batches[:1], KBSettings(importance="taylor"))
    assert {p.dtype for p in kb.adapter.model.parameters()} == {dtype}
    for batch in batches:  # reordering changes summation order: equal within the dtype's rounding
        diff, allowed = max_error(outputs(kb.adapter, batch), outputs(fm, batch), dtype, depth=2)
        assert diff <= allowed
    kb, result = build_kb(fm, lambda e: batches, TrainConfig(epochs=1, max_steps=2, device="cpu",
                                                             progress=False), CHEAP, batches[:1])
    assert result.steps == 2 and all(math.isfinite(r["train_loss"]) for r in result.history)
    assert {p.dtype for p in kb.adapter.model.parameters()} == {dtype}
    assert {p.dtype for p in kb.gates.parameters()} == {torch.float32}  # edgeadapt's own gates: fp32
    save_kb(kb, tmp_path / "kb")
    again = load_kb(tmp_path / "kb")
    assert {p.dtype for p in again.adapter.model.parameters()} == {dtype}  # before: reloaded as float32
    ours, theirs = kb.adapter.model.state_dict(), again.adapter.model.state_dict()
    assert all(torch.equal(theirs[k], v) for k, v in ours.items())
