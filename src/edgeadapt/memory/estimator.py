"""Predict the peak memory and step time of any memory plan from two profiled training steps.

MPOptimizer (Zhang et al., FGCS 2025) chooses micro-batching, freezing and checkpointing under a
memory budget, but its repository predicts nothing; this is the missing memory model. Two
training steps without knobs are traced (micro-batches ``b2 ≈ B/2`` then ``b1 = B``; the first
also creates the optimizer state, the second is a steady-state step) with the storage accounting
of :mod:`edgeadapt.memory.accounting`, split into *regions* in execution order: the stem (before
the first block), each block, the tail (head and loss) — forward and backward — and the
optimizer step. Per region the trace gives the bytes it leaves alive (saved activations and
outputs), its peak above its start (transients), and, through ``saved_tensors_hooks``, the
saved-activation bytes (unique storages), whether it saves its own input or output, and where
backward is. After each step one forward pass under ``torch.no_grad`` is traced the same way:
what frozen and checkpointed regions cost (tensors that Python code holds included). Every
per-region figure is fitted as a line in the micro-batch size from the two sizes.

A plan is then *replayed* over the regions (:func:`predict`):

* weights, plus optimizer state (measured per parameter: Adam 2×, SGD momentum 1× the trainable
  bytes) and gradients of the trainable parameters only;
* micro-batch ``b``: every activation figure at ``b``; from the second micro-batch on the
  gradients are alive throughout and accumulate in place, so a region's backward peak is the
  traced one less the gradients already added by each moment, with the one being added still
  alive beside ``.grad`` (traced as the peak of live bytes minus the gradients whose
  post-accumulate-grad hook has run);
* freezing ``m`` leading blocks: stem and those blocks replay the no_grad pass (they keep only
  what is alive after it, their output), have no backward, and the first trainable block
  computes no input gradient; their parameters have no gradient and no optimizer state;
* checkpointing with ``S`` segments: a segment keeps only its output (when the next region saves
  it or checkpoints from it) during forward, costs its no_grad peak then, and recomputes its
  blocks' activations just before their backward (Chen et al. 2016, "Training deep nets with
  sublinear memory cost": the peak holds the segment boundaries plus one segment's activations);
  a segment whose last block saves its own output recomputes that output as a new tensor, and
  the boundary copy it kept has died with the next region's backward;
* the optimizer step: weights, state, all gradients and the optimizer's transients (on CPU
  Adam's single-tensor loop needs a few copies of the largest trainable parameter; on CUDA the
  foreach kernels scale with all trainable bytes).

The peak of the replay is scaled by a per-device calibration factor, the ratio of measured to
replayed peak on the profiled steady-state step: exactly 1 on CPU (both from the same storage
accounting), and on CUDA it absorbs what the allocator counts beyond tensor storages. Step time
comes from one more, untraced step at the full batch, timed per region: each region's time is
split into a fixed cost per op (measured on a tiny op) and a part proportional to the micro-batch
size; frozen regions lose their backward, checkpointed blocks run their forward twice.

The code: :mod:`~edgeadapt.memory.trace` (the traced step and its records),
:mod:`~edgeadapt.memory.profile` (:func:`profile`), :mod:`~edgeadapt.memory.replay` (a plan
replayed over the regions); this module predicts (:func:`predict`, :func:`estimate`) and measures
(:func:`measure`), and re-exports :func:`profile`, :class:`Profile`, :func:`make_optimizer` and
:func:`probing`.

Example::

    est = estimate(adapter, MemoryPlan(micro_batch_size=4, checkpoint_segments=2), batch)
    print(format_bytes(est.predicted_bytes), est.breakdown, est.step_seconds)
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeadapt.memory.accounting import measure_peak
from edgeadapt.memory.knobs import BlockChain, apply_plan, batch_size_of, block_chain, train_step
from edgeadapt.memory.master import on_master_weights
from edgeadapt.memory.plan import LossTraits, MemoryPlan, check_micro_batching
from edgeadapt.memory.profile import OptimizerName, make_optimizer, profile
from edgeadapt.memory.replay import replay_peak, replay_seconds
from edgeadapt.memory.trace import Batch, LossFn, Profile, probing
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.training.device import timed, to_device

# Profile, profile, make_optimizer and probing live in their own modules and are re-exported here,
# the estimator's public entry point
__all__ = ["Estimate", "Measurement", "OptimizerName", "Profile", "estimate", "make_optimizer", "measure",
           "predict", "probing", "profile"]


@dataclass(frozen=True)
class Estimate:
    """A plan's predicted peak memory (bytes) and optimizer-step time (seconds).

    ``breakdown`` (bytes) splits ``predicted_bytes`` into what is alive at the predicted peak:
    ``weights`` (parameters and buffers), ``optimizer_state``, ``gradients`` (of trainable
    parameters, as many as exist at that moment), ``activations`` (saved for backward) and
    ``workspace`` (transients, gradients of activations, the calibration); they sum to
    ``predicted_bytes``. ``activations_end_of_forward`` (not part of the sum) is what one
    micro-batch's forward pass leaves for backward: the figure the knobs shrink."""

    predicted_bytes: int
    breakdown: dict[str, int]
    step_seconds: float
    plan: MemoryPlan


