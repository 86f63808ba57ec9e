"""``edgeadapt llm-prune``: prune a causal LM, recover it, and prove the result with perplexity.

``--mode train`` (:func:`run_train`): load the model and the corpus (through the dataset registry,
so the splits are ``edgeadapt train``'s), measure dense validation perplexity, score
heads/neurons/layers on calibration batches, prune to the configured budget — ``unit_sparsity`` or
``param_sparsity`` (:mod:`edgeadapt.pruning.budget`) — also sweeping a few budgets without recovery
for the perplexity-vs-sparsity curve, recover with LoRA or full fine-tuning through the shared
training loop (warmup + cosine or reduce-on-plateau, early stopping on validation perplexity,
checkpoints that resume), and save the pruned model artifact plus ``prune_metrics.json``.

The GPU is chosen with a device string (``cuda:N``), never by writing ``CUDA_VISIBLE_DEVICES``;
an existing ``CUDA_VISIBLE_DEVICES`` that disagrees with ``gpu_ids`` is an error
(:func:`select_device`).

``--mode test`` (:func:`run_test`): reload the saved model, compare it with the dense model on the
test split(s) (sliding-window perplexity), time inference and a training step interleaved, measure
their peak memory, and write ``report.md`` with PNG plots into ``log_dir``.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from edgeadapt.data.registry import build_dataset
from edgeadapt.data.tokens import corpus_ids, token_blocks
from edgeadapt.errors import ConfigError, PathError
from edgeadapt.llm.config import LLMPruneConfig
from edgeadapt.models.adapter import HFAdapter
from edgeadapt.progress import bar_enabled
from edgeadapt.pruning.budget import PruneOutcome, Rescore, prune_to_param_sparsity, prune_to_unit_sparsity
from edgeadapt.pruning.importance import Scores, score
from edgeadapt.pruning.memory import check_scoring_memory
from edgeadapt.pruning.request import check_request

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


def corpus(cfg: LLMPruneConfig, split: str, dataset: str | None = None) -> list[str]:
    """The texts of ``split`` (train/val/test) of the configured (or given) dataset, from the dataset
    registry (:func:`edgeadapt.data.registry.build_dataset`), so a folder gives the same splits here
    as under ``edgeadapt train``. ``data_root`` applies to the configured dataset only."""
    name = dataset or cfg.dataset
    root = cfg.data_root if name == cfg.dataset else None
    try:
        splits = build_dataset(name, root=root)
    except PathError as exc:
        if root is not None:
            raise
        fix = ("set the config's data_root: to a folder of local .parquet/.json/.txt copies named by "
               "split (train/val/test)") if name == cfg.dataset else f"remove {name} from evaluation.datasets"
        raise PathError(f"{'data_root' if name == cfg.dataset else 'evaluation.datasets'}: dataset {name!r} "
                        f"is not in the local Hugging Face cache and edgeadapt does not download; {fix}, or "
                        "cache it once with HF_HUB_OFFLINE=0") from exc
    return list(getattr(splits, split).texts)


def token_ids(adapter: HFAdapter, texts: list[str], limit: int | None = None) -> torch.Tensor:
    """``texts`` as one stream of token ids (at most ``limit``)."""
    ids = corpus_ids(adapter.tokenizer, texts)
    return ids[:limit] if limit else ids


def select_device(use_gpu: bool | str, gpu_ids: Sequence[int],
                  environ: Mapping[str, str] = os.environ) -> str:
    """The device string for ``use_gpu``/``gpu_ids``, given the process environment; never writes it.

    One GPU id ``N`` gives ``cuda:N`` (or its position in an existing ``CUDA_VISIBLE_DEVICES`` that
    lists it). Several ids run data-parallel: the launcher must have made exactly those GPUs
    visible (``accelerate launch --gpu_ids 0,1 --num_processes 2``); each rank's device then comes
    from accelerate. A ``CUDA_VISIBLE_DEVICES`` that disagrees with ``gpu_ids`` raises a
    :class:`ConfigError` naming both, instead of one silently winning."""
    if use_gpu is False:
        return "cpu"
    if use_gpu is True and not torch.cuda.is_available():
        raise ConfigError("use_gpu: true but no CUDA device is visible; set use_gpu: auto or false")
    if not gpu_ids:
        return "cuda" if use_gpu is True else "auto"
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    visible = None if raw is None else [v.strip() for v in raw.split(",") if v.strip()]
    wanted = [str(i) for i in gpu_ids]
    conflict = (f"gpu_ids: {list(gpu_ids)} disagrees with CUDA_VISIBLE_DEVICES={raw!r} in the environment; "
                "unset CUDA_VISIBLE_DEVICES or make gpu_ids match it (gpu_ids are the GPU numbers "
                "nvidia-smi shows)")
    if len(gpu_ids) > 1:
        if int(environ.get("WORLD_SIZE", "1")) == 1:
            raise ConfigError(f"gpu_ids: {len(gpu_ids)} GPUs run data-parallel through accelerate; launch "
                              f"with `accelerate launch --gpu_ids {','.join(wanted)} --num_processes "
                              f"{len(gpu_ids)} -m edgeadapt llm-prune --config ...` (or list one GPU)")
        if visible != wanted:
            raise ConfigError(conflict)
        return "cuda"
    if visible is None:
        return f"cuda:{gpu_ids[0]}"
    if wanted[0] not in visible:
        raise ConfigError(conflict)
    return f"cuda:{visible.index(wanted[0])}"


def _logger(cfg: LLMPruneConfig, sub: str) -> Any:
    from edgeadapt.tracking import make_logger

    backends = ["csv"] + ([cfg.tracker] if cfg.tracker != "none" else [])
    options = {"wandb": {"project": cfg.project}, "mlflow": {"experiment": cfg.project}}
    return make_logger(cfg.log_dir / sub, backends, **{k: v for k, v in options.items() if k in backends})


def _ppl(cfg: LLMPruneConfig, adapter: HFAdapter, ids: torch.Tensor, device: str) -> float:
    from edgeadapt.llm.evaluate import perplexity

    return float(perplexity(adapter, ids, cfg.seq_len, cfg.evaluation.stride, batch_size=cfg.batch_size,
                            device=device)["perplexity"])


# -- train mode -------------------------------------------------------------------------------------

def recover(cfg: LLMPruneConfig, adapter: HFAdapter, train: Callable[[int], Iterable[Batch]],
            val_ids: torch.Tensor, logger: Any = None, checkpoint_dir: Path | None = None,
            callbacks: Sequence[Callable[[Any], None]] = (), baseline: float | None = None,
            device: str = "auto") -> dict[str, Any]:
    """Recovery training (LoRA merged afterwards, or full) with early stopping on val perplexity,
    in the shared loop with ``cfg.recovery``'s :class:`~edgeadapt.training.config.TrainConfig`.

    The best epoch's weights are kept; if even they are worse than ``baseline`` (the validation
    perplexity right after pruning) the pruned weights are restored, unless
    ``recovery.keep_if_worse`` — recovery never makes the model worse on validation."""
    from edgeadapt.offline.lora import add_lora, discard_lora, merge_lora
    from edgeadapt.training.loop import fit

    r = cfg.recovery
    snapshot = None
    if r.method == "lora":
        add_lora(adapter, r.lora, seed=cfg.seed)
    elif baseline is not None and not r.keep_if_worse:
        snapshot = {k: v.detach().to("cpu", copy=True) for k, v in adapter.model.state_dict().items()}
    trainable = sum(p.numel() for p in adapter.model.parameters() if p.requires_grad)
    result = fit(adapter, train, r.train_config(cfg.seed, device), monitor="perplexity",
                 evaluate=lambda: {"perplexity": _ppl(cfg, adapter, val_ids, device)}, logger=logger,
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


def prune_to_budget(cfg: LLMPruneConfig, adapter: HFAdapter, scores: Scores,
                    sparsity: float | None = None, rescore: Rescore | None = None) -> PruneOutcome:
    """Prune ``adapter`` in place to the configured budget (or to ``sparsity`` of the same kind of
    budget), with the configured targets, scope, floors and protected layers; in
    ``pruning.iterative_steps`` steps re-scored by ``rescore`` when it is given, else in one shot."""
    kind, configured = cfg.budget
    p = cfg.pruning
    fn = prune_to_unit_sparsity if kind == "unit" else prune_to_param_sparsity
    return fn(adapter, configured if sparsity is None else sparsity, cfg.targets, scores, scope=p.scope,
              min_keep=p.min_keep, protect_first=p.protect_first, protect_last=p.protect_last,
              iterative_steps=p.iterative_steps if rescore is not None else 1, rescore=rescore)


def run_train(cfg: LLMPruneConfig, overwrite: bool = False, max_memory: int | None = None) -> dict[str, Any]:
    """Prune + recover + save; returns (and writes to ``save/prune_metrics.json``) the metrics.
    ``max_memory`` (bytes): refuse before any compute when scoring is predicted to exceed it
    (:func:`edgeadapt.pruning.memory.check_scoring_memory`).

    ``save`` is locked and checked before any compute (:func:`edgeadapt.rundir.claim_output`): it
    must be empty or hold an earlier ``llm-prune`` of the same config (whose recovery checkpoints
    are resumed); another config or another command's output is refused unless ``overwrite``."""
    from edgeadapt.rundir import claim_output

    with claim_output(cfg.save, "llm-prune", cfg, overwrite=overwrite, resumable=cfg.resume, field="save"):
        return _run_train(cfg, max_memory)


