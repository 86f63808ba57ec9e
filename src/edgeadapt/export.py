"""Export an edgeadapt model to a plain Hugging Face checkpoint (``edgeadapt export --format hf``).

An edgeadapt artifact stores the *base* config and a plan because a pruned model may keep a
different number of heads or FFN neurons in every layer, which one Hugging Face config cannot say.
When every layer kept the same widths (dropped layers are fine: the rest are renumbered), the model
*is* an ordinary transformers model of a smaller config; :func:`export_hf` writes that config
truthfully (layers, heads, key/value heads, FFN width, and ``head_dim`` where the family reads it)
with the weights through ``save_pretrained`` (safetensors), so
``transformers.AutoModelFor...from_pretrained(DIR)`` rebuilds it with no missing or unexpected keys
and the same outputs. Everything else is refused before anything is written, saying why
(:class:`~edgeadapt.errors.ArtifactError`):

* widths that differ per layer (plain transformers builds every layer alike);
* pruned heads in a family that derives the head width as ``hidden_size / num_heads`` and has no
  config field for it (BERT, GPT-2, OPT in transformers 5), found by building the new config's
  model on the ``meta`` device and comparing every weight shape with the pruned model's.

The directory is written next to ``out`` under a temp name, checked (reloaded with the task's
``Auto`` class and run on a fixed input, unless ``verify=False``) and renamed into place, so a
kill never leaves a half-written export; ``out`` must be missing or empty unless ``overwrite``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from edgeadapt.artifacts import atomic_write_text
from edgeadapt.errors import ArtifactError, ConfigError, OutputExistsError
from edgeadapt.models.adapter import HFAdapter
from edgeadapt.models.cnn import CNNAdapter
from edgeadapt.models.registry import task_of
from edgeadapt.numerics import max_error
from edgeadapt.outputs import check_output_dir
from edgeadapt.progress import bar_enabled
from edgeadapt.pruning.checkpoint import load_model
from edgeadapt.rundir import OutputLock

FORMATS = ("hf",)
# transformers' Auto class per task (registry.task_of names the task from the model class)
AUTO_CLASSES = {"causal-lm": "AutoModelForCausalLM",
                "sequence-classification": "AutoModelForSequenceClassification",
                "image-classification": "AutoModelForImageClassification", "encoder": "AutoModel"}
PROVENANCE = "edgeadapt-export.json"
TMP_SUFFIX = ".export-tmp"


@dataclass(frozen=True)
class LayerWidths:
    """What one block kept: query heads, key/value heads, head width and FFN neurons."""

    heads: int
    kv_heads: int
    head_dim: int
    ffn: int


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_hf` wrote: the directory, the transformers class and Auto class that load it,
    the kept layer count and per-layer widths, and the largest output difference measured against
    the edgeadapt model (``None`` when not verified)."""

    out: Path
    architecture: str
    auto_class: str
    layers: int
    widths: LayerWidths | None
    max_abs_diff: float | None

    def summary(self) -> str:
        w = self.widths
        layers = f"{self.layers} layer{'s' if self.layers != 1 else ''}"
        shape = (f"{layers}, {w.heads} heads ({w.kv_heads} KV) x head_dim {w.head_dim}, "
                 f"FFN {w.ffn}") if w else layers
        check = "" if self.max_abs_diff is None else f"; reloaded outputs differ by {self.max_abs_diff:.2g}"
        return (f"{self.architecture} ({shape}) -> {self.out}{check}; load it with "
                f"transformers.{self.auto_class}.from_pretrained({str(self.out)!r})")


def layer_widths(adapter: HFAdapter) -> list[LayerWidths]:
    """Per-block widths read from the live (possibly pruned) weights."""
    return [LayerWidths(b.attention.num_heads, b.attention.num_kv_heads, b.attention.head_dim, b.mlp.width)
            for b in adapter.blocks()]


