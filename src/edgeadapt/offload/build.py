"""One call from a model and a dataset to what placement needs: descendants (distilled, saved as an
artifact) and their profile on a set of devices.

``out/descendants/`` is the :func:`~edgeadapt.offload.artifact.save_descendants` artifact,
``out/profile.json`` the :class:`~edgeadapt.offload.profile.ChainProfile` (devices included).

>>> desc, prof = build_offload(OffloadBuildConfig("runs/resnet-digits"), "runs/offload")  # doctest: +SKIP
>>> solve(prof.problem(bandwidth=10e6 / 8, rtt_s=0.02), floor=0.95)                      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeadapt.data.registry import build_dataset, dataset_info, options_at_size
from edgeadapt.errors import ConfigError
from edgeadapt.numerics import upcast
from edgeadapt.offload.artifact import save_descendants
from edgeadapt.offload.blocks import WIDTHS, Descendants, distill, make_descendants
from edgeadapt.offload.profile import EMULATED_EDGE, LOCAL_CLOUD, ChainProfile, DeviceProfile, profile_chain
from edgeadapt.pruning.checkpoint import load_model

DESCENDANTS_DIR = "descendants"
PROFILE_FILE = "profile.json"


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
    distillation batch order and the compositions checked."""

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

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "profile_batch_size", "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"offload build: {name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.checks < 0 or self.lr <= 0:
            raise ConfigError("offload build: warmup and checks must be >= 0 and lr > 0")
        if dataset_info(self.data).task != "image-classification":
            raise ConfigError(f"offload build: data {self.data!r} is not an image-classification dataset")


def build_offload(cfg: OffloadBuildConfig, out: str | Path,
                  devices: Sequence[DeviceProfile] = (EMULATED_EDGE, LOCAL_CLOUD),
                  adapter: Any = None) -> tuple[Descendants, ChainProfile]:
    """Make, distill, save and profile the descendants of ``cfg.model`` (or of ``adapter``, already
    loaded and dense) into ``out``; returns them and their profile. A dataset whose class count is
    not the model's is a :class:`~edgeadapt.errors.ConfigError`."""
    adapter = adapter if adapter is not None else load_model(cfg.model)
    if getattr(adapter.config, "image_size", None) is None:
        raise ConfigError(f"offload build: {cfg.model!r} is a {adapter.family} model without an image size; "
                          "offload takes image classifiers (the CNN families or a ViT) — use a model such "
                          "as tiny-resnet or tiny-vit")
    adapter.model.cpu().eval()
    upcast(adapter.model)  # bf16/fp16 checkpoints: distilled, profiled and served in float32 on the CPU
    size = int(adapter.config.image_size)
    splits = build_dataset(cfg.data, **options_at_size(cfg.data, {}, size, "data"))
    labels = int(adapter.config.num_labels)
    if len(splits.val.classes) != labels:
        raise ConfigError(f"offload build: data {cfg.data!r} has {len(splits.val.classes)} classes but "
                          f"{cfg.model!r} has {labels} outputs")
    desc = make_descendants(adapter, cfg.widths)
    pixels = [b["pixel_values"] for b in splits.train.batches(cfg.batch_size, shuffle=True, seed=cfg.seed)]
    distill(desc, pixels, cfg.epochs, cfg.lr)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_descendants(desc, out / DESCENDANTS_DIR, config=asdict(cfg))
    profile = profile_chain(desc, list(splits.val.batches(256)), devices, cfg.profile_batch_size,
                            cfg.warmup, cfg.repeats, cfg.checks, seed=cfg.seed)
    profile.save(out / PROFILE_FILE)
    return desc, profile
