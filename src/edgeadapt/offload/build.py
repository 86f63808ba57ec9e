"""One call from a model and a dataset to what placement needs: descendants (distilled, saved as an
artifact) and their profile on a set of devices.

``out/descendants/`` is the :func:`~edgeadapt.offload.artifact.save_descendants` artifact,
``out/profile.json`` the :class:`~edgeadapt.offload.profile.ChainProfile` (devices included). With
``exit_epochs > 0`` the artifact also holds early-exit heads trained on the full-width chain
(:func:`~edgeadapt.offload.exits.train_exit_heads`), and ``out/exits.json`` their accuracy, accuracy
drops per (block, width) on the val split and latency per device at the profile's batch size
(:func:`save_exit_profiles`): what ``offload run --floor`` places with
:func:`~edgeadapt.offload.exits.solve_with_exits`.

>>> desc, prof = build_offload(OffloadBuildConfig("runs/resnet-digits"), "runs/offload")  # doctest: +SKIP
>>> solve(prof.problem(bandwidth=10e6 / 8, rtt_s=0.02), floor=0.95)                      # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeadapt.artifacts import atomic_write_text
from edgeadapt.data.registry import build_dataset, dataset_info, options_at_size
from edgeadapt.errors import ConfigError, PathError
from edgeadapt.numerics import upcast
from edgeadapt.offload.artifact import save_descendants
from edgeadapt.offload.blocks import WIDTHS, Descendants, distill, make_descendants
from edgeadapt.offload.exits import (
    ExitProfile,
    exit_accuracy_drops,
    profile_exits,
    train_exit_heads,
)
from edgeadapt.offload.profile import EMULATED_EDGE, LOCAL_CLOUD, ChainProfile, DeviceProfile, profile_chain
from edgeadapt.pruning.checkpoint import load_model

DESCENDANTS_DIR = "descendants"
PROFILE_FILE = "profile.json"
EXITS_FILE = "exits.json"
EXITS_FORMAT = "edgeadapt.offload-exits"
EXITS_VERSION = 1


def save_exit_profiles(exits: Sequence[ExitProfile], path: str | Path, batch_size: int) -> None:
    """Write ``exits`` (their accuracies, drops, per-device latencies at ``batch_size`` inputs) as
    JSON (format ``edgeadapt.offload-exits``), atomically."""
    data = {"format": EXITS_FORMAT, "version": EXITS_VERSION, "batch_size": int(batch_size),
            "exits": [asdict(ex) for ex in exits]}
    atomic_write_text(Path(path), json.dumps(data, indent=1))


def load_exit_profiles(path: str | Path) -> tuple[int, list[ExitProfile]]:
    """``(batch_size, exits)`` from a :func:`save_exit_profiles` file. Raises
    :class:`~edgeadapt.errors.PathError` when it is missing and :class:`ConfigError` when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise PathError(f"exit profile {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"exit profile {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != EXITS_FORMAT \
            or data.get("version") != EXITS_VERSION:
        raise ConfigError(f"{path} is not an edgeadapt exit profile (format {EXITS_FORMAT!r} version "
                          f"{EXITS_VERSION})")
    try:
        exits = [ExitProfile(int(e["block"]), float(e["accuracy"]),
                             {str(k): float(v) for k, v in e["latency_s"].items()}, int(e["mem_bytes"]),
                             int(e["out_bytes"]), tuple(tuple(float(v) for v in row) for row in e["drops"]))
                 for e in data["exits"]]
        return int(data["batch_size"]), exits
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"malformed exit profile {path}: {exc!r}") from None


def set_image_size(adapter: Any, size: int | None, model: str) -> int:
    """The input side (pixels) ``adapter`` is built at: ``size`` when given — set in its config and its
    base config (what the descendants artifact, hence ``serve`` and ``run``, rebuild the input from) —
    else its config's. A ViT's position embeddings fix its grid: another size is a
    :class:`ConfigError`, as is a side that is not a whole number of its patches."""
    current = int(adapter.config.image_size)
    if size is None:
        return current
    patch = getattr(adapter.config, "patch_size", None)
    if patch is not None:  # ViT: one position embedding per patch of the grid it was trained on
        patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
        if size % patch or size != current:
            raise ConfigError(f"--image-size {size}: {model!r} is a ViT of {current}x{current} images in "
                              f"{patch}x{patch} patches (one position embedding per patch), so it takes "
                              f"only --image-size {current}; drop the flag or give {current}")
        return current
    adapter.config.image_size = size
    adapter.base_config.image_size = size
    return size


@dataclass(frozen=True)
class OffloadBuildConfig:
    """How descendants are made and profiled.

    ``model``: a built-in name, a local Hugging Face directory or an edgeadapt model artifact (a
    trained one: descendants of a random model are meaningless). ``data``: a registered
    image-classification dataset, loaded at the model's input size; its train split feeds
    distillation (no labels used), its val split the accuracy drops. ``widths``: shares of each
    block's inner units kept (1.0 required). ``epochs``, ``lr``, ``batch_size``: block-wise
    distillation (Adam). ``profile_batch_size``: the request size latencies are measured at
    (1 = latency-bound, e.g. 128 = resource-bound). ``warmup``, ``repeats``: latency timing.
    ``checks``: random compositions measured against the additive accuracy model. ``seed``:
    distillation batch order and the compositions checked. ``exit_epochs``: epochs training the
    early-exit heads on the full-width chain (0: none; the CLI defaults it to ``epochs``);
    ``exit_lr``: their Adam learning rate. ``image_size``: the input side (pixels) the model is built,
    distilled, profiled and served at (``None``: the model config's ``image_size``; a CNN whose config
    names none assumes 224 — pass the size it was trained at); a ViT takes only its own size (its
    position embeddings are one per patch of that grid)."""

    model: str
    data: str = "digits"
    widths: tuple[float, ...] = WIDTHS
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    profile_batch_size: int = 1
    warmup: int = 3
    repeats: int = 10
    checks: int = 8
    seed: int = 0
    exit_epochs: int = 0
    exit_lr: float = 1e-2
    image_size: int | None = None

    def __post_init__(self) -> None:
        if self.image_size is not None and (isinstance(self.image_size, bool)
                                            or not isinstance(self.image_size, int) or self.image_size < 1):
            raise ConfigError(f"offload build: image_size must be a positive number of pixels, got "
                              f"{self.image_size!r}")
        for name in ("epochs", "batch_size", "profile_batch_size", "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"offload build: {name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.checks < 0 or self.lr <= 0:
            raise ConfigError("offload build: warmup and checks must be >= 0 and lr > 0")
        if self.exit_epochs < 0 or self.exit_lr <= 0:
            raise ConfigError(f"offload build: exit_epochs must be >= 0 (0: no exits) and exit_lr > 0, got "
                              f"{self.exit_epochs}, {self.exit_lr}")
        if dataset_info(self.data).task != "image-classification":
            raise ConfigError(f"offload build: data {self.data!r} is not an image-classification dataset")


def build_offload(cfg: OffloadBuildConfig, out: str | Path,
                  devices: Sequence[DeviceProfile] = (EMULATED_EDGE, LOCAL_CLOUD),
                  adapter: Any = None) -> tuple[Descendants, ChainProfile]:
    """Make, distill, save and profile the descendants of ``cfg.model`` (or of ``adapter``, already
    loaded and dense) into ``out``; returns them and their profile. With ``cfg.exit_epochs`` also
    train, save and profile exit heads (module doc; :func:`build_exits` gives them back). A dataset
    whose class count is not the model's is a :class:`~edgeadapt.errors.ConfigError`."""
    desc, profile, _ = build_exits(cfg, out, devices, adapter)
    return desc, profile


def build_exits(cfg: OffloadBuildConfig, out: str | Path,
                devices: Sequence[DeviceProfile] = (EMULATED_EDGE, LOCAL_CLOUD),
                adapter: Any = None) -> tuple[Descendants, ChainProfile, list[ExitProfile]]:
    """:func:`build_offload`, returning the exit profiles too (``[]`` when ``cfg.exit_epochs`` is 0)."""
    adapter = adapter if adapter is not None else load_model(cfg.model)
    if getattr(adapter.config, "image_size", None) is None:
        raise ConfigError(f"offload build: {cfg.model!r} is a {adapter.family} model without an image size; "
                          "offload takes image classifiers (the CNN families or a ViT) — use a model such "
                          "as tiny-resnet or tiny-vit")
    adapter.model.cpu().eval()
    upcast(adapter.model)  # bf16/fp16 checkpoints: distilled, profiled and served in float32 on the CPU
    size = set_image_size(adapter, cfg.image_size, cfg.model)
    splits = build_dataset(cfg.data, **options_at_size(cfg.data, {}, size, "data"))
    labels = int(adapter.config.num_labels)
    if len(splits.val.classes) != labels:
        raise ConfigError(f"offload build: data {cfg.data!r} has {len(splits.val.classes)} classes but "
                          f"{cfg.model!r} has {labels} outputs")
    desc = make_descendants(adapter, cfg.widths)
    train = list(splits.train.batches(cfg.batch_size, shuffle=True, seed=cfg.seed))
    distill(desc, [b["pixel_values"] for b in train], cfg.epochs, cfg.lr)
    full = desc.chain([1.0] * len(desc.names))
    heads = []
    if cfg.exit_epochs:
        heads = train_exit_heads(full, train, labels, cfg.exit_epochs, cfg.exit_lr, cfg.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_descendants(desc, out / DESCENDANTS_DIR, config=asdict(cfg), heads=heads)
    val = list(splits.val.batches(256))
    measured: dict[tuple[float, ...], float] = {}  # each composition traced once for the exits and the chain
    if heads:
        accuracies, drops = exit_accuracy_drops(desc, heads, val, measured=measured)
    profile = profile_chain(desc, val, devices, cfg.profile_batch_size, cfg.warmup, cfg.repeats, cfg.checks,
                            seed=cfg.seed, measured=measured)
    exits: list[ExitProfile] = []
    if heads:
        x = val[0]["pixel_values"][:cfg.profile_batch_size]
        exits = profile_exits(full, heads, accuracies, x, devices, cfg.warmup, cfg.repeats, drops=drops)
    (out / EXITS_FILE).unlink(missing_ok=True)  # --overwrite without exits: no stale exit profile
    profile.save(out / PROFILE_FILE)
    if exits:
        save_exit_profiles(exits, out / EXITS_FILE, profile.batch_size)
    return desc, profile, exits