def _ranges(layers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"layers 0-2, 5"``."""
    parts: list[str] = []
    start = prev = layers[0]
    for i in [*layers[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ("layer " if len(layers) == 1 else "layers ") + ", ".join(parts)


def uniform_widths(widths: list[LayerWidths], source: str) -> LayerWidths | None:
    """The one width every layer shares (``None`` when no layer is left).

    Raises :class:`ArtifactError` naming, per quantity that differs, which layers keep what, why
    plain transformers cannot build the model, and how to load it with edgeadapt instead."""
    if not widths:
        return None
    differ = []
    for name, label in (("heads", "attention heads"), ("kv_heads", "key/value heads"),
                        ("head_dim", "head width"), ("ffn", "FFN neurons")):
        values: dict[int, list[int]] = {}
        for i, w in enumerate(widths):
            values.setdefault(getattr(w, name), []).append(i)
        if len(values) > 1:
            differ.append(f"{label}: " + ", ".join(f"{v} in {_ranges(ls)}" for v, ls in values.items()))
    if differ:
        raise ArtifactError(
            f"{source} cannot be exported as a plain Hugging Face checkpoint: its layers kept different "
            f"widths ({'; '.join(differ)}), and a transformers config has one value of each for every "
            "layer, so transformers would build every layer alike and the weights would not fit. Use the "
            f"edgeadapt artifact itself: edgeadapt.pruning.checkpoint.load_model({source!r}) rebuilds it "
            "(and every edgeadapt command accepts the directory), or prune with --scope uniform (the same "
            "fraction in every layer) to get an exportable model")
    return widths[0]


def hf_config(adapter: HFAdapter, widths: LayerWidths | None) -> Any:
    """A copy of the model's config that states its real structure: the kept layer count, heads,
    key/value heads and FFN width, and ``head_dim`` when the family's config already has one or the
    width is no longer ``hidden_size / heads`` (a family that ignores it is caught by
    :func:`check_shapes`)."""
    spec = adapter.spec
    config = copy.deepcopy(adapter.model.config)
    layers = adapter.model.get_submodule(adapter.layers_path())
    setattr(config, spec.layers_key, len(layers))
    if widths is None:
        return config
    setattr(config, spec.heads_key, widths.heads)
    if spec.kv_heads_key:
        setattr(config, spec.kv_heads_key, widths.kv_heads)
    setattr(config, spec.ffn_key, widths.ffn)
    hidden = getattr(config, spec.hidden_key)
    if getattr(config, "head_dim", None) is not None or hidden != widths.heads * widths.head_dim:
        config.head_dim = widths.head_dim
    return config


def check_shapes(adapter: HFAdapter, config: Any, widths: LayerWidths | None, source: str) -> None:
    """Build ``type(adapter.model)`` for ``config`` on the meta device (no memory) and refuse
    (:class:`ArtifactError`) unless it has exactly the pruned model's weight names and shapes."""
    cls = type(adapter.model)
    with torch.device("meta"):
        probe = cls._from_config(copy.deepcopy(config))
    want = {k: tuple(v.shape) for k, v in adapter.model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    problems = [f"{k}: pruned {list(want[k])} vs config {list(got[k])}" for k in want
                if k in got and want[k] != got[k]]
    problems += [f"{k} only in the pruned model" for k in want if k not in got]
    problems += [f"{k} only in the config's model" for k in got if k not in want]
    if not problems:
        return
    spec = adapter.spec
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    hidden = getattr(config, spec.hidden_key)
    why = ""
    if widths is not None and widths.heads * widths.head_dim != hidden:
        why = (f" transformers' {cls.__name__} derives the head width from the config as "
               f"{spec.hidden_key} / {spec.heads_key} = {hidden} / {widths.heads} = {hidden // widths.heads} "
               f"and reads no head_dim, so no config can describe {widths.heads} heads of width "
               f"{widths.head_dim} (pruned heads). Prune only neurons and layers (--target neurons,layers) "
               "for an exportable model, or")
    raise ArtifactError(
        f"{source} cannot be exported as a plain Hugging Face checkpoint: the weights do not fit the "
        f"model a config can describe ({shown}).{why or ' Instead,'} use the edgeadapt artifact itself: "
        f"edgeadapt.pruning.checkpoint.load_model({source!r}) rebuilds it, and every edgeadapt command "
        "accepts the directory")


def _sample_input(adapter: HFAdapter) -> dict[str, torch.Tensor]:
    """A fixed input of the model's modality: two 16×... images or two 16-token sequences."""
    config = adapter.model.config
    g = torch.Generator().manual_seed(0)
    if adapter.modality == "image":
        shape = (2, config.num_channels, config.image_size, config.image_size)
        return {"pixel_values": torch.randn(shape, generator=g)}
    positions = next((getattr(config, k) for k in ("max_position_embeddings", "n_positions")
                      if isinstance(getattr(config, k, None), int)), 16)
    length = max(1, min(16, positions))
    return {"input_ids": torch.randint(0, config.vocab_size, (2, length), generator=g),
            "attention_mask": torch.ones(2, length, dtype=torch.long)}


@torch.no_grad()
def verify_export(adapter: HFAdapter, directory: Path, auto_class: str) -> float:
    """Reload ``directory`` with ``transformers.<auto_class>`` and return the largest absolute
    difference of its first output from the edgeadapt model's on :func:`_sample_input`.

    Raises ``RuntimeError`` (an exporter bug, not a user error) on missing, unexpected or
    mismatched keys or a difference above the dtype's tolerance
    (:func:`edgeadapt.numerics.max_error`)."""
    loaded, info = getattr(transformers, auto_class).from_pretrained(directory, output_loading_info=True)
    bad = {k: v for k, v in info.items() if k != "error_msgs" and v}
    if bad or info.get("error_msgs"):
        raise RuntimeError(f"export check failed: {directory} reloads with {bad or info['error_msgs']}")
    loaded.eval()
    adapter.model.eval()
    batch = _sample_input(adapter)
    device = next(adapter.model.parameters()).device
    ours = adapter.model(**{k: v.to(device) for k, v in batch.items()})[0].float().cpu()
    theirs = loaded(**batch)[0].float()
    dtype = next(adapter.model.parameters()).dtype
    diff, allowed = max_error(ours, theirs, dtype, depth=max(1, len(adapter.blocks())))
    if not diff <= allowed:
        raise RuntimeError(f"export check failed: {directory} gives outputs {diff:.3g} away from the "
                           f"edgeadapt model (tolerance {allowed:.3g} for {dtype})")
    return diff


@contextmanager
def _transformers_bars() -> Iterator[None]:
    """Let transformers draw its save/load bars only where edgeadapt would draw one (a terminal,
    not ``--quiet``), and restore its setting afterwards."""
    logging = transformers.utils.logging
    was = logging.is_progress_bar_enabled()
    if not bar_enabled():
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def _public_dir_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def check_export_out(out: str | Path, artifact: str | Path, overwrite: bool, field: str = "out") -> Path:
    """Refuse, before compute, an ``out`` that cannot be written (a file, an unwritable parent), that
    is or contains the source, or that is a non-empty directory without ``overwrite``."""
    path = check_output_dir(out, field)
    src = Path(artifact).expanduser()
    if src.exists():
        a, o = src.resolve(), path.resolve()
        if a == o or a.is_relative_to(o) or o.is_relative_to(a):
            raise ConfigError(f"{field}: {str(path)!r} is or contains the source {str(artifact)!r} (or lies "
                              "inside it); write the export to another directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(f"{field}: {str(path)!r} is not empty; pass --overwrite (overwrite=True) to "
                                "replace what is there, or choose a new directory")
    return path


def _clean_stale(out: Path) -> None:
    """Remove temp directories a killed export to ``out`` left beside it."""
    for tmp in out.parent.glob(f".{out.name}.*{TMP_SUFFIX}"):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` onto ``out``: a missing or empty ``out`` is replaced in one rename;
    a full one (``overwrite``) is first moved aside, then removed once the new one is in place."""
    os.chmod(tmp, _public_dir_mode())
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old.", suffix=TMP_SUFFIX))
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def export_hf(artifact: str | Path, out: str | Path, *, overwrite: bool = False, verify: bool = True,
              field: str = "out") -> ExportResult:
    """Write ``artifact`` (an edgeadapt model artifact, a local Hugging Face directory or a built-in
    name) to ``out`` as a plain Hugging Face checkpoint: ``config.json`` that states the pruned
    structure, ``model.safetensors``, the tokenizer if there is one, and ``edgeadapt-export.json``
    (where it came from). ``verify`` reloads it with the task's Auto class and compares outputs.

    ``out`` is checked and locked before the model is loaded: it must be missing or empty unless
    ``overwrite`` (:class:`~edgeadapt.errors.OutputExistsError`); ``field`` names it in messages.
    Raises :class:`~edgeadapt.errors.ArtifactError` when the model cannot be a plain checkpoint
    (widths that differ per layer; pruned heads in a family without a head_dim field).

    >>> export_hf("runs/pruned", "runs/pruned-hf").auto_class  # doctest: +SKIP
    'AutoModelForCausalLM'
    """
    source = str(artifact)
    path = check_export_out(out, artifact, overwrite, field)
    with OutputLock(path, field):
        path = check_export_out(path, artifact, overwrite, field)  # another run may have written it
        _clean_stale(path)
        adapter = load_model(artifact)
        if isinstance(adapter, CNNAdapter):
            state = "channel-pruned" if adapter.plan is not None and not adapter.plan.is_dense() else "dense"
            raise ConfigError(
                f"{source} is a {state} {adapter.family} CNN: transformers' {adapter.family} config has one "
                "width per stage, so per-layer channel counts left by channel pruning cannot be a plain "
                "Hugging Face checkpoint. Load it with edgeadapt (edgeadapt.pruning.checkpoint.load_model "
                "rebuilds it from its base config and channel plan)" +
                (f", or for the dense model call save_pretrained on {source}'s transformers model"
                 if state == "dense" else ""))
        if not isinstance(adapter, HFAdapter):
            raise ConfigError(f"{source} is not a Hugging Face model, so it has no Hugging Face checkpoint")
        widths = uniform_widths(layer_widths(adapter), source)
        config = hf_config(adapter, widths)
        check_shapes(adapter, config, widths, source)
        auto_class = AUTO_CLASSES[task_of(type(adapter.model).__name__)]
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX))
        original = adapter.model.config
        try:
            with _transformers_bars():
                adapter.model.config = config
                try:
                    adapter.model.save_pretrained(tmp)
                finally:
                    adapter.model.config = original
                if adapter.tokenizer is not None:
                    adapter.tokenizer.save_pretrained(tmp)
                atomic_write_text(tmp / PROVENANCE, json.dumps(
                    {"source": source, "base": {"name": adapter.name, "hash": adapter.base_hash()},
                     "plan": adapter.plan.summary() if adapter.plan is not None else "dense",
                     "auto_class": auto_class, "widths": asdict(widths) if widths else None},
                    indent=1, sort_keys=True))
                diff = verify_export(adapter, tmp, auto_class) if verify else None
            _publish(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    layers = getattr(config, adapter.spec.layers_key)
    return ExportResult(path, type(adapter.model).__name__, auto_class, layers, widths, diff)