def predict(prof: Profile, plan: MemoryPlan, batch_size: int | None = None) -> Estimate:
    """A plan's :class:`Estimate` from a :class:`Profile`, without running it (microseconds).

    ``batch_size`` (default: the profiled batch) is the effective batch per optimizer step.
    Raises :class:`~edgeadapt.errors.ConfigError` for a plan the model or the loss refuses (more
    frozen blocks or segments than blocks, micro-batching a loss that is not per-sample)."""
    size = batch_size or prof.batch_size
    mb = check_micro_batching(plan, size, prof.traits)
    peak, parts = replay_peak(prof, plan, size)
    total = int(round(peak * prof.scale))
    breakdown = {k: int(round(v)) for k, v in parts.items()}
    # the calibration's share goes to the workspace, so the five parts sum to the prediction
    parts_sum = sum(v for k, v in breakdown.items() if k != "activations_end_of_forward")
    breakdown["workspace"] += total - parts_sum
    return Estimate(predicted_bytes=total, breakdown=breakdown,
                    step_seconds=replay_seconds(prof, plan, size, mb), plan=plan)


def estimate(adapter: ModelAdapter, plan: MemoryPlan, batch: Batch, optimizer: OptimizerName = "adam", *,
             loss_fn: LossFn | None = None, traits: LossTraits | None = None) -> Estimate:
    """Predict the peak memory (bytes, what the device must hold during a steady-state optimizer
    step: weights, optimizer state, gradients, activations, transients) and step time (seconds) of
    retraining ``adapter`` with ``plan`` on batches like ``batch`` (the effective batch) and
    ``optimizer``. Profiles two steps (:func:`profile`), then :func:`predict`; to compare many plans,
    profile once and call :func:`predict` for each. A bf16/fp16 model is predicted as it trains, on
    float32 master weights. Errors: see :func:`profile` and :func:`predict`.
    """
    return predict(profile(adapter, batch, optimizer, loss_fn=loss_fn, traits=traits), plan,
                   batch_size_of(batch))


@dataclass(frozen=True)
class Measurement:
    """A plan's measured steady-state step: peak bytes (baseline + peak, :func:`measure_peak`) and
    wall-clock seconds of one untraced step."""

    total_bytes: int
    step_seconds: float
    method: str


@on_master_weights
def measure(adapter: ModelAdapter, plan: MemoryPlan, batch: Batch, optimizer: OptimizerName = "adam", *,
            loss_fn: LossFn | None = None, traits: LossTraits | None = None,
            chain: BlockChain | None = None) -> Measurement:
    """Run ``plan`` for real (three steps at learning rate 0, weights and buffers restored) and
    measure the steady-state step: what :func:`estimate` predicts. Tensor accounting on CPU,
    ``max_memory_allocated`` on CUDA. A bf16/fp16 model runs on float32 master weights, as ``train``
    and ``adapt`` train it (:func:`~edgeadapt.memory.master.on_master_weights`)."""
    model = adapter.model
    device = next(model.parameters()).device
    batch = to_device(batch, device)
    with probing(model), apply_plan(model, plan, chain or block_chain(adapter)) as knobs:
        opt = make_optimizer(knobs.trainable_parameters(), optimizer, lr=0.0)

        def step() -> float:
            return train_step(adapter, batch, plan, opt, loss_fn=loss_fn, traits=traits)
        step()
        _, report = measure_peak(step, device=device, modules=[model], optimizer=opt)
        seconds = timed(step, device)
    return Measurement(total_bytes=report.total_bytes, step_seconds=seconds, method=report.method)
