"""The shared training loop: resume after a kill, accumulation, early stopping, schedules, AMP,
gradient checkpointing, budgets and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from pydantic import ValidationError

from edgeadapt.data.digits import digits_tensors, image_batches
from edgeadapt.models.registry import load_adapter
from edgeadapt.training.checkpoint import find_checkpoint
from edgeadapt.training.loop import TrainConfig, fit

SETUP = """
import torch
torch.set_num_threads(1)  # the killed child and the resuming parent must compute identically
from edgeadapt.data.digits import digits_tensors, image_batches
from edgeadapt.models.registry import load_adapter
from edgeadapt.training.loop import TrainConfig, fit
x, y = digits_tensors("train")
x, y = x[:192], y[:192]
vx, vy = digits_tensors("val")
def data(e):
    return image_batches(x, y, 32, shuffle=True, seed=e)
def val():
    return image_batches(vx[:64], vy[:64], 64)
CFG = TrainConfig(epochs=3, learning_rate=3e-3, progress=False, checkpoint_every=4, seed=1)
"""
ns: dict = {}
exec(SETUP, ns)


def _weights(adapter) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in adapter.model.state_dict().items()}


def test_resume_after_kill_reproduces_the_uninterrupted_run(tmp_path):
    reference = load_adapter("tiny-vit", seed=0)
    ref = fit(reference, ns["data"], ns["CFG"], val=ns["val"], monitor="accuracy")

    ckpt = tmp_path / "run"
    script = SETUP + textwrap.dedent(f"""
        import os, signal
        def die(info):
            if info.step == 10:   # after the step-8 checkpoint, mid-epoch 2
                os.kill(os.getpid(), signal.SIGKILL)
        fit(load_adapter("tiny-vit", seed=0), data, CFG, val=val, monitor="accuracy",
            checkpoint_dir={str(ckpt)!r}, callbacks=[die])
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=dict(os.environ), capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert find_checkpoint(ckpt) is not None

    resumed = load_adapter("tiny-vit", seed=0)
    out = fit(resumed, ns["data"], ns["CFG"], val=ns["val"], monitor="accuracy", checkpoint_dir=ckpt)
    assert out.resumed_from_step == 8
    assert out.best == ref.best and out.steps == ref.steps == 18
    assert [r["train_loss"] for r in out.history] == pytest.approx([r["train_loss"] for r in ref.history], rel=1e-6)
    for key, value in _weights(reference).items():
        torch.testing.assert_close(_weights(resumed)[key], value, rtol=0, atol=1e-6)


def test_gradient_accumulation_matches_one_large_batch():
    x, y = digits_tensors("train")
    x, y = x[:64], y[:64]
    cfg = dict(epochs=1, learning_rate=0.1, optimizer="sgd", weight_decay=0.0, schedule="constant",
               warmup_fraction=0.0, grad_clip=None, progress=False)
    big, small = load_adapter("tiny-vit", seed=0), load_adapter("tiny-vit", seed=0)
    big.model.eval(), small.model.eval()  # no dropout noise either way
    fit(big, lambda e: image_batches(x, y, 64), TrainConfig(**cfg))
    fit(small, lambda e: image_batches(x, y, 32), TrainConfig(**cfg, grad_accum_steps=2))
    before = _weights(load_adapter("tiny-vit", seed=0))
    moved = 0
    for key, value in _weights(big).items():
        torch.testing.assert_close(_weights(small)[key], value, rtol=1e-4, atol=1e-6)
        moved += int(not torch.equal(value, before[key]))
    assert moved > 10  # the step really happened


def test_early_stopping_stops_and_restores_the_best_weights():
    adapter = load_adapter("tiny-vit", seed=0)
    seen: list[dict[str, torch.Tensor]] = []
    scores = iter([0.5, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])

    def evaluate():
        seen.append(_weights(adapter))
        return {"accuracy": next(scores)}

    out = fit(adapter, ns["data"], TrainConfig(epochs=7, patience=2, progress=False), evaluate=evaluate,
              monitor="accuracy")
    assert out.stopped_early and out.stop_reason == "patience"
    assert len(out.history) == 4 and out.best == {"accuracy": 0.9}
    for key, value in seen[1].items():
        torch.testing.assert_close(adapter.model.state_dict()[key], value)


