"""The descendants artifact: every block of a chain at every width, saved and rebuilt verified.

A directory with ``descendants.safetensors`` (block ``b`` at width index ``w`` under ``b{b}.w{w}.``),
``plans/width-{w}.json`` (how width ``w`` was cut from the base model: a channel plan or a pruning
plan), ``base_config.json`` and ``manifest.json`` (kind ``offload-descendants``: base identity,
block names, widths, distillation losses, the producing config, file hashes). Loading rebuilds the
base architecture from its config, applies each plan to a copy and loads the weights strictly.

Optionally the chain's early-exit heads (:class:`~edgeadapt.offload.exits.ExitHead`, trained on the
full-width chain): ``exits.safetensors`` (the head after block ``e`` under ``e{e}.``) and the manifest
field ``exits`` (``blocks``, ``features`` per head, ``num_labels``), hashed like every other file.
An artifact written without them (or before they existed) loads with no exits
(:func:`load_exit_heads` returns ``[]``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
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
from edgeadapt.errors import ArtifactError, ConfigError, PlanError
from edgeadapt.models.cnn import CNNAdapter
from edgeadapt.models.registry import build_from_config, task_of, wrap
from edgeadapt.numerics import upcast
from edgeadapt.offload.blocks import Descendants, apply_width_plan, block_modules
from edgeadapt.offload.exits import ExitHead
from edgeadapt.pruning.channel_plan import ChannelPlan
from edgeadapt.pruning.plan import PruningPlan

KIND = "offload-descendants"
VERSION = 1
WEIGHTS = "descendants.safetensors"
EXITS = "exits.safetensors"


def _key(block: int, width_index: int) -> str:
    return f"b{block}.w{width_index}."


def _exit_key(block: int) -> str:
    return f"e{block}."


def save_descendants(desc: Descendants, directory: str | Path, config: dict[str, Any] | None = None,
                     heads: Sequence[ExitHead] = ()) -> Path:
    """Write ``desc`` as an artifact: ``descendants.safetensors`` (every block at every width),
    ``plans/width-{i}.json`` (how width ``i`` was cut from the base), ``base_config.json`` and a
    manifest (kind ``offload-descendants``: base identity, block names, widths, distillation losses,
    ``config``), atomically (staged and swapped in). ``heads`` (``heads[e]`` reads block ``e``'s
    output, as :func:`~edgeadapt.offload.exits.train_exit_heads` returns them; at most one per block
    but the last two) go to ``exits.safetensors`` and the manifest's ``exits``. Returns the directory."""
    directory = Path(directory)
    if len(heads) > max(0, len(desc.names) - 2):
        raise ConfigError(f"{len(heads)} exit heads for a chain of {len(desc.names)} blocks (at most one per "
                        "block but the last two)")
    state = {_key(b, w) + k: v.detach().contiguous().clone()
             for b, row in enumerate(desc.modules) for w, m in enumerate(row)
             for k, v in m.state_dict().items()}
    exit_state = {_exit_key(e) + k: v.detach().contiguous().clone()
                  for e, head in enumerate(heads) for k, v in head.state_dict().items()}
    fields: dict[str, Any] = {}
    if heads:
        fields["exits"] = {"blocks": list(range(len(heads))),
                           "features": [h.linear.in_features for h in heads],
                           "num_labels": heads[0].linear.out_features}
    with replacing_dir(directory) as staged:
        atomic_write_with(staged / WEIGHTS, lambda tmp: save_file(state, str(tmp)))
        atomic_write_text(staged / "base_config.json", json.dumps(desc.base_config, indent=1, default=str))
        (staged / "plans").mkdir()
        files = [WEIGHTS, "base_config.json"]
        for i, plan in enumerate(desc.plans):
            plan.save(staged / "plans" / f"width-{i}.json")
            files.append(f"plans/width-{i}.json")
        if heads:
            atomic_write_with(staged / EXITS, lambda tmp: save_file(exit_state, str(tmp)))
            files.append(EXITS)
        write_manifest(staged, KIND, VERSION, files, base=desc.base, blocks=desc.names,
                       widths=list(desc.widths), losses=desc.losses, config=config or {}, **fields)
    return directory


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, what: str) -> None:
    """Load the tensors of ``state`` under ``prefix`` into ``module`` strictly (no missing or extra
    key, the same shapes); a mismatch is an :class:`ArtifactError` saying ``what`` and why."""
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(own, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{what} ({str(exc).splitlines()[0]})") from None


def load_descendants(directory: str | Path) -> Descendants:
    """Rebuild what :func:`save_descendants` wrote: the base architecture from its config (bf16/fp16
    upcast to float32, as build and serve run it), each width by applying its plan to a copy, then
    the stored weights (every tensor must match: no missing or extra key, same shapes). Kind, version
    and file hashes are verified; any mismatch is an :class:`~edgeadapt.errors.ArtifactError`."""
    directory = Path(directory)
    manifest = read_manifest(directory, KIND, VERSION)
    base, widths, names = manifest["base"], tuple(manifest["widths"]), list(manifest["blocks"])
    config_dict = json.loads((directory / "base_config.json").read_text())
    model = build_from_config(transformers.AutoConfig.for_model(**config_dict), task_of(base["class"]))
    adapter = wrap(model, None, base["name"], base_hash=base["hash"])
    if adapter.fingerprint() != base["architecture"]:
        raise ArtifactError(f"{directory}: base_config.json does not match the manifest's architecture")
    state = load_file(str(directory / WEIGHTS))
    # in float32 whatever the config says, as offload build and serve run them (numerics.upcast): a bf16
    # checkpoint's descendants are distilled and saved in float32, rebuilt in bf16 they would be rounded
    upcast(adapter.model)
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
            _load_strict(module, state, _key(b, i), f"{directory}: weights of block {names[b]} at width "
                         f"{widths[i]} do not match its plan")
            modules[b].append(module.eval())
    return Descendants(names, widths, modules, plans, base, config_dict,
                       {k: list(v) for k, v in manifest.get("losses", {}).items()})


def load_exit_heads(directory: str | Path) -> list[ExitHead]:
    """The exit heads :func:`save_descendants` wrote into ``directory`` (``heads[e]`` reads block
    ``e``'s output, in eval mode), or ``[]`` for an artifact without exits. The manifest is verified
    as for :func:`load_descendants` (kind, version, every file's hash: a modified ``exits.safetensors``
    is refused) and every head's weights load strictly (no missing or extra key, the recorded shapes).
    Raises :class:`~edgeadapt.errors.ArtifactError`."""
    directory = Path(directory)
    manifest = read_manifest(directory, KIND, VERSION)
    spec = manifest.get("exits")
    if spec is None:
        return []
    n = len(manifest.get("blocks", []))
    blocks, features, labels = (spec.get(k) for k in ("blocks", "features", "num_labels")) \
        if isinstance(spec, dict) else (None, None, None)
    if (not isinstance(blocks, list) or not isinstance(features, list) or len(features) != len(blocks)
            or blocks != list(range(len(blocks))) or len(blocks) > max(0, n - 2)
            or not all(isinstance(f, int) and f > 0 for f in features)
            or not isinstance(labels, int) or labels < 1):
        raise ArtifactError(f"{directory}/manifest.json: malformed 'exits' {spec!r} (blocks 0..k-1 of a "
                            f"chain of {n}, a positive feature count each, num_labels); re-create it")
    if EXITS not in manifest["files"]:
        raise ArtifactError(f"{directory}/manifest.json lists exits but not {EXITS}, so they cannot be "
                            "verified; re-create the artifact")
    state = load_file(str(directory / EXITS))
    heads = []
    for e, f in zip(blocks, features):
        head = ExitHead(f, labels)
        _load_strict(head, state, _exit_key(e),
                     f"{directory}: weights of the exit after block {e} do not match the manifest")
        heads.append(head.eval())
    extra = [k for k in state if not any(k.startswith(_exit_key(e)) for e in blocks)]
    if extra:
        raise ArtifactError(f"{directory}/{EXITS} holds tensors of no listed exit: {extra[:3]}")
    return heads
