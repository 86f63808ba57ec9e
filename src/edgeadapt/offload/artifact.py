"""The descendants artifact: every block of a chain at every width, saved and rebuilt verified.

A directory with ``descendants.safetensors`` (block ``b`` at width index ``w`` under ``b{b}.w{w}.``),
``plans/width-{w}.json`` (how width ``w`` was cut from the base model: a channel plan or a pruning
plan), ``base_config.json`` and ``manifest.json`` (kind ``offload-descendants``: base identity,
block names, widths, distillation losses, the producing config, file hashes). Loading rebuilds the
base architecture from its config, applies each plan to a copy and loads the weights strictly.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import transformers
from safetensors.torch import load_file, save_file
from torch import nn

from edgeadapt.artifacts import (
    atomic_write_text,
    atomic_write_with,
    read_manifest,
    replacing_dir,
    write_manifest,
)
from edgeadapt.errors import ArtifactError, PlanError
from edgeadapt.models.cnn import CNNAdapter
from edgeadapt.models.registry import build_from_config, task_of, wrap
from edgeadapt.offload.blocks import Descendants, apply_width_plan, block_modules
from edgeadapt.pruning.channel_plan import ChannelPlan
from edgeadapt.pruning.plan import PruningPlan

KIND = "offload-descendants"
VERSION = 1
WEIGHTS = "descendants.safetensors"


def _key(block: int, width_index: int) -> str:
    return f"b{block}.w{width_index}."


def save_descendants(desc: Descendants, directory: str | Path, config: dict[str, Any] | None = None) -> Path:
    """Write ``desc`` as an artifact: ``descendants.safetensors`` (every block at every width),
    ``plans/width-{i}.json`` (how width ``i`` was cut from the base), ``base_config.json`` and a
    manifest (kind ``offload-descendants``: base identity, block names, widths, distillation losses,
    ``config``), atomically (staged and swapped in). Returns the directory."""
    directory = Path(directory)
    state = {_key(b, w) + k: v.detach().contiguous().clone()
             for b, row in enumerate(desc.modules) for w, m in enumerate(row)
             for k, v in m.state_dict().items()}
    with replacing_dir(directory) as staged:
        atomic_write_with(staged / WEIGHTS, lambda tmp: save_file(state, str(tmp)))
        atomic_write_text(staged / "base_config.json", json.dumps(desc.base_config, indent=1, default=str))
        (staged / "plans").mkdir()
        files = [WEIGHTS, "base_config.json"]
        for i, plan in enumerate(desc.plans):
            plan.save(staged / "plans" / f"width-{i}.json")
            files.append(f"plans/width-{i}.json")
        write_manifest(staged, KIND, VERSION, files, base=desc.base, blocks=desc.names,
                       widths=list(desc.widths), losses=desc.losses, config=config or {})
    return directory


def load_descendants(directory: str | Path) -> Descendants:
    """Rebuild what :func:`save_descendants` wrote: the base architecture from its config, each width
    by applying its plan to a copy, then the stored weights (every tensor must match: no missing or
    extra key, same shapes). Kind, version and file hashes are verified; any mismatch is an
    :class:`~edgeadapt.errors.ArtifactError`."""
    directory = Path(directory)
    manifest = read_manifest(directory, KIND, VERSION)
    base, widths, names = manifest["base"], tuple(manifest["widths"]), list(manifest["blocks"])
    config_dict = json.loads((directory / "base_config.json").read_text())
    model = build_from_config(transformers.AutoConfig.for_model(**config_dict), task_of(base["class"]))
    adapter = wrap(model, None, base["name"], base_hash=base["hash"])
    if adapter.fingerprint() != base["architecture"]:
        raise ArtifactError(f"{directory}: base_config.json does not match the manifest's architecture")
    state = load_file(str(directory / WEIGHTS))
    modules: list[list[nn.Module]] = [[] for _ in names]
    plans = []
    for i in range(len(widths)):
        work = copy.deepcopy(adapter)
        path = directory / "plans" / f"width-{i}.json"
        try:
            plan = ChannelPlan.load(path) if isinstance(adapter, CNNAdapter) else PruningPlan.load(path)
            apply_width_plan(work, plan)
        except PlanError as exc:
            raise ArtifactError(f"{path} does not fit the base model: {exc}") from None
        plans.append(plan)
        got_names, blocks = block_modules(work)
        if got_names != names:
            raise ArtifactError(f"{directory}: the manifest's blocks {names} are not the model's {got_names}")
        for b, module in enumerate(blocks):
            prefix = _key(b, i)
            own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            try:
                module.load_state_dict(own, strict=True)
            except RuntimeError as exc:
                raise ArtifactError(f"{directory}: weights of block {names[b]} at width {widths[i]} do not "
                                    f"match its plan ({str(exc).splitlines()[0]})") from None
            modules[b].append(module.eval())
    return Descendants(names, widths, modules, plans, base, config_dict,
                       {k: list(v) for k, v in manifest.get("losses", {}).items()})
