"""How good, how fast and how large a causal LM is: the numbers that compare a dense model with a
structurally pruned one.

* :func:`perplexity` — the Hugging Face sliding-window perplexity over one tokenized corpus
  (:func:`edgeadapt.data.tokens.corpus_ids`), with the token NLL summed exactly from the logits.
* :func:`throughput` / :func:`compare_speed` — tokens per second of an inference forward or a
  training step; :func:`compare_speed` interleaves the models so shared-machine noise hits all alike.
* :func:`peak_memory` — bytes one inference forward or training step needs (``memory.accounting``).

Every function takes an adapter (its ``.model`` is used) or a plain ``nn.Module`` whose forward
takes ``input_ids`` (and ``attention_mask``) and returns logits ``[batch, seq, vocab]``, either
bare or as ``.logits``. Models are moved to ``device`` and left there; training-mode probes run on
a deep copy, so the caller's weights never change.

Example::

    ids = corpus_ids(adapter.tokenizer, load_hf_text("wikitext2", "test"))
    perplexity(adapter, ids, max_length=1024, stride=512)["perplexity"]
    compare_speed({"dense": dense, "pruned": pruned}, lm_batch(ids, 4, 256), "inference")
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from edgeadapt.data.tokens import token_blocks
from edgeadapt.errors import ConfigError
from edgeadapt.models.tasks import model_inputs
from edgeadapt.progress import bar_enabled
from edgeadapt.training.device import resolve_device, timed, to_device

Mode = Literal["inference", "train"]
Batch = dict[str, torch.Tensor]
# The learning rate of the throwaway optimizer in training-mode probes. Its value does not change
# the cost of a step; it only has to be a valid AdamW learning rate.
_PROBE_LR = 1e-4


def _module(model_or_adapter: Any) -> nn.Module:
    if isinstance(model_or_adapter, nn.Module):
        return model_or_adapter
    model = getattr(model_or_adapter, "model", None)
    if isinstance(model, nn.Module):
        return model
    raise TypeError(f"expected an nn.Module or an adapter with a .model, "
                    f"got {type(model_or_adapter).__name__}")


def _logits(out: Any) -> torch.Tensor:
    """Logits from a transformers output, a tuple whose first item is the logits, or a tensor."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, (tuple, list)):
        logits = out[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model returned {type(out).__name__}; expected logits or an output with .logits")
    return logits


def _windows(n: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first)``: window ``ids[begin:end]`` scores its targets at positions
    ``first .. end - begin - 1`` (the tokens no earlier window scored; position 0 has no context)."""
    out = []
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        first = max(1, prev_end - begin)
        if end - begin > first:  # a disjoint tail of one token has nothing to score
            out.append((begin, end, first))
        prev_end = end
        if end == n:
            break
    return out


@torch.no_grad()
def perplexity(model_or_adapter: Any, token_ids: torch.Tensor, max_length: int, stride: int | None = None,
               batch_size: int = 8, device: str = "auto", progress: bool = False) -> dict[str, float | int]:
    """Sliding-window perplexity of a causal LM over the 1-D corpus ``token_ids``.

    Windows of ``max_length`` tokens advance by ``stride`` (default ``max_length``: disjoint blocks,
    each scoring its tokens after the first). With a smaller stride every window after the first
    scores only its last ``stride`` new tokens, with the overlap as context, so each token but the
    corpus's first is scored exactly once. The NLL is summed per token from the logits, so the
    result does not depend on ``batch_size`` (windows of equal length are batched together).

    Returns ``{"perplexity", "nll" (mean per scored token), "tokens" (scored), "windows"}``.
    """
    stride = max_length if stride is None else stride
    if max_length < 2:
        raise ConfigError(f"max_length must be >= 2 (a context token and a target), got {max_length}")
    if not 1 <= stride <= max_length:
        raise ConfigError(f"stride must be in [1, max_length={max_length}], got {stride}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if token_ids.dim() != 1 or token_ids.numel() < 2:
        raise ConfigError(f"token_ids must be a 1-D corpus of at least 2 tokens, "
                         f"got shape {tuple(token_ids.shape)}")
    from tqdm.auto import tqdm

    model = _module(model_or_adapter)
    dev = resolve_device(device)
    windows = _windows(token_ids.numel(), max_length, stride)
    by_length: dict[int, list[tuple[int, int, int]]] = {}
    for w in windows:
        by_length.setdefault(w[1] - w[0], []).append(w)
    chunks = [group[i:i + batch_size] for group in by_length.values()
              for i in range(0, len(group), batch_size)]
    was_training = model.training
    model.to(dev).eval()
    nll = torch.zeros((), dtype=torch.float64, device=dev)
    tokens = 0
    try:
        for chunk in tqdm(chunks, desc="perplexity", disable=not bar_enabled(progress), leave=False):
            ids = torch.stack([token_ids[b:e] for b, e, _ in chunk]).to(dev)
            logits = _logits(model(input_ids=ids))[:, :-1]
            losses = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
            positions = torch.arange(1, ids.shape[1], device=dev)
            firsts = torch.tensor([f for _, _, f in chunk], device=dev)
            scored = positions[None, :] >= firsts[:, None]
            nll += losses.view_as(scored)[scored].double().sum()
            tokens += sum(e - b - f for b, e, f in chunk)
    finally:
        model.train(was_training)
    mean = nll.item() / tokens
    return {"perplexity": math.exp(mean), "nll": mean,
            "tokens": tokens, "windows": len(windows)}


def lm_batch(token_ids: torch.Tensor, batch_size: int, seq_len: int) -> Batch:
    """``{"input_ids", "attention_mask", "labels"}`` of the first ``batch_size`` disjoint blocks of
    ``seq_len`` tokens of the corpus (the first batch of :func:`~edgeadapt.data.tokens.token_blocks`):
    a fixed batch for speed and memory probes."""
    if batch_size < 1 or seq_len < 2:
        raise ConfigError(f"batch_size must be >= 1 and seq_len >= 2, got {batch_size} and {seq_len}")
    if token_ids.dim() != 1 or token_ids.numel() < batch_size * seq_len:
        raise ConfigError(f"token_ids must be a 1-D corpus of at least batch_size * seq_len = "
                          f"{batch_size * seq_len} tokens, got shape {tuple(token_ids.shape)}")
    return next(iter(token_blocks(token_ids, seq_len, batch_size)(0)))


def _lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy; labels default to the inputs, padding is ignored."""
    logits = _logits(model(**model_inputs(batch)))
    labels = batch.get("labels", batch["input_ids"])
    if "attention_mask" in batch:
        labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


@contextlib.contextmanager
def _probe(model_or_adapter: Any, batch: Batch, mode: Mode,
           dev: torch.device) -> Iterator[tuple[Callable[[], None], nn.Module, torch.optim.Optimizer | None]]:
    """``(step, module, optimizer)``: one inference forward (no grad, eval mode, on the model
    itself, whose mode is restored after) or one AdamW training step (on a deep copy)."""
    if mode not in ("inference", "train"):
        raise ConfigError(f"mode must be 'inference' or 'train', got {mode!r}")
    if "input_ids" not in batch:
        raise ConfigError(f"batch needs 'input_ids', got keys {sorted(batch)}")
    model = _module(model_or_adapter)
    batch = to_device(batch, dev)
    if mode == "inference":
        was_training = model.training
        model.to(dev).eval()

        def forward() -> None:
            with torch.no_grad():
                model(**model_inputs(batch))

        try:
            yield forward, model, None
        finally:
            model.train(was_training)
        return
    probe = copy.deepcopy(model).to(dev).train()
    params = [p for p in probe.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("mode='train' needs a model with trainable parameters (requires_grad)")
    opt = torch.optim.AdamW(params, lr=_PROBE_LR)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        _lm_loss(probe, batch).backward()
        opt.step()

    yield step, probe, opt


def _check_counts(repeats: int, warmup: int) -> None:
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")


def throughput(model_or_adapter: Any, batch: Batch, mode: Mode = "inference", repeats: int = 5,
               warmup: int = 2, device: str = "auto") -> dict[str, Any]:
    """Tokens per second (every position of ``input_ids``, padding included) of an inference
    forward or a training step (forward, backward, AdamW update on a deep copy), from the median
    of ``repeats`` timings after ``warmup`` untimed runs.

    Returns ``{"tokens_per_s", "seconds_median", "seconds": [...], "tokens"}``. To compare models,
    use :func:`compare_speed`: separate calls see different machine noise.
    """
    result = compare_speed({"model": model_or_adapter}, batch, mode, repeats, warmup, device)["model"]
    del result["ratio"]  # always 1.0 for a single model
    return result


def compare_speed(models: Mapping[str, Any], batch: Batch, mode: Mode = "inference", repeats: int = 7,
                  warmup: int = 2, device: str = "auto") -> dict[str, dict[str, Any]]:
    """Time several models on one batch, interleaved: every repeat times each model once, in an
    order rotated by one per repeat, so drifting machine load hits all models alike.

    Returns per model ``{"tokens_per_s", "seconds_median", "seconds", "tokens", "ratio"}``, where
    ``ratio`` is the first (reference) model's median over this model's (the speed-up; 1.0 for the
    reference). In ``mode="train"`` every model is deep-copied, so all copies are held at once.
    """
    if not models:
        raise ConfigError("models must name at least one model")
    _check_counts(repeats, warmup)
    dev = resolve_device(device)
    names = list(models)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    with contextlib.ExitStack() as stack:
        steps = {name: stack.enter_context(_probe(models[name], batch, mode, dev))[0] for name in names}
        for r in range(warmup + repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                t = timed(steps[name], dev)
                if r >= warmup:
                    seconds[name].append(t)
    tokens = batch["input_ids"].numel()
    out = {}
    for name in names:
        median = statistics.median(seconds[name])
        out[name] = {"tokens_per_s": tokens / median, "seconds_median": median, "seconds": seconds[name],
                     "tokens": tokens}
    reference = out[names[0]]["seconds_median"]
    for result in out.values():
        result["ratio"] = reference / result["seconds_median"]
    return out


def peak_memory(model_or_adapter: Any, batch: Batch, mode: Mode = "inference", device: str = "auto") -> int:
    """Bytes one inference forward or one training step (forward, backward, AdamW update, on a deep
    copy) needs on ``device``: parameters, buffers, gradients, optimizer state and the peak of
    activations (:func:`~edgeadapt.memory.accounting.measure_peak`'s ``total_bytes``; tensor-level
    accounting on CPU, the allocator's peak on CUDA)."""
    from edgeadapt.memory.accounting import measure_peak

    dev = resolve_device(device)
    with _probe(model_or_adapter, batch, mode, dev) as (step, module, opt):
        _, report = measure_peak(step, device=dev, modules=[module], optimizer=opt)
    return report.total_bytes
