"""Save and reload pruned models: base config + plan + safetensors weights + manifest.

A pruned model can have a different number of heads and FFN neurons in every layer, which a
Hugging Face config cannot express. So the artifact stores the *base* config and the plan, and
loading rebuilds the base architecture, applies the plan to get the exact shapes, then loads the
weights strictly. Nothing is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_model as load_safetensors_into
from safetensors.torch import save_model

from edgeadapt.artifacts import (
    ArtifactError,
    atomic_write_text,
    atomic_write_with,
    read_manifest,
    replacing_dir,
    write_manifest,
)
from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import HFAdapter, ModelAdapter
from edgeadapt.models.cnn import CNNAdapter
from edgeadapt.models.registry import load_adapter
from edgeadapt.numerics import match_stored_dtypes
from edgeadapt.pruning.apply import apply_plan, current_plan
from edgeadapt.pruning.channel_plan import ChannelPlan, current_channel_plan
from edgeadapt.pruning.channels import apply_channel_plan
from edgeadapt.pruning.plan import PlanError, PruningPlan

KIND = "pruned-model"
VERSION = 1
WEIGHTS = "model.safetensors"


def check_saveable(adapter: ModelAdapter, what: str) -> None:
    """Refuse to save a model edgeadapt cannot rebuild: anything but a Hugging Face
    :class:`~edgeadapt.models.adapter.HFAdapter` (its artifact stores the HF config to rebuild the
    module from). Raises :class:`~edgeadapt.errors.ConfigError` naming ``what`` and the way out."""
    if not isinstance(adapter, (HFAdapter, CNNAdapter)):
        raise ConfigError(
            f"{what}: {type(adapter).__name__} is a custom model adapter, and edgeadapt artifacts are "
            "rebuilt from a Hugging Face config (weights are never pickled), so it cannot be saved. "
            "Keep a custom model's LoRA-merged model, knowledge base and proxies in memory (the whole "
            "offline -> online -> sync loop runs on them), save its weights yourself with "
            "safetensors.torch.save_model(adapter.model, path), or wrap a Hugging Face model instead")


def save_pruned(adapter: HFAdapter, directory: str | Path, config: dict | None = None) -> Path:
    """Write ``adapter``'s model (pruned or not) to ``directory``; ``config`` is recorded as the
    producing configuration. Returns the directory."""
    check_saveable(adapter, "save_pruned")
    directory = Path(directory)
    # a CNN's plan is a ChannelPlan (kept channels per group); a transformer's a PruningPlan
    plan = current_channel_plan(adapter) if isinstance(adapter, CNNAdapter) else current_plan(adapter)
    # staged beside ``directory`` and swapped in by renames: a kill mid-write leaves the previous
    # artifact (or nothing) in place, never a half-written one
    with replacing_dir(directory) as staged:
        atomic_write_with(staged / WEIGHTS, lambda tmp: save_model(adapter.model, str(tmp)))
        atomic_write_text(staged / "base_config.json", adapter.base_config.to_json_string())
        plan.save(staged / "plan.json")
        files = [WEIGHTS, "base_config.json", "plan.json"]
        if adapter.tokenizer is not None:
            adapter.tokenizer.save_pretrained(staged / "tokenizer")
            files += [f"tokenizer/{p.name}" for p in sorted((staged / "tokenizer").iterdir())]
        write_manifest(staged, KIND, VERSION, files,
                       base={"name": adapter.name, "hash": adapter.base_hash(),
                             "architecture": adapter.fingerprint(), "class": type(adapter.model).__name__},
                       plan_summary=plan.summary(), config=config or {})
    return directory


def load_pruned(directory: str | Path) -> HFAdapter:
    """Rebuild a model saved by :func:`save_pruned`, verifying kind, version, hashes and shapes."""
    import transformers

    from edgeadapt.models.registry import build_from_config, task_of, wrap

    directory = Path(directory)
    manifest = read_manifest(directory, KIND, VERSION)
    base = manifest["base"]
    config_dict = json.loads((directory / "base_config.json").read_text())
    config = transformers.AutoConfig.for_model(**config_dict)
    model = build_from_config(config, task_of(base["class"]))
    tokenizer = None
    if (directory / "tokenizer").is_dir():
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory / "tokenizer")
    adapter = wrap(model, tokenizer, base["name"], base_hash=base["hash"])
    if adapter.fingerprint() != base["architecture"]:
        raise ArtifactError(f"{directory}: base_config.json does not match the manifest's architecture")
    try:
        if isinstance(adapter, CNNAdapter):
            apply_channel_plan(adapter, ChannelPlan.load(directory / "plan.json"))
        else:
            apply_plan(adapter, PruningPlan.load(directory / "plan.json"))
    except PlanError as exc:
        raise ArtifactError(f"{directory}: plan.json does not fit its base model: {exc}") from None
    match_stored_dtypes(adapter.model, directory / WEIGHTS)  # a bf16/fp16 artifact reloads in its dtype
    try:
        missing, unexpected = load_safetensors_into(adapter.model, str(directory / WEIGHTS), strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ArtifactError(f"{directory}: weights do not match the pruned architecture "
                            f"({str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc})") from None
    if missing or unexpected:
        raise ArtifactError(f"{directory}: weights do not match the pruned architecture "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    adapter.model.eval()
    return adapter


def load_model(model: str | Path) -> HFAdapter:
    """Any model a command accepts: an edgeadapt model artifact directory (has ``manifest.json``;
    verified and rebuilt by :func:`load_pruned`), a local Hugging Face directory, or a built-in
    name (:func:`~edgeadapt.models.registry.load_adapter`).

    Raises :class:`~edgeadapt.errors.ArtifactError` for a broken artifact and
    :class:`~edgeadapt.errors.ConfigError` for an unknown name."""
    path = Path(model)
    if (path / "manifest.json").is_file():
        return load_pruned(model)
    if path.is_dir() and not (path / "config.json").is_file() and any(path.iterdir()):
        # an edgeadapt artifact whose manifest is gone (a killed write) is not a HF directory gone wrong
        raise ArtifactError(f"{path} is not a model: no manifest.json (an edgeadapt artifact; an "
                            "interrupted write leaves none — re-create it) and no config.json (a Hugging "
                            "Face model directory)")
    return load_adapter(str(model))