def test_plateau_schedule_cuts_the_rate_when_validation_stalls():
    adapter = load_adapter("tiny-vit", seed=0)
    out = fit(adapter, ns["data"], TrainConfig(epochs=4, schedule="plateau", warmup_fraction=0.0,
                                              plateau_factor=0.5, plateau_patience=0, learning_rate=1e-3,
                                              progress=False),
              evaluate=lambda: {"loss": 1.0})
    assert [r["lr"] for r in out.history] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])  # epoch 0 sets the baseline


def test_cosine_schedule_warms_up_then_decays_to_zero():
    adapter = load_adapter("tiny-vit", seed=0)
    lrs: list[float] = []
    fit(adapter, ns["data"], TrainConfig(epochs=2, warmup_fraction=0.25, learning_rate=1e-3, progress=False),
        callbacks=[lambda info: lrs.append(info.lr)])
    peak = lrs.index(max(lrs))
    assert 1 <= peak <= 3 and max(lrs) == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:])) and lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_bf16_autocast_trains_on_cpu():
    adapter = load_adapter("tiny-vit", seed=0)
    dtypes: list[torch.dtype] = []
    hook = adapter.model.classifier.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    out = fit(adapter, ns["data"], TrainConfig(epochs=3, learning_rate=3e-3, precision="bf16", device="cpu",
                                              progress=False))
    hook.remove()
    assert torch.bfloat16 in dtypes
    assert out.history[-1]["train_loss"] < out.history[0]["train_loss"]
    assert all(p.dtype == torch.float32 for p in adapter.model.parameters())  # master weights stay fp32


def test_gradient_checkpointing_saves_fewer_activations_and_same_gradients():
    def saved_bytes_and_grads(on: bool):
        adapter = load_adapter("tiny-vit", seed=0)
        from edgeadapt.training.loop import set_checkpointing

        set_checkpointing(adapter.model, on)
        adapter.model.train()
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        batch = next(iter(ns["data"](0)))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = adapter.task_loss(batch)
        loss.backward()
        return total[0], {n: p.grad.clone() for n, p in adapter.model.named_parameters()}

    plain, g_plain = saved_bytes_and_grads(False)
    ckpt, g_ckpt = saved_bytes_and_grads(True)
    assert ckpt < 0.5 * plain
    for name, grad in g_plain.items():
        torch.testing.assert_close(g_ckpt[name], grad, rtol=1e-4, atol=1e-6)


def test_step_budget_and_time_budget_stop_training():
    adapter = load_adapter("tiny-vit", seed=0)
    out = fit(adapter, ns["data"], TrainConfig(epochs=5, max_steps=4, progress=False))
    assert out.steps == 4 and out.stop_reason == "max_steps"
    out = fit(adapter, ns["data"], TrainConfig(epochs=50, max_seconds=0.05, progress=False))
    assert out.stop_reason == "max_seconds" and out.steps < 50 * 6


def test_a_finished_run_resumes_as_a_no_op(tmp_path):
    adapter = load_adapter("tiny-vit", seed=0)
    fit(adapter, ns["data"], TrainConfig(epochs=1, progress=False), checkpoint_dir=tmp_path)
    weights = _weights(adapter)
    again = load_adapter("tiny-vit", seed=3)
    out = fit(again, ns["data"], TrainConfig(epochs=1, progress=False), checkpoint_dir=tmp_path)
    assert out.resumed_from_step == 6 and out.steps == 6
    for key, value in weights.items():
        torch.testing.assert_close(again.model.state_dict()[key], value)


def test_nonfinite_loss_fails_with_a_hint():
    adapter = load_adapter("tiny-vit", seed=0)
    with pytest.raises(FloatingPointError, match="learning_rate"):
        fit(adapter, ns["data"], TrainConfig(epochs=1, progress=False),
            loss_fn=lambda a, b: a.task_loss(b) * float("nan"))


@pytest.mark.parametrize("fields, name", [
    ({"epochs": 0}, "epochs"), ({"learning_rate": -1}, "learning_rate"), ({"epochs": "many"}, "epochs"),
    ({"precision": "fp8"}, "precision"), ({"grad_accum_steps": 0}, "grad_accum_steps"),
    ({"lr": 0.1}, "lr"), ({"precision": "fp16", "device": "cpu"}, "precision"),
])
def test_bad_config_names_the_field(fields, name):
    with pytest.raises(ValidationError, match=name):
        TrainConfig(**fields)


def test_patience_without_validation_is_refused():
    with pytest.raises(ValueError, match="patience"):
        fit(load_adapter("tiny-vit"), ns["data"], TrainConfig(epochs=1, patience=1, progress=False))
