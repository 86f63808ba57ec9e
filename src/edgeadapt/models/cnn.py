"""CNN families (transformers' ResNet, RegNet, MobileNetV2, MobileViT) behind the adapter seam.

Convolutional networks have no attention heads or FFN neurons, so the transformer parts of
:class:`~edgeadapt.models.adapter.ModelAdapter` (``blocks``, ``set_attention_units``,
``set_layers``, ``layers_path``) refuse with a :class:`~edgeadapt.errors.ConfigError` that names
the alternative: channel pruning (:mod:`edgeadapt.pruning.channels`). What they do have is an
ordered chain of top-level blocks, :meth:`CNNAdapter.stages` — the unit the memory planner freezes
and checkpoints, and the later split points of offloading.

Each family is one :class:`CNNSpec` row (a data table, like the transformer ``ArchSpec`` ones):
where its chain of blocks lives and where its classifier is. ``RegNet`` with ``layer_type="x"``
is the ResNeXt design (grouped 3×3 bottlenecks); transformers has no ResNeXt class.

>>> adapter = load_adapter("tiny-resnet")   # doctest: +SKIP
>>> adapter.stages()[:2]                    # doctest: +SKIP
['resnet.embedder', 'resnet.encoder.stages.0.layers.0']
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import BaseIdentity, TaskMethods
from edgeadapt.models.tasks import Classification, Task


@dataclass(frozen=True)
class CNNSpec:
    """Where one CNN family keeps its parts.

    ``chain`` lists the top-level blocks in forward order, relative to the base model
    (``model.base_model``); an entry ending in ``.*`` stands for every child of that container,
    in order, and may nest (``encoder.stages.*.layers.*``). ``head`` is the classifier's final
    ``nn.Linear``, from the model root (its input is the feature point). ``classes`` maps a task
    name to the transformers class that builds it."""

    family: str
    model_types: tuple[str, ...]
    chain: tuple[str, ...]
    head: str
    classes: Mapping[str, str] = field(default_factory=dict)
    modality: str = "image"


CNN_FAMILIES: tuple[CNNSpec, ...] = (
    CNNSpec("resnet", ("resnet",), ("embedder", "encoder.stages.*.layers.*"), "classifier.1",
            {"image-classification": "ResNetForImageClassification", "encoder": "ResNetModel"}),
    CNNSpec("regnet", ("regnet",), ("embedder", "encoder.stages.*.layers.*"), "classifier.1",
            {"image-classification": "RegNetForImageClassification", "encoder": "RegNetModel"}),
    CNNSpec("mobilenet_v2", ("mobilenet_v2",), ("conv_stem", "layer.*", "conv_1x1"), "classifier",
            {"image-classification": "MobileNetV2ForImageClassification", "encoder": "MobileNetV2Model"}),
    CNNSpec("mobilevit", ("mobilevit",), ("conv_stem", "encoder.layer.*", "conv_1x1_exp"), "classifier",
            {"image-classification": "MobileViTForImageClassification", "encoder": "MobileViTModel"}),
)
_BY_MODEL_TYPE: dict[str, CNNSpec] = {mt: s for s in CNN_FAMILIES for mt in s.model_types}

DEFAULT_IMAGE_SIZE = 224
"""Input side assumed for a CNN whose config names none (transformers' ResNet and RegNet configs have
no ``image_size``; their checkpoints were trained at ImageNet's 224×224)."""


def cnn_family(model_type: str) -> CNNSpec | None:
    """The :class:`CNNSpec` for ``model_type``, or ``None`` when it is not a CNN family."""
    return _BY_MODEL_TYPE.get(model_type)


def cnn_model_types() -> list[str]:
    """Every CNN model type edgeadapt adapts, sorted."""
    return sorted(_BY_MODEL_TYPE)


def cnn_class(spec: CNNSpec, task: str) -> Any:
    """The transformers class of ``spec`` for ``task``; a :class:`ConfigError` for a task it lacks."""
    import transformers

    if task not in spec.classes:
        raise ConfigError(f"family {spec.family!r} has no {task!r} variant; it supports "
                          f"{', '.join(spec.classes)}")
    return getattr(transformers, spec.classes[task])


@torch.no_grad()
def init_from_scratch(model: nn.Module) -> nn.Module:
    """Re-initialise a random CNN for training from scratch (the torchvision ResNet scheme):
    Kaiming-normal convolutions (fan-out, ReLU gain), BatchNorm scale 1 and shift 0, classifier
    ``N(0, 0.01)`` with zero bias. transformers' own init for MobileNetV2/MobileViT (``N(0, 0.02)``
    everywhere, BatchNorm scales included) is meant to be overwritten by pretrained weights; left
    as is, a from-scratch model's activations vanish (logits ~1e-26) and it does not train.
    Uses the global RNG (seed it, or wrap it in ``torch.random.fork_rng``)."""
    head = getattr(model, "classifier", None)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in head.modules() if isinstance(head, nn.Module) else ():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
    return model


def expand_chain(root: nn.Module, prefix: str, chain: Iterable[str]) -> list[str]:
    """Dotted paths (from the model root) of the blocks ``chain`` names under ``prefix``, expanding
    each ``.*`` over the container's children in order."""
    out: list[str] = []

    def walk(path: str, rest: list[str]) -> None:
        if not rest:
            out.append(path)
            return
        head, *tail = rest
        if head == "*":
            for name, _ in root.get_submodule(path).named_children():
                walk(f"{path}.{name}", tail)
        else:
            walk(f"{path}.{head}" if path else head, tail)

    for entry in chain:
        walk(prefix, entry.split("."))
    return out


def last_conv_channels(module: nn.Module) -> int | None:
    """Output channels of the last ``nn.Conv2d`` in ``module`` (its output width for the blocks of
    these families, whose last registered convolution produces the block's output)."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels) if convs else None


def cast_inputs_to_weights(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: floating-point tensor inputs take the dtype of ``module``'s first
    floating parameter (float32 images into a bfloat16 model become bfloat16); others pass as
    they are."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)

    def cast(v: Any) -> Any:
        floating = isinstance(v, torch.Tensor) and v.is_floating_point()
        return v.to(dtype) if floating and v.dtype != dtype else v

    if dtype is None:
        return args, kwargs
    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


class CNNAdapter(TaskMethods, BaseIdentity):
    """A :class:`~edgeadapt.models.adapter.ModelAdapter` for a transformers CNN classifier.

    Shares the identity fields of :class:`~edgeadapt.models.adapter.HFAdapter`: ``plan`` (here the
    :class:`~edgeadapt.pruning.channels.ChannelPlan` the model realises, ``None`` = dense),
    ``base_hash()``, ``base_config`` (what a pruned model is rebuilt from), ``name``,
    ``tokenizer`` (always ``None``) and ``neuron_index`` (always ``None``)."""

    def __init__(self, model: nn.Module, spec: CNNSpec, task: Task | None = None, name: str | None = None,
                 base_hash: str | None = None) -> None:
        size = getattr(model.config, "image_size", None)
        if isinstance(size, (list, tuple)) and size:
            size = size[0]
        # what every stage reads as the input side (data, calibration, graph tracing, FLOPs)
        model.config.image_size = int(size) if isinstance(size, int) else DEFAULT_IMAGE_SIZE
        self.model = model
        self.spec = spec
        self.family = spec.family
        self.modality: str = spec.modality
        self.task: Task = task if task is not None else Classification(head=spec.head)
        self.tokenizer: Any = None
        self.name = name or getattr(model.config, "_name_or_path", "") or spec.family
        prefix = getattr(model, "base_model_prefix", "")
        self._prefix = prefix if prefix and hasattr(model, prefix) else ""
        self.plan: Any = None
        self.neuron_index: Any = None
        self.parent_hash: str | None = None
        self.base_config = copy.deepcopy(model.config)
        self._base_hash: str | None = base_hash
        self._base = self._fingerprint_now()
        # transformers' CNNs do not cast pixel_values to their weights' dtype (ViT does): a bf16
        # checkpoint would fail on float32 images in every stage that runs it
        if not any(h is cast_inputs_to_weights for h in model._forward_pre_hooks.values()):
            model.register_forward_pre_hook(cast_inputs_to_weights, with_kwargs=True)

    @property
    def config(self) -> Any:
        return self.model.config

    # -- structure --------------------------------------------------------------------------
    def stages(self) -> list[str]:
        """The ordered chain of top-level blocks (dotted module paths from the model root): the
        output of each is the input of the next, then pooling and :meth:`head`. Each runs as
        ``module(hidden) -> hidden`` on one tensor, so it can be frozen or checkpointed as a unit."""
        return expand_chain(self.model, self._prefix, self.spec.chain)

    def stage_channels(self) -> list[int | None]:
        """Output channels of each stage, from the live (possibly pruned) weights."""
        return [last_conv_channels(self.model.get_submodule(p)) for p in self.stages()]

    def embeddings(self) -> list[str]:
        """The stem (first block of the chain): the CNN's counterpart of input embeddings."""
        return self.stages()[:1]

    def head(self) -> str | None:
        return self.task.head

    def _transformer_only(self, what: str) -> ConfigError:
        return ConfigError(
            f"{what}: {self.name!r} is a CNN ({self.family}) with no attention heads, FFN neurons or "
            "transformer layers; CNNs are pruned by channels (`edgeadapt prune MODEL --unit-sparsity S`, "
            "or edgeadapt.pruning.channels.prune_channels), and adapter.stages() lists its blocks")

    def blocks(self) -> list[Any]:
        raise self._transformer_only("blocks()")

    def layers_path(self) -> str:
        raise self._transformer_only("layers_path()")

    def set_attention_units(self, block: int, num_units: int) -> None:
        raise self._transformer_only("set_attention_units()")

    def set_layers(self, kept: list[int]) -> None:
        raise self._transformer_only("set_layers()")

    # -- identity ---------------------------------------------------------------------------
    def _fingerprint_now(self) -> dict[str, Any]:
        head = self.head()
        width = self.model.get_submodule(head).in_features if head else None
        return {
            "family": self.family,
            "model_type": self.config.model_type,
            "architecture": type(self.model).__name__,
            "num_layers": len(self.stages()),
            "hidden_size": width,
            "num_heads": 0,
            "num_kv_heads": 0,
            "ffn_width": 0,
            "stage_channels": self.stage_channels(),
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
        }

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the base (unpruned) architecture: family, model type, class, number of stages,
        feature width (``hidden_size``), per-stage output channels and parameter count. The
        transformer counts (``num_heads``, ``num_kv_heads``, ``ffn_width``) are 0."""
        return copy.deepcopy(self._base)

    def rebase(self) -> None:
        """Declare the current dense weights a new base; refused (:class:`ConfigError`) for a
        channel-pruned model, whose plan is relative to its base."""
        if self.plan is not None and not self.plan.is_dense():
            raise ConfigError("rebase: a channel-pruned model keeps its base identity (its plan is relative "
                              "to it)")
        self.parent_hash, self._base_hash, self.plan = self._base_hash, None, None



@dataclass(frozen=True)
class StageCost:
    """One stage of the chain: its path, output shape ``(channels, height, width)`` for one image
    at the model's ``image_size``, parameters, and FLOPs per image (multiply-adds × 2 of its
    convolutions and linear layers; attention score products are not counted)."""

    path: str
    output_shape: tuple[int, ...]
    params: int
    flops: int


@torch.no_grad()
def stage_costs(adapter: CNNAdapter) -> tuple[list[StageCost], int]:
    """:class:`StageCost` of every stage, and the FLOPs per image outside the stages (the head),
    measured with forward hooks on one blank image (the model is left as it was)."""
    model, config = adapter.model, adapter.model.config
    stages = adapter.stages()
    flops: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    names = {m: n for n, m in model.named_modules()}

    def count(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            per_out = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            flops[names[module]] = 2 * out.numel() * per_out
        else:
            flops[names[module]] = 2 * module.in_features * out.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for path in stages:
        hooks.append(model.get_submodule(path).register_forward_hook(
            lambda m, a, out, path=path: shapes.__setitem__(path, tuple(out.shape[1:]))))
    param = next(model.parameters())
    size = config.image_size
    was_training = model.training
    model.eval()
    try:
        blank = torch.zeros(1, config.num_channels, size, size, device=param.device, dtype=param.dtype)
        model(pixel_values=blank)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    rows = []
    for path in stages:
        inside = sum(f for n, f in flops.items() if n.startswith(path + "."))
        rows.append(StageCost(path, shapes.get(path, ()),
                              sum(p.numel() for p in model.get_submodule(path).parameters()), inside))
    return rows, sum(flops.values()) - sum(r.flops for r in rows)


def wrap_cnn(model: nn.Module, name: str | None = None, base_hash: str | None = None) -> CNNAdapter:
    """A :class:`CNNAdapter` for a built transformers CNN; a :class:`ConfigError` for any other
    model type, and for an encoder without a classifier (edgeadapt adapts CNN classifiers)."""
    spec = cnn_family(model.config.model_type)
    if spec is None:
        raise ConfigError(f"model_type {model.config.model_type!r} is not a CNN family; supported: "
                          f"{', '.join(cnn_model_types())}")
    if not type(model).__name__.endswith("ForImageClassification"):
        raise ConfigError(f"{type(model).__name__}: edgeadapt adapts CNN image classifiers "
                          f"({spec.classes['image-classification']}); load the model with that task")
    return CNNAdapter(model, spec, name=name, base_hash=base_hash)
