"""Replay a memory plan over a profile's regions: its peak bytes and its step seconds.

:func:`replay_peak` walks the regions of a :class:`~edgeadapt.memory.trace.Profile` as the plan
would run them (frozen leading regions replay the ``no_grad`` pass, checkpointed segments keep
only their boundaries and recompute before their backward, micro-batches after the first add
their gradients into existing ``.grad``) and returns the highest live total and what is alive
then; :func:`replay_seconds` sums the regions' timed costs under the plan. The model behind the
figures is described in :mod:`edgeadapt.memory.estimator`.
"""

from __future__ import annotations

from edgeadapt.errors import ConfigError
from edgeadapt.memory.plan import MemoryPlan
from edgeadapt.memory.trace import Line, Profile, line_at

__all__ = ["replay_peak", "replay_seconds", "segments_of"]


def replay_peak(prof: Profile, plan: MemoryPlan, batch_size: int) -> tuple[float, dict[str, float]]:
    """The plan's peak total bytes before calibration, and what is alive at that moment: weights,
    optimizer state, gradients, activations (kept for backward) and workspace (transients)."""
    regions = prof.regions
    n = len(regions) - 2
    mb = min(plan.micro_batch_size or batch_size, batch_size)
    m = plan.frozen_blocks(n)
    first = m + 1 if m else 0  # regions 0..m (stem, blocks 0..m-1) are frozen when m > 0
    grads = sum(r.grad_bytes for r in regions[first:])
    states = sum(r.state_bytes for r in regions[first:])
    segments = segments_of(list(range(m + 1, n + 1)), plan.checkpoint_segments)
    last_of = {seg[-1]: seg for seg in segments}
    in_segment = {r for seg in segments for r in seg}
    base = float(prof.weights_bytes + states)

    def q(line: Line) -> float:  # a size: never negative
        return max(0.0, line_at(line, mb))

    def output_of(r: int) -> float:  # a region's main output = the next region's input
        return q(regions[r + 1].input)

    def output_kept(r: int) -> float:  # kept when the next region saves it or checkpoints from it
        return output_of(r) if regions[r + 1].saves_input or r + 1 in in_segment else 0.0

    best = [0.0, 0.0, 0.0, 0.0]  # peak, gradients, activations, workspace at the peak

    def seen(grad: float, acts: float, extra: float) -> None:
        if base + grad + acts + extra > best[0]:
            best[:] = [base + grad + acts + extra, grad, acts, extra]

    def micro(fresh: bool) -> float:
        grad, acts = (0.0 if fresh else float(grads)), 0.0
        seen(grad, acts, 0.0)
        held = pyheld = 0.0  # an output alive but kept by nobody; what only Python holds
        for r in range(n + 1):  # forward through the stem and the blocks
            reg = regions[r]
            if m and r <= m:  # the frozen stem and blocks replay the no_grad pass exactly
                seen(grad, acts, q(reg.nograd_top))
                if r == m:  # what is still alive after them (their output, what Python holds)
                    acts = q(reg.nograd_end)
                    # tensors only Python holds (a model's embedding output) die when its forward
                    # returns, by the head
                    pyheld = max(0.0, acts - output_kept(r))
                continue
            if r in in_segment:  # checkpointed: saves nothing, keeps only the segment's output
                keep = output_kept(r) if r in last_of else 0.0
                seen(grad, acts, held + q(reg.nograd_peak))
            else:
                keep = q(reg.retained)
                seen(grad, acts, held + q(reg.fwd_peak))
            held = output_of(r) if keep == 0.0 else 0.0
            acts += keep
        end_of_forward = acts + q(regions[n + 1].retained) - pyheld
        seen(grad, acts, held + q(regions[n + 1].fwd_peak))
        acts = end_of_forward
        for r in range(n + 1, first - 1, -1):  # backward: tail, trainable blocks (stem if none frozen)
            reg = regions[r]
            if r in last_of:  # recompute the segment's activations just before its backward
                if regions[r].saves_output:  # the output kept as a boundary died with the next
                    # region's backward (it held it); the recompute makes a new one, counted below
                    acts -= output_kept(r)
                for s in last_of[r]:
                    seen(grad, acts, q(regions[s].fwd_peak))
                    # the segment's own output is recomputed only when its last block saves it
                    mine = s == r and not regions[s].saves_output
                    acts += q(regions[s].retained) - (output_kept(s) if mine else 0.0)
            # after the first micro-batch each new parameter gradient is added into ``.grad`` and
            # freed, not kept: the peak without the gradients made before it, with the one being added
            delta = line_at(reg.bwd_delta, mb)  # a delta may be negative
            top = q(reg.bwd_peak if fresh else reg.bwd_peak_accum)
            if r == first and m:  # the first trainable block computes no gradient for its input
                delta -= q(reg.input)
                top = max(0.0, top - q(reg.input))
            seen(grad, acts, top)
            if fresh:  # its parameters' gradients appear; otherwise they accumulate in place
                grad += reg.grad_bytes
            acts += delta - reg.grad_bytes
        return end_of_forward

    kept = micro(fresh=True)
    if plan.micro_batches(batch_size) > 1:
        micro(fresh=False)
    # the optimizer's transients: per parameter on CPU (single-tensor loop: the largest one counts),
    # over all of them on CUDA (foreach kernels)
    if prof.method == "cuda":
        share = grads / max(1, sum(r.grad_bytes for r in regions))
    else:
        share = max((r.largest_param for r in regions[first:]), default=0) / max(
            1, max(r.largest_param for r in regions))
    seen(float(grads), 0.0, prof.opt_peak * share)
    peak, grad, acts, extra = best
    return peak, {"weights": float(prof.weights_bytes), "optimizer_state": float(states), "gradients": grad,
                  "activations": acts, "workspace": extra, "activations_end_of_forward": kept}


def segments_of(blocks: list[int], segments: int) -> list[list[int]]:
    """The contiguous segments :func:`~edgeadapt.memory.knobs.apply_plan` makes (same split)."""
    if not segments:
        return []
    if segments > len(blocks):
        raise ConfigError(f"checkpoint_segments: {segments} segments need at least {segments} trainable "
                          f"blocks, the plan leaves {len(blocks)}; use at most {len(blocks)}")
    size, extra = divmod(len(blocks), segments)
    out, start = [], 0
    for s in range(segments):
        end = start + size + (s < extra)
        out.append(blocks[start:end])
        start = end
    return out


def replay_seconds(prof: Profile, plan: MemoryPlan, size: int, mb: int) -> float:
    """Step time: per region a fixed cost per op plus a part proportional to the micro-batch."""
    regions = prof.regions
    n = len(regions) - 2
    m = plan.frozen_blocks(n)
    first = m + 1 if m else 0
    recomputed = {r for seg in segments_of(list(range(m + 1, n + 1)), plan.checkpoint_segments) for r in seg}

    def cost(seconds: float, ops: int, b: int) -> float:
        fixed = min(seconds, ops * prof.op_seconds)
        return fixed + (seconds - fixed) * b / prof.timed_size

    total = 0.0
    for b in [min(mb, size - i) for i in range(0, size, mb)]:
        for r, reg in enumerate(regions):
            fwd = cost(reg.fwd_seconds, reg.fwd_ops, b)
            total += fwd * (2 if r in recomputed else 1)
            total += cost(reg.bwd_seconds, reg.bwd_ops, b) if r >= first else 0.0
    all_grads = sum(r.grad_bytes for r in regions)
    return total + prof.opt_seconds * sum(r.grad_bytes for r in regions[first:]) / max(1, all_grads)
