"""``edgeadapt llm-prune``: prune a causal LM, recover it, and prove the result with perplexity.

``--mode train`` (:func:`run_train`): load the model and corpus, measure dense validation
perplexity, score heads/neurons/layers on calibration batches, prune to the target parameter
sparsity (also sweeping a few sparsities without recovery for the perplexity-vs-sparsity curve),
recover with LoRA or full fine-tuning through the shared training loop (warmup + cosine or
reduce-on-plateau, early stopping on validation perplexity, checkpoints that resume), and save the
pruned model artifact plus ``prune_metrics.json``.

``--mode test`` (:func:`run_test`): reload the saved model, compare it with the dense model on the
test split(s) (sliding-window perplexity), time inference and a training step interleaved, measure
their peak memory, and write ``report.md`` with PNG plots into ``log_dir``.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from edgeadapt.errors import ConfigError
from edgeadapt.llm.config import LLMPruneConfig
from edgeadapt.models.adapter import HFAdapter

Batch = dict[str, torch.Tensor]
METRICS = "prune_metrics.json"


# -- model and data ---------------------------------------------------------------------------------

def load_lm(cfg: LLMPruneConfig) -> HFAdapter:
    """The configured causal LM, with the configured tokenizer when one is given."""
    from edgeadapt.pruning.checkpoint import load_model

    adapter = load_model(cfg.model)
    if adapter.task.name != "causal-lm":
        raise ConfigError(f"model: {cfg.model!r} is a {adapter.task.name} model; llm-prune needs a causal LM")
    if cfg.tokenizer is not None:
        from transformers import AutoTokenizer

        adapter.tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    if adapter.tokenizer is None:
        raise ConfigError(f"tokenizer: model {cfg.model!r} has no tokenizer; set tokenizer: to a name or "
                         "directory")
    return adapter


def _in_split(position: int, split: str) -> bool:
    """Documents of one local file list are split 90/5/5 by a stable hash of their position."""
    bucket = zlib.crc32(str(position).encode()) % 20
    return {"test": bucket == 0, "val": bucket == 1}.get(split, bucket > 1)


def corpus(cfg: LLMPruneConfig, split: str, dataset: str | None = None) -> list[str]:
    """The texts of ``split`` (train/val/test) of the configured (or given) dataset."""
    from edgeadapt.data.external import load_hf_text, load_text_files
    from edgeadapt.data.text import builtin_paragraphs

    name = dataset or cfg.dataset
    if name == "builtin-docs":
        return builtin_paragraphs(split)
    paths = cfg.data_paths if name == cfg.dataset else []
    if name == "text-files":
        if isinstance(paths, dict):
            if split not in paths:
                raise ConfigError(f"data_paths: no {split!r} files listed; add data_paths.{split}")
            return load_text_files(paths[split])
        texts = load_text_files(paths)
        chosen = [t for i, t in enumerate(texts) if _in_split(i, split)]
        if not chosen:
            raise ConfigError(f"data_paths: too few documents ({len(texts)}) for a {split} split; list "
                             "data_paths as {train: [...], val: [...], test: [...]}")
        return chosen
    files: Any = None
    if paths:
        files = {k: [str(p) for p in v] for k, v in paths.items()} if isinstance(paths, dict) \
            else [str(p) for p in paths]
    return load_hf_text(name, split, data_files=files)


def token_ids(adapter: HFAdapter, texts: list[str], limit: int | None = None) -> torch.Tensor:
    from edgeadapt.llm.evaluate import corpus_ids

    ids = corpus_ids(adapter.tokenizer, texts)
    return ids[:limit] if limit else ids


def block_batches(ids: torch.Tensor, seq_len: int, batch_size: int, shuffle: bool = False, seed: int = 0,
                  max_blocks: int | None = None) -> Callable[[int], Iterable[Batch]]:
    """Per-epoch batches of disjoint ``seq_len`` blocks of ``ids`` (seeded shuffle per epoch)."""
    if len(ids) < seq_len:
        raise ConfigError(f"seq_len: the corpus has {len(ids)} tokens, fewer than seq_len={seq_len}; "
                         "lower seq_len")
    blocks = ids[: len(ids) // seq_len * seq_len].view(-1, seq_len)[:max_blocks]

    def batches(epoch: int) -> Iterable[Batch]:
        g = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(len(blocks), generator=g) if shuffle else torch.arange(len(blocks))
        for start in range(0, len(blocks), batch_size):
            x = blocks[order[start:start + batch_size]]
            yield {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}
    return batches


def _select_gpus(cfg: LLMPruneConfig) -> None:
    if cfg.gpu_ids:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", ",".join(map(str, cfg.gpu_ids)))
        if len(cfg.gpu_ids) > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            raise ConfigError(f"gpu_ids: {len(cfg.gpu_ids)} GPUs run data-parallel through accelerate; "
                             f"launch with `accelerate launch --num_processes {len(cfg.gpu_ids)} "
                             "-m edgeadapt llm-prune "
                             "--config ...` (or list one GPU)")


def _logger(cfg: LLMPruneConfig, sub: str) -> Any:
    from edgeadapt.tracking import make_logger

    backends = ["csv"] + ([cfg.tracker] if cfg.tracker != "none" else [])
    options = {"wandb": {"project": cfg.project}, "mlflow": {"experiment": cfg.project}}
    return make_logger(cfg.log_dir / sub, backends, **{k: v for k, v in options.items() if k in backends})


def _ppl(cfg: LLMPruneConfig, adapter: HFAdapter, ids: torch.Tensor) -> float:
    from edgeadapt.llm.evaluate import perplexity

    return float(perplexity(adapter, ids, cfg.seq_len, cfg.evaluation.stride, batch_size=cfg.batch_size,
                            device=cfg.device)["perplexity"])


# -- train mode -------------------------------------------------------------------------------------

def recover(cfg: LLMPruneConfig, adapter: HFAdapter, train: Callable[[int], Iterable[Batch]],
            val_ids: torch.Tensor, logger: Any = None, checkpoint_dir: Path | None = None,
            callbacks: Sequence[Callable[[Any], None]] = (), baseline: float | None = None) -> dict[str, Any]:
    """Recovery training (LoRA merged afterwards, or full) with early stopping on val perplexity.

    The best epoch's weights are kept; if even they are worse than ``baseline`` (the validation
    perplexity right after pruning) the pruned weights are restored, unless
    ``recovery.keep_if_worse`` — recovery never makes the model worse on validation."""
    from edgeadapt.offline.lora import add_lora, discard_lora, merge_lora
    from edgeadapt.training.config import TrainConfig
    from edgeadapt.training.loop import fit

    r = cfg.recovery
    tc = TrainConfig(epochs=cfg.epochs, learning_rate=cfg.learning_rate, schedule=r.schedule,
                     warmup_fraction=r.warmup_fraction, weight_decay=r.weight_decay, precision=r.precision,
                     gradient_checkpointing=r.gradient_checkpointing, grad_accum_steps=r.grad_accum_steps,
                     patience=cfg.patience, max_steps=r.max_steps, seed=cfg.seed, device=cfg.device,
                     progress=True, log_every=5, checkpoint_every=r.checkpoint_every)
    snapshot = None
    if r.method == "lora":
        add_lora(adapter, r.lora, seed=cfg.seed)
    elif baseline is not None and not r.keep_if_worse:
        snapshot = {k: v.detach().to("cpu", copy=True) for k, v in adapter.model.state_dict().items()}
    trainable = sum(p.numel() for p in adapter.model.parameters() if p.requires_grad)
    result = fit(adapter, train, tc, monitor="perplexity",
                 evaluate=lambda: {"perplexity": _ppl(cfg, adapter, val_ids)}, logger=logger,
                 checkpoint_dir=checkpoint_dir, resume=cfg.resume, callbacks=callbacks)
    best = result.best.get("perplexity")
    worse = baseline is not None and best is not None and best > baseline and not r.keep_if_worse
    if r.method == "lora":
        (discard_lora if worse else merge_lora)(adapter)
    elif worse and snapshot is not None:
        adapter.model.load_state_dict(snapshot)
    adapter.model.cpu()
    return {"trainable_params": trainable, "steps": result.steps, "stop_reason": result.stop_reason,
            "best": result.best, "history": result.history, "kept_pruned_weights": worse}


def run_train(cfg: LLMPruneConfig) -> dict[str, Any]:
    """Prune + recover + save; returns (and writes to ``save/prune_metrics.json``) the metrics."""
    from edgeadapt.artifacts import atomic_write_text
    from edgeadapt.llm.prune import prune_to_sparsity, sensitivity
    from edgeadapt.pruning.checkpoint import save_pruned

    _select_gpus(cfg)
    adapter = load_lm(cfg)
    train_ids = token_ids(adapter, corpus(cfg, "train"))
    val_ids = token_ids(adapter, corpus(cfg, "val"), cfg.evaluation.max_eval_tokens)
    train = block_batches(train_ids, cfg.seq_len, cfg.batch_size, shuffle=True, seed=cfg.seed,
                          max_blocks=cfg.recovery.max_train_blocks)
    p = cfg.pruning
    calibration = [b for _, b in zip(range(p.calibration_batches), block_batches(
        train_ids, cfg.seq_len, cfg.batch_size, shuffle=True, seed=cfg.seed + 10_000)(0))]
    dense_ppl = _ppl(cfg, adapter, val_ids)
    n_params = sum(q.numel() for q in adapter.model.parameters())
    print(f"dense: validation perplexity {dense_ppl:.2f}, {n_params:,} params")
    scores = sensitivity(adapter, p.importance, calibration, seed=cfg.seed, progress=True)
    adapter.model.cpu()
    kw = {"scope": p.scope, "min_keep": p.min_keep, "protect_first": p.protect_first,
          "protect_last": p.protect_last}
    # the perplexity-vs-sparsity curve without recovery, from the same scores
    sweep = []
    for s in sorted(set(cfg.evaluation.sweep) - {0.0}):
        probe = _copy(adapter)
        try:
            outcome = prune_to_sparsity(probe, s, cfg.granularity, scores, **kw)
        except ValueError:
            continue  # beyond what this granularity can remove
        sweep.append({"target": s, "sparsity": outcome.sparsity, "ppl": _ppl(cfg, probe, val_ids),
                      "params": outcome.params_after})
    outcome = prune_to_sparsity(adapter, cfg.sparsity, cfg.granularity, scores, **kw)
    pruned_ppl = _ppl(cfg, adapter, val_ids)
    print(f"pruned: {outcome.sparsity:.1%} of block parameters removed ({outcome.plan.summary()}); "
          f"validation perplexity {pruned_ppl:.2f} before recovery")
    logger = _logger(cfg, "train")
    logger.log_params(cfg.model_dump(mode="json"))
    try:
        recovery = None
        if cfg.recovery.method != "none" and cfg.sparsity > 0:
            recovery = recover(cfg, adapter, train, val_ids, logger, cfg.save / "checkpoints",
                               baseline=pruned_ppl)
            if recovery["kept_pruned_weights"]:
                print("recovery did not beat the pruned model's validation perplexity; "
                      "kept the pruned weights")
        recovered_ppl = _ppl(cfg, adapter, val_ids)
        summary = {"val/dense_ppl": dense_ppl, "val/pruned_ppl": pruned_ppl,
                   "val/recovered_ppl": recovered_ppl, "sparsity": outcome.sparsity,
                   "params": outcome.params_after}
        logger.log_metrics(summary, recovery["steps"] if recovery else 0)
    finally:
        logger.close()
    adapter.model.cpu()
    metrics = {"dense_ppl": dense_ppl, "pruned_ppl": pruned_ppl, "recovered_ppl": recovered_ppl,
               "prune": outcome.to_dict(), "sweep": sweep, "recovery": recovery,
               "importance": p.importance, "granularity": cfg.granularity}
    if int(os.environ.get("RANK", "0")) == 0:  # under accelerate launch every rank holds the same model
        save_pruned(adapter, cfg.save, config=cfg.model_dump(mode="json"))
        atomic_write_text(cfg.save / METRICS, json.dumps(metrics, indent=1))
    print(f"recovered: validation perplexity {recovered_ppl:.2f} (dense {dense_ppl:.2f}); saved {cfg.save}")
    return metrics


def _copy(adapter: HFAdapter) -> HFAdapter:
    import copy

    return copy.deepcopy(adapter)


# -- test mode --------------------------------------------------------------------------------------

def run_test(cfg: LLMPruneConfig) -> dict[str, Any]:
    """Evaluate the saved model against the dense one and write the report into ``log_dir``."""
    from edgeadapt.llm.evaluate import compare_speed, lm_batch, peak_memory
    from edgeadapt.llm.report import write_report
    from edgeadapt.pruning.checkpoint import load_pruned

    _select_gpus(cfg)
    if not (cfg.save / "manifest.json").is_file():
        raise ConfigError(f"save: {cfg.save} holds no pruned model; run `edgeadapt llm-prune --config ... "
                         "--mode train` first")
    pruned = load_pruned(cfg.save)
    dense = load_lm(cfg)
    if cfg.tokenizer is None and pruned.tokenizer is None:
        pruned.tokenizer = dense.tokenizer
    train_metrics = json.loads((cfg.save / METRICS).read_text()) if (cfg.save / METRICS).is_file() else {}
    results: dict[str, Any] = {"perplexity": {}, "params": {
        "dense": sum(q.numel() for q in dense.model.parameters()),
        "pruned": sum(q.numel() for q in pruned.model.parameters())}}
    for name in dict.fromkeys([cfg.dataset, *cfg.evaluation.datasets]):
        ids = token_ids(dense, corpus(cfg, "test", name), cfg.evaluation.max_eval_tokens)
        results["perplexity"][name] = {"dense": _ppl(cfg, dense, ids), "pruned": _ppl(cfg, pruned, ids)}
    probe_ids = token_ids(dense, corpus(cfg, "val"))
    batch = lm_batch(probe_ids, cfg.evaluation.speed_batch_size, cfg.seq_len)
    e = cfg.evaluation
    for mode in ("inference", "train"):
        pair = {"dense": dense, "pruned": pruned}
        speed = compare_speed({k: m.model for k, m in pair.items()}, batch, mode, repeats=e.speed_repeats,
                              device=cfg.device)
        memory = {k: peak_memory(m, batch, mode, device=cfg.device) for k, m in pair.items()}
        results[mode] = {"tokens_per_s": {k: v["tokens_per_s"] for k, v in speed.items()},
                         "speedup": speed["pruned"]["ratio"], "peak_memory_bytes": memory,
                         "memory_ratio": memory["pruned"] / memory["dense"]}
    results["train_metrics"] = train_metrics
    logger = _logger(cfg, "test")
    try:
        flat = {f"test/{d}/{k}_ppl": v for d, row in results["perplexity"].items() for k, v in row.items()}
        flat.update({f"{m}/speedup": results[m]["speedup"] for m in ("inference", "train")})
        flat.update({f"{m}/memory_ratio": results[m]["memory_ratio"] for m in ("inference", "train")})
        logger.log_metrics(flat, 0)
    finally:
        logger.close()
    write_report(results, cfg)
    return results
