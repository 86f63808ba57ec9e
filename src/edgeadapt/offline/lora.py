"""LoRA fine-tuning of the foundation model on the source domain, then an exact merge.

The offline stage adapts the FM cheaply before it becomes a knowledge base: low-rank adapters
(PEFT LoRA, a real rank ``r`` and ``alpha`` with scaling ``alpha / r``) go into the projections
the adapter names — q/k/v/o and the MLP input/output projections from ``adapter.blocks()``, never
from module-name sniffing — and the task head trains fully. LoRA layers are injected *in place*
with peft's LoRA tuner, so module paths stay the same and ``adapter.blocks()``, hooks and the
task loss keep working on the adapted model. Merging folds ``B @ A * scaling`` into the base
weights and removes the LoRA modules, leaving the plain model (Hugging Face or custom) with the
original parameter names; :func:`lora_tune` checks the merge is exact before it commits to it (in float32,
then the rounding back to a bf16/fp16 model's own dtype, each within the dtype's tolerance).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from edgeadapt.artifacts import ArtifactError, atomic_write_text, read_manifest, replacing_dir, write_manifest
from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import HFAdapter, ModelAdapter
from edgeadapt.models.spec import BlockSpec
from edgeadapt.numerics import floating_dtype, fp32_master, max_error
from edgeadapt.pruning import ops
from edgeadapt.pruning.checkpoint import check_saveable
from edgeadapt.training.config import TrainConfig
from edgeadapt.training.device import to_device
from edgeadapt.training.loop import TrainResult, fit

Target = Literal["q", "k", "v", "o", "mlp_in", "mlp_out"]
Batch = dict[str, torch.Tensor]
STAGE = "lora"
LORA_JSON = "lora.json"
ADAPTER_NAME = "default"


class LoraSettings(BaseModel):
    """Where LoRA goes and how big it is. ``rank`` is the real LoRA rank, not a divisor."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, ge=1, description="LoRA rank r: A is [r, in_features], B is [out_features, r].")
    alpha: float = Field(16.0, gt=0, description="lora_alpha; the update B @ A is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch input while training.")
    targets: list[Target] = Field(
        default_factory=lambda: ["q", "k", "v", "o", "mlp_in", "mlp_out"], min_length=1,
        description="Projections that get LoRA, by role: attention q/k/v/o, the MLP input "
        "projection(s) (fc1, or gate+up) and the MLP output projection. Fused modules (GPT-2 "
        "c_attn = q+k+v) must be selected whole.")
    train_head: bool = Field(True, description="Train the task head fully (classifier, or the LM "
                             "head when it is not tied to the input embeddings).")

    @field_validator("targets")
    @classmethod
    def _dedupe(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


def _roles(block: BlockSpec) -> dict[str, list[str]]:
    a, m = block.attention, block.mlp
    return {"q": [a.q.module], "k": [a.k.module], "v": [a.v.module], "o": [a.o.module],
            "mlp_in": [s.module for s in m.inputs], "mlp_out": [m.output.module]}


def lora_target_modules(adapter: ModelAdapter, targets: Iterable[str]) -> list[str]:
    """Full dotted paths of the modules that get LoRA for ``targets``, in block order, deduplicated.

    >>> lora_target_modules(load_adapter("tiny-gpt2"), ["q", "k", "v"])  # doctest: +SKIP
    ['transformer.h.0.attn.c_attn', 'transformer.h.1.attn.c_attn']
    """
    targets = list(dict.fromkeys(targets))
    if not targets:
        raise ConfigError("targets: empty; name at least one of q, k, v, o, mlp_in, mlp_out")
    out: dict[str, None] = {}
    for block in adapter.blocks():
        roles = _roles(block)
        unknown = [t for t in targets if t not in roles]
        if unknown:
            raise ConfigError(f"targets: unknown {unknown}; choose from {', '.join(roles)}")
        owners: dict[str, set[str]] = {}
        for role, paths in roles.items():
            for path in paths:
                owners.setdefault(path, set()).add(role)
        for role in targets:
            for path in roles[role]:
                missing = owners[path] - set(targets)
                # LoRA on a fused module adapts every role in it; selecting a part would be a lie.
                if missing:
                    raise ConfigError(f"targets: {path} holds {sorted(owners[path])} fused together; "
                                     f"add {sorted(missing)} or drop {role!r}")
                out[path] = None
    return list(out)


def _head_params(adapter: ModelAdapter) -> list[nn.Parameter]:
    """Head parameters that belong to the head alone (an LM head tied to the embeddings does not)."""
    head = adapter.head()
    if head is None:
        return []
    own = {id(p) for p in adapter.model.get_submodule(head).parameters()}
    shared = {id(p) for name, p in adapter.model.named_parameters(remove_duplicate=False)
              if id(p) in own and not name.startswith(f"{head}.")}
    return [p for p in adapter.model.get_submodule(head).parameters() if id(p) not in shared]


def add_lora(adapter: ModelAdapter, settings: LoraSettings, seed: int = 0) -> list[str]:
    """Inject LoRA into ``adapter.model`` in place and freeze everything else (but the head when
    ``settings.train_head``). LoRA A is seeded by ``seed`` (global RNG untouched); B starts at zero,
    so the model's outputs do not change. Returns the trainable parameter names."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer, LoraModel

    if any(isinstance(m, LoraLayer) for m in adapter.model.modules()):
        raise ConfigError("this model already has LoRA layers; merge_lora() it first")
    if adapter.plan is None:
        adapter.base_hash()  # the artifact's base identity is the weights *before* LoRA
    modules = lora_target_modules(adapter, settings.targets)
    _check_linear(adapter, modules)
    # read from the modules, not from a family table: GPT-2's Conv1D stores weights [in, out]
    transposed = any(ops.is_transposed(adapter.model.get_submodule(m)) for m in modules)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=modules, fan_in_fan_out=transposed, bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # The tuner replaces each target with a LoRA wrapper at the same path, marks only lora_*
        # trainable, and leaves adapter.model the same object (no PeftModel wrapper).
        LoraModel(adapter.model, config, adapter_name=ADAPTER_NAME)
    if settings.train_head:
        for p in _head_params(adapter):
            p.requires_grad_(True)
    return [n for n, p in adapter.model.named_parameters() if p.requires_grad]


def _check_linear(adapter: ModelAdapter, modules: list[str]) -> None:
    """What LoRA needs from any model, custom ones included: every target the adapter's
    ``blocks()`` names is an ``nn.Linear`` (or transformers' ``Conv1D``, all of one layout), so
    peft can wrap it in place; :class:`~edgeadapt.errors.ConfigError` naming the module otherwise."""
    kinds = {m: adapter.model.get_submodule(m) for m in modules}
    bad = [f"{m} ({type(x).__name__})" for m, x in kinds.items()
           if not (isinstance(x, nn.Linear) or ops.is_transposed(x))]
    if bad:
        raise ConfigError(f"LoRA wraps nn.Linear projections; these targets named by the adapter's blocks() "
                          f"are not: {', '.join(bad[:3])}. Build those projections as nn.Linear or drop "
                          "their roles from the LoRA targets")
    if len({ops.is_transposed(x) for x in kinds.values()}) > 1:
        raise ConfigError("LoRA targets mix nn.Linear and Conv1D layouts; choose targets of one layout")


def _lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def _unload(adapter: ModelAdapter) -> None:
    """Replace every (already merged) LoRA wrapper by its base layer; unfreeze the model."""
    model = adapter.model
    for name, layer in _lora_layers(model):
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    model.requires_grad_(True)  # a plain HF model trains all its weights, as before add_lora
    # The merged weights of a full-width model are a new foundation model: everything built from
    # it (knowledge base, neuron index) must name *these* weights, not the ones LoRA started from.
    # A pruned model keeps its base identity, because its plan is relative to that base.
    if adapter.plan is None or adapter.plan.is_dense():
        adapter.rebase()


def merge_lora(adapter: ModelAdapter) -> None:
    """Fold every LoRA update into its base weight and remove the LoRA modules, so
    ``adapter.model`` is a plain HF model with the parameter names it had before :func:`add_lora`
    (all parameters trainable again). A bf16/fp16 model merges in float32 and is rounded to its
    dtype once (:func:`~edgeadapt.numerics.fp32_master`), not once per rounded ``B @ A`` term."""
    layers = _lora_layers(adapter.model)
    if not layers:
        raise ConfigError("merge_lora: the model has no LoRA layers (call add_lora first)")
    with fp32_master(adapter.model):
        for _, layer in layers:
            if not layer.merged:
                layer.merge(safe_merge=True)  # safe_merge refuses NaN/inf instead of corrupting weights
    _unload(adapter)


def discard_lora(adapter: ModelAdapter) -> None:
    """Remove every LoRA module *without* merging: the model computes exactly what it did before
    :func:`add_lora` (apart from a head trained with ``train_head``)."""
    layers = _lora_layers(adapter.model)
    if not layers:
        raise ConfigError("discard_lora: the model has no LoRA layers")
    for _, layer in layers:
        if layer.merged:
            layer.unmerge()
    _unload(adapter)


def train_lora(adapter: ModelAdapter, train: Callable[[int], Iterable[Batch]], cfg: TrainConfig,
               settings: LoraSettings, val: Callable[[], Iterable[Batch]] | None = None,
               monitor: str = "loss", logger: Any | None = None,
               checkpoint_dir: str | Path | None = None) -> TrainResult:
    """Add LoRA (seeded by ``cfg.seed``) and train it with the shared loop; the caller merges."""
    add_lora(adapter, settings, seed=cfg.seed)
    return fit(adapter, train, cfg, val=val, monitor=monitor, logger=logger, checkpoint_dir=checkpoint_dir)


@torch.no_grad()
def _outputs(adapter: ModelAdapter, batch: Batch) -> torch.Tensor:
    """The model's main output (logits, or the features of an encoder) in eval mode, through the
    adapter's ``logits``/``features`` (so a custom adapter is checked like a Hugging Face one)."""
    model = adapter.model.eval()
    batch = to_device(batch, next(model.parameters()).device)
    logits = adapter.logits(batch)
    return (logits if logits is not None else adapter.features(batch)).float()


def merge_checked(adapter: ModelAdapter, held: Batch) -> dict[str, Any]:
    """Merge every LoRA layer, checking on ``held`` that the merge is exact; returns the diffs.

    The merge and its check run in float32 (:func:`~edgeadapt.numerics.fp32_master`; a bf16/fp16
    model converts exactly), so the check is as strict as for a float32 model: the merged model
    must reproduce the LoRA model's outputs within :func:`~edgeadapt.numerics.tolerance` of
    float32 at the model's depth, else the merge is undone and ``RuntimeError`` raised (a bug).
    A half-precision model is then rounded back to its dtype, and its outputs must stay within
    that dtype's tolerance of the float32 merge, else :class:`~edgeadapt.errors.ConfigError`
    (the dtype cannot hold this model, e.g. fp16 overflow) names the dtype and the fix.
    Returns ``merge_max_abs_diff`` (float32) and, for a half model, ``cast_max_abs_diff`` and
    ``dtype``; the LoRA layers are merged but not yet removed (:func:`merge_lora` does that).
    """
    dtype, depth = floating_dtype(adapter.model), len(adapter.blocks())
    layers = [layer for _, layer in _lora_layers(adapter.model)]
    with fp32_master(adapter.model):
        before = _outputs(adapter, held)
        for layer in layers:
            layer.merge(safe_merge=True)
        merged = _outputs(adapter, held)
        diff, allowed = max_error(merged, before, torch.float32, depth)
        if not diff <= allowed:  # also catches NaN
            for layer in layers:
                layer.unmerge()
            raise RuntimeError(f"LoRA merge is not exact: max abs output diff {diff:.3g} > {allowed:.3g} "
                               f"(float32 tolerance at depth {depth}); the model keeps its unmerged LoRA "
                               "layers")
    report: dict[str, Any] = {"merge_max_abs_diff": diff}
    if dtype != torch.float32:
        cast, allowed = max_error(_outputs(adapter, held), merged, dtype, depth)
        if not cast <= allowed:
            raise ConfigError(f"the LoRA-merged model in {dtype} gives outputs {cast:.3g} away from the same "
                              f"model in float32 (allowed {allowed:.3g} for {dtype} at depth {depth}): "
                              f"{dtype} cannot hold this model's values (float16 overflows above 65504); "
                              "save the checkpoint in bfloat16 or float32 and rerun")
        report.update(cast_max_abs_diff=cast, dtype=str(dtype).removeprefix("torch."))
    return report


def lora_tune(adapter: ModelAdapter, train: Callable[[int], Iterable[Batch]], cfg: TrainConfig,
              settings: LoraSettings, val: Callable[[], Iterable[Batch]] | None = None,
              monitor: str = "loss", out: str | Path | None = None, logger: Any | None = None,
              checkpoint_dir: str | Path | None = None) -> dict[str, Any]:
    """The whole offline LoRA stage: add LoRA, train, merge with an exactness check, save.

    The first validation batch (or the first training batch) is held out for the check
    (:func:`merge_checked`: float32 exactness, then the rounding to a bf16/fp16 model's own dtype,
    each within :func:`~edgeadapt.numerics.tolerance`); the merged model keeps the dtype the
    model came in. ``total_params`` counts the merged model.
    With ``checkpoint_dir`` training checkpoints every epoch and every ``cfg.checkpoint_every``
    steps, and a killed run resumes from the last checkpoint (same result as uninterrupted).
    """
    result = train_lora(adapter, train, cfg, settings, val=val, monitor=monitor, logger=logger,
                        checkpoint_dir=checkpoint_dir)
    trainable = sum(p.numel() for p in adapter.model.parameters() if p.requires_grad)
    held = next(iter(val() if val is not None else train(0)))
    checks = merge_checked(adapter, held)
    _unload(adapter)
    report: dict[str, Any] = {
        "trainable_params": trainable, "total_params": sum(p.numel() for p in adapter.model.parameters()),
        **checks, "history": result.history, "best": result.best,
        "stop_reason": result.stop_reason, "steps": result.steps,
    }
    if out is not None:
        config = {"train": cfg.model_dump(), "monitor": monitor}
        report["artifact"] = str(save_lora_artifact(adapter, out, settings, report, config))
    return report


def save_lora_artifact(adapter: ModelAdapter, out: str | Path, settings: LoraSettings,
                       report: dict[str, Any], config: dict[str, Any]) -> Path:
    """Write the merged model as a ``pruned-model`` artifact tagged ``stage: lora``, plus
    ``lora.json`` (settings and report), covered by the manifest's hashes. Returns the directory.
    A custom (non-Hugging Face) adapter is refused before anything is written
    (:func:`~edgeadapt.pruning.checkpoint.check_saveable`): keep its merged model in memory."""
    from edgeadapt.pruning.checkpoint import KIND, VERSION, save_pruned

    check_saveable(adapter, "save_lora_artifact")
    if _lora_layers(adapter.model):
        raise ConfigError("save_lora_artifact: merge_lora() the model first (it still has LoRA layers)")
    out = Path(out)
    summary = {k: report[k] for k in ("trainable_params", "total_params", "merge_max_abs_diff", "best")
               if k in report}
    # staged beside ``out`` and swapped in: a kill mid-write leaves the previous artifact in place
    with replacing_dir(out) as staged:
        save_pruned(adapter, staged, config={"stage": STAGE, "lora": settings.model_dump(),
                                             "tuned_from_hash": adapter.parent_hash, **summary, **config})
        record = {"settings": settings.model_dump(), "report": report}
        atomic_write_text(staged / LORA_JSON, json.dumps(record, indent=1, sort_keys=True, default=str))
        # save_pruned lists only its own files; rewrite the manifest so lora.json is hashed too
        manifest = read_manifest(staged, KIND, VERSION, verify=False)
        own = ("kind", "format_version", "edgeadapt_version", "files")  # write_manifest sets these
        fields = {k: v for k, v in manifest.items() if k not in own}
        write_manifest(staged, KIND, VERSION, [*manifest["files"], LORA_JSON], **fields)
    return out


def load_lora_artifact(out: str | Path) -> HFAdapter:
    """Reload a model written by :func:`save_lora_artifact`, refusing artifacts of other stages."""
    from edgeadapt.pruning.checkpoint import KIND, VERSION, load_pruned

    manifest = read_manifest(out, KIND, VERSION, verify=False)  # load_pruned verifies the hashes
    stage = manifest.get("config", {}).get("stage")
    if stage != STAGE:
        raise ArtifactError(f"{out} is not a LoRA artifact (config stage is {stage!r}, expected "
                            f"{STAGE!r}); load it with edgeadapt.pruning.checkpoint.load_pruned")
    return load_pruned(out)