def _run_train(cfg: LLMPruneConfig, max_memory: int | None = None) -> dict[str, Any]:
    from edgeadapt.artifacts import atomic_write_text
    from edgeadapt.pruning.checkpoint import save_pruned

    device = select_device(cfg.use_gpu, cfg.gpu_ids)
    adapter = load_lm(cfg)
    p = cfg.pruning  # a request that removes nothing is refused before any perplexity or score
    check_request(adapter, cfg.targets, *cfg.budget, p.scope, p.min_keep, p.protect_first, p.protect_last)
    if max_memory is not None:
        check_scoring_memory(adapter, p.importance, cfg.batch_size, cfg.seq_len, p.calibration_batches,
                             max_memory, {"num_batches": "pruning.calibration_batches", "batch_size": "batch_size",
                              "tokens": "seq_len"})
    train_ids = token_ids(adapter, corpus(cfg, "train"))
    val_ids = token_ids(adapter, corpus(cfg, "val"), cfg.evaluation.max_eval_tokens)
    train = token_blocks(train_ids, cfg.seq_len, cfg.batch_size, shuffle=True, seed=cfg.seed,
                         max_blocks=cfg.recovery.max_train_blocks)
    p = cfg.pruning
    calibration = [b for _, b in zip(range(p.calibration_batches), token_blocks(
        train_ids, cfg.seq_len, cfg.batch_size, shuffle=True, seed=cfg.seed + 10_000)(0))]
    dense_ppl = _ppl(cfg, adapter, val_ids, device)
    n_params = sum(q.numel() for q in adapter.model.parameters())
    print(f"dense: validation perplexity {dense_ppl:.2f}, {n_params:,} params")
    scores = score(adapter, p.importance, calibration, progress=bar_enabled(), seed=cfg.seed)
    adapter.model.cpu()
    budget, target = cfg.budget
    # the perplexity-vs-sparsity curve without recovery, from the same scores, in the same budget
    sweep = []
    for s in sorted(set(cfg.evaluation.sweep) - {0.0}):
        probe = copy.deepcopy(adapter)
        try:
            with warnings.catch_warnings():  # a sweep point where one target rounds to zero is not news
                warnings.simplefilter("ignore", UserWarning)
                outcome = prune_to_budget(cfg, probe, scores, s)
        except ValueError:
            continue  # beyond what these targets can remove, or removing nothing
        sweep.append({"target": s, "budget": f"{budget}_sparsity", "param_sparsity": outcome.param_sparsity,
                      "ppl": _ppl(cfg, probe, val_ids, device), "params": outcome.params_after})
    outcome = prune_to_budget(cfg, adapter, scores, rescore=lambda a: score(a, p.importance, calibration,
                                                                            seed=cfg.seed))
    pruned_ppl = _ppl(cfg, adapter, val_ids, device)
    print(f"pruned: {outcome.param_sparsity:.1%} of block parameters removed ({outcome.plan.summary()}); "
          f"validation perplexity {pruned_ppl:.2f} before recovery")
    logger = _logger(cfg, "train")
    logger.log_params(cfg.model_dump(mode="json"))
    try:
        recovery = None
        if cfg.recovery.method != "none" and target > 0:
            import shutil

            from edgeadapt.training.checkpoint import bind_checkpoints

            if not cfg.resume:  # starting over: old checkpoints belong to the run being replaced
                shutil.rmtree(cfg.save / "checkpoints", ignore_errors=True)
            bind_checkpoints(cfg.save / "checkpoints", cfg)  # a checkpoint of another config is refused
            recovery = recover(cfg, adapter, train, val_ids, logger, cfg.save / "checkpoints",
                               baseline=pruned_ppl, device=device)
            if recovery["kept_pruned_weights"]:
                print("recovery did not beat the pruned model's validation perplexity; "
                      "kept the pruned weights")
        recovered_ppl = _ppl(cfg, adapter, val_ids, device)
        summary = {"val/dense_ppl": dense_ppl, "val/pruned_ppl": pruned_ppl,
                   "val/recovered_ppl": recovered_ppl, "param_sparsity": outcome.param_sparsity,
                   "params": outcome.params_after}
        logger.log_metrics(summary, recovery["steps"] if recovery else 0)
    finally:
        logger.close()
    adapter.model.cpu()
    metrics = {"dense_ppl": dense_ppl, "pruned_ppl": pruned_ppl, "recovered_ppl": recovered_ppl,
               "budget": {f"{budget}_sparsity": target}, "prune": outcome.to_dict(), "sweep": sweep,
               "recovery": recovery, "importance": p.importance, "targets": cfg.targets}
    if int(os.environ.get("RANK", "0")) == 0:  # under accelerate launch every rank holds the same model
        save_pruned(adapter, cfg.save, config=cfg.model_dump(mode="json"))
        atomic_write_text(cfg.save / METRICS, json.dumps(metrics, indent=1))
    print(f"recovered: validation perplexity {recovered_ppl:.2f} (dense {dense_ppl:.2f}); saved {cfg.save}")
    return metrics


# -- test mode --------------------------------------------------------------------------------------

def run_test(cfg: LLMPruneConfig) -> dict[str, Any]:
    """Evaluate the saved model against the dense one and write the report into ``log_dir``."""
    from edgeadapt.llm.evaluate import compare_speed, lm_batch, peak_memory
    from edgeadapt.llm.report import write_report
    from edgeadapt.pruning.checkpoint import load_pruned

    device = select_device(cfg.use_gpu, cfg.gpu_ids)
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
        results["perplexity"][name] = {"dense": _ppl(cfg, dense, ids, device),
                                       "pruned": _ppl(cfg, pruned, ids, device)}
    probe_ids = token_ids(dense, corpus(cfg, "val"))
    batch = lm_batch(probe_ids, cfg.evaluation.speed_batch_size, cfg.seq_len)
    e = cfg.evaluation
    for mode in ("inference", "train"):
        pair = {"dense": dense, "pruned": pruned}
        speed = compare_speed({k: m.model for k, m in pair.items()}, batch, mode, repeats=e.speed_repeats,
                              device=device)
        memory = {k: peak_memory(m, batch, mode, device=device) for k, m in pair.items()}
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
