"""The adapter seam: everything edgeadapt knows about a model's structure comes from here.

:class:`ModelAdapter` is the protocol a user model implements (see ``examples/custom_adapter.py``).
:class:`HFAdapter` implements it for Hugging Face models from a per-family :class:`ArchSpec` table
(``models/families/``), so pruning, LoRA targets, proxies and split points never sniff names.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from edgeadapt.errors import ArtifactError, ConfigError
from edgeadapt.models.spec import AttentionSpec, BlockSpec, MLPSpec, Slice
from edgeadapt.models.tasks import Task, model_inputs


@runtime_checkable
class ModelAdapter(Protocol):
    """What edgeadapt needs to know about a model. Paths are dotted, from the model root.

    Every stage (pruning, LoRA, knowledge base, neuron index, proxy extraction, retraining, sync)
    uses only these members, so a model that implements them goes through the whole loop
    (``examples/custom_adapter.py``). What a stage needs beyond them, it says:

    * LoRA (:mod:`edgeadapt.offline.lora`) wraps the q/k/v/o and MLP projections that
      :meth:`blocks` names with peft; they must be ``nn.Linear`` (or transformers' ``Conv1D``).
    * Saving artifacts (:func:`edgeadapt.pruning.checkpoint.check_saveable`) needs a Hugging Face
      model, rebuilt from its config; a custom model's KB, proxies and synced FM live in memory.
    * Gradient checkpointing during training needs a Hugging Face model; leave it off otherwise.

    ``fingerprint()`` must hold at least ``num_layers``, ``hidden_size`` (the block input width the
    knowledge-base gates read), ``num_heads``, ``num_kv_heads`` (head *units* per block) and
    ``ffn_width`` (FFN neurons per block), all of the unpruned base model.

    Two fields are written by the stages, so an adapter starts them at ``None``: ``plan`` (the
    ``PruningPlan`` the model realises, set by ``pruning.apply_plan``) and ``neuron_index`` (set on
    a knowledge base by ``offline.neuron_index.to_kb``; ``None`` for a foundation model).
    """

    model: nn.Module
    family: str
    task: Task
    modality: str  # "image" or "text"
    plan: Any
    neuron_index: Any

    def blocks(self) -> list[BlockSpec]:
        """The transformer blocks, in order, described from the live (possibly pruned) weights."""

    def layers_path(self) -> str:
        """The ``nn.ModuleList`` holding the blocks (for layer removal)."""

    def embeddings(self) -> list[str]:
        """Input embedding modules."""

    def head(self) -> str | None:
        """The task head (its input is the feature point), or ``None`` for a plain encoder."""

    def set_attention_units(self, block: int, num_units: int) -> None:
        """Fix attention-module attributes after ``num_units`` head units remain in ``block``."""

    def set_layers(self, kept: list[int]) -> None:
        """Fix config/attributes after only the blocks ``kept`` (old indices, in order) remain."""

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the *base* architecture, so plans and artifacts can be matched to it."""

    def task_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar training loss on one batch."""

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The representation at the feature point (input of the head / sentence embedding)."""

    def evaluate(self, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """The task metric(s) over some batches."""

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Run the model once on ``batch`` (its inputs; ``labels`` ignored) and return the head's
        output (class logits ``[B, C]``, token logits ``[B, T, V]``), or ``None`` when
        :meth:`head` is ``None``. Always one forward pass through the head module, so hooks on it
        (the knowledge base captures features, the gates read saliency) see exactly this call."""

    def base_hash(self) -> str:
        """SHA-256 of the *base* weights (:func:`weights_hash`), taken once and cached before the
        model is pruned or reordered: a proxy, a pruned model and a knowledge base copied from the
        adapter keep reporting it, which is how an index or a proxy is matched to its FM."""

    def rebase(self) -> None:
        """Declare the current dense weights a new base (after LoRA is merged): forget the cached
        hash so :meth:`base_hash` is taken afresh, and reset ``plan`` to ``None``."""


def weights_hash(model: nn.Module) -> str:
    """SHA-256 over a model's state (names, shapes, dtypes, bytes): what :meth:`ModelAdapter.base_hash`
    caches. Any adapter can use it; two models hash equal only when their weights are identical."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ArchSpec:
    """Where one Hugging Face family keeps its parts. Paths are relative to the base model
    (``model.base_model``) and, for per-block parts, to the block.

    ``head_attributes`` lists attention-module attributes that the family's forward reads and that
    must follow the number of heads, as ``attr -> quantity``, a quantity being one of
    :data:`HEAD_QUANTITIES` (``"heads"``, ``"kv_heads"``, ``"head_dim"``, ``"heads*head_dim"``,
    ``"kv_heads*head_dim"``), e.g. ``{"split_size": "heads*head_dim"}``. The table is data: it
    is checked when the spec is built and never evaluated as code.

    ``modality`` ("image" or "text") is what the family's models take as input; it is the one
    place edgeadapt decides modality (data loaders, config checks and calibration all ask it).
    """

    family: str
    model_types: tuple[str, ...]
    layers: str
    attention: str
    q: str
    k: str
    v: str
    o: str
    mlp_inputs: tuple[str, ...]
    mlp_output: str
    norms: tuple[str, ...]
    embeddings: tuple[str, ...]
    fused_qkv: bool = False  # q, k, v are consecutive sections of one module (path in ``q``)
    transposed: bool = False  # weights stored [in, out] (GPT-2 Conv1D)
    head_attributes: Mapping[str, str] = field(default_factory=dict)
    layers_key: str = "num_hidden_layers"
    heads_key: str = "num_attention_heads"
    kv_heads_key: str | None = None
    hidden_key: str = "hidden_size"
    ffn_key: str = "intermediate_size"
    classes: Mapping[str, str] = field(default_factory=dict)  # task name -> transformers class
    modality: Literal["image", "text"] = "text"

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ConfigError(f"family {self.family!r}: modality must be one of {MODALITIES}, "
                              f"got {self.modality!r}")
        normalised = {attr: str(q).replace(" ", "") for attr, q in self.head_attributes.items()}
        unknown = {attr: q for attr, q in normalised.items() if q not in HEAD_QUANTITIES}
        if unknown:
            raise ConfigError(f"family {self.family!r}: head_attributes {unknown} are not quantities; "
                              f"use one of {sorted(HEAD_QUANTITIES)}")
        object.__setattr__(self, "head_attributes", normalised)


MODALITIES = ("image", "text")

# quantity name -> value from (query heads, key/value heads, head dim) of one attention layer
HEAD_QUANTITIES: dict[str, Callable[[int, int, int], int]] = {
    "heads": lambda heads, kv_heads, head_dim: heads,
    "kv_heads": lambda heads, kv_heads, head_dim: kv_heads,
    "head_dim": lambda heads, kv_heads, head_dim: head_dim,
    "heads*head_dim": lambda heads, kv_heads, head_dim: heads * head_dim,
    "kv_heads*head_dim": lambda heads, kv_heads, head_dim: kv_heads * head_dim,
}


def out_features(module: nn.Module, transposed: bool) -> int:
    """Output width of a Linear (``[out, in]``) or a transposed Conv1D (``[in, out]``)."""
    return module.weight.shape[1] if transposed else module.weight.shape[0]


ShapeOf = Callable[[str], "tuple[int, ...] | None"]
"""The weight shape of the module at a dotted path (``None``: unknown, the check skips it)."""


def check_structure(adapter: HFAdapter, shape_of: ShapeOf | None = None, source: str = "") -> None:
    """Check the structure the config declares (layers, heads, key/value heads, head_dim, FFN width)
    against the projection weights, so a wrong or half-updated config is an error naming both
    numbers, never an ``IndexError`` or a silently wrong head split later.

    The expected widths come from the config (and, for a pruned adapter, from its plan: kept units
    per block); the actual ones from ``shape_of(path)`` — by default the live weights, or e.g. the
    tensor shapes in a checkpoint's safetensors header (``models.registry.check_checkpoint``).
    ``source`` names where the weights come from in the message. Called by :class:`HFAdapter`
    when it is built, so every loaded or wrapped model passes it.

    Raises :class:`~edgeadapt.errors.ArtifactError` listing the mismatches, e.g. ``layer 0: config
    says 4 heads × head_dim 8 = 32 but q_proj has 24 output rows``.
    """
    s, fp = adapter.spec, adapter.fingerprint()
    where = f"{source}: " if source else ""

    def live(path: str) -> tuple[int, ...] | None:
        try:
            return tuple(adapter.model.get_submodule(path).weight.shape)
        except AttributeError:
            return None

    shape_of = shape_of or live
    problems: list[str] = []
    explicit = getattr(adapter.config, "head_dim", None)
    heads = fp["num_heads"]
    if not explicit and (not heads or fp["hidden_size"] % heads):
        problems.append(f"config says hidden_size {fp['hidden_size']} with {heads} heads, which does not "
                        f"divide into a whole head_dim")
        raise ArtifactError(f"{where}the config does not match the weights: {'; '.join(problems)}")
    if fp["num_kv_heads"] and heads % fp["num_kv_heads"]:
        raise ArtifactError(f"{where}config says {heads} heads in {fp['num_kv_heads']} key/value groups, "
                            "which do not divide evenly")
    hd = adapter.head_dim()
    ratio = heads // fp["num_kv_heads"]
    plan = adapter.plan
    n_config = getattr(adapter.config, s.layers_key)
    n_weights = len(adapter.model.get_submodule(adapter.layers_path()))
    if shape_of is live and n_config != n_weights:
        problems.append(f"config says {s.layers_key} {n_config} but the model has {n_weights} layers")
    rows = 1 if s.transposed else 0  # axis of output features
    cols = 1 - rows

    def expect(pos: int, name: str, axis: int, what: str, want: int, words: str) -> None:
        shape = shape_of(f"{adapter.layers_path()}.{pos}.{name}")
        if shape is not None and len(shape) == 2 and shape[axis] != want:
            said = "config says" if plan is None else "the plan keeps"
            problems.append(f"layer {pos}: {said} {words} = {want} but {name.rsplit('.', 1)[-1]} has "
                            f"{shape[axis]} {what}")

    for pos in range(n_weights if shape_of is live else n_config):
        block = plan.blocks[pos] if plan is not None and pos < len(plan.blocks) else None
        kv = len(plan.kept_heads(block)) if block is not None else fp["num_kv_heads"]
        q_heads, ffn = kv * ratio, (len(plan.kept_neurons(block)) if block is not None else fp["ffn_width"])
        q_words = f"{q_heads} heads × head_dim {hd}"
        if s.fused_qkv:
            expect(pos, s.q, rows, "output features", 3 * q_heads * hd, f"3 × {q_words}")
        else:
            expect(pos, s.q, rows, "output rows", q_heads * hd, q_words)
            for name in (s.k, s.v):
                expect(pos, name, rows, "output rows", kv * hd, f"{kv} key/value heads × head_dim {hd}")
        expect(pos, s.o, cols, "input columns", q_heads * hd, q_words)
        for name in s.mlp_inputs:
            expect(pos, name, rows, "output rows", ffn, f"FFN width ({s.ffn_key})")
        expect(pos, s.mlp_output, cols, "input columns", ffn, f"FFN width ({s.ffn_key})")
    if problems:
        more = f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""
        raise ArtifactError(f"{where}the config does not match the weights: {'; '.join(problems[:6])}{more}. "
                            "A model pruned outside edgeadapt and saved with save_pretrained keeps its old "
                            "config; save pruned models with edgeadapt (save_pruned / `edgeadapt prune`) or "
                            "fix config.json")


class BaseIdentity:
    """The identity part of :class:`ModelAdapter` for any adapter with ``model``, ``plan`` and
    ``_base_hash`` attributes: :meth:`base_hash` (SHA-256 of the base weights, taken once, before
    pruning) and :meth:`rebase`. Custom adapters inherit it instead of re-implementing it."""

    model: nn.Module
    plan: Any
    _base_hash: str | None

    def base_hash(self) -> str:
        """SHA-256 over the base weights (names, shapes, bytes); computed once, before pruning.
        Raises ``RuntimeError`` when first asked after the model was pruned."""
        if self._base_hash is None:
            if self.plan is not None:
                raise RuntimeError("base weights are gone: base_hash() must be taken before pruning")
            self._base_hash = weights_hash(self.model)
        return self._base_hash

    def rebase(self) -> None:
        """Declare the current dense weights a new base: forget the cached hash and the plan."""
        self._base_hash, self.plan = None, None


class TaskMethods:
    """The task part of :class:`ModelAdapter` for any adapter with ``model``, ``task`` and
    ``head()``: the task's loss, features, logits and evaluation, shared by the Hugging Face and
    CNN adapters so the two cannot drift apart."""

    model: nn.Module
    task: Task

    def head(self) -> str | None:  # pragma: no cover - provided by the adapter
        raise NotImplementedError

    def task_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The task's training loss on ``batch`` (a scalar tensor)."""
        return self.task.loss(self.model, batch)

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The task's features (the head's input, ``[B, D]``, or token features ``[B, T, D]``)."""
        return self.task.features(self.model, batch)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The head's output (``[B, C]`` or ``[B, T, V]``), ``None`` for a model without a head."""
        out = self.model(**model_inputs(batch))
        return out.logits if self.head() is not None else None

    def evaluate(self, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """The task's metrics over ``batches`` in eval mode (the train/eval mode is restored)."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self.task.evaluate(self.model, batches)
        finally:
            self.model.train(was_training)


class HFAdapter(TaskMethods, BaseIdentity):
    """A :class:`ModelAdapter` for a Hugging Face model, driven by an :class:`ArchSpec`.

    >>> adapter = load_adapter("tiny-llama")   # doctest: +SKIP
    >>> [b.mlp.width for b in adapter.blocks()]  # doctest: +SKIP

    Identity and tags are explicit fields, set through the constructor or the methods below,
    never by stages writing private attributes:

    * ``plan`` – the ``PruningPlan`` the model currently realises (``None`` = dense); set by
      ``pruning.apply_plan``.
    * ``base_hash()`` – SHA-256 of the base weights; pass ``base_hash=`` when rebuilding a model
      whose base weights are gone (an artifact records it), and call :meth:`rebase` when the
      current weights become a new base (LoRA merged into a dense model).
    * ``parent_hash`` – the base hash of the model this base was tuned from (``None`` if untuned).
    * ``neuron_index`` – for a knowledge base, the ``NeuronIndex`` its units are ordered by (so it
      is never mistaken for its foundation model); ``None`` for an ordinary model.
    """

    def __init__(self, model: nn.Module, spec: ArchSpec, task: Task, tokenizer: Any = None,
                 name: str | None = None, base_hash: str | None = None,
                 parent_hash: str | None = None) -> None:
        self.model = model
        self.spec = spec
        self.task = task
        self.modality: str = spec.modality
        self.tokenizer = tokenizer
        self.family = spec.family
        self.name = name or getattr(model.config, "_name_or_path", "") or spec.family
        prefix = getattr(model, "base_model_prefix", "")
        self._prefix = f"{prefix}." if prefix and hasattr(model, prefix) else ""
        self._base = self._fingerprint_from_config()
        self.plan: Any = None  # the PruningPlan the model currently realises (None = dense)
        self.base_config = copy.deepcopy(model.config)  # what a pruned model is rebuilt from
        self._base_hash: str | None = base_hash
        self.parent_hash: str | None = parent_hash
        self.neuron_index: Any = None
        check_structure(self)

    # -- structure --------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.model.config

    def _path(self, rel: str) -> str:
        return f"{self._prefix}{rel}"

    def layers_path(self) -> str:
        return self._path(self.spec.layers)

    def embeddings(self) -> list[str]:
        return [self._path(e) for e in self.spec.embeddings]

    def head(self) -> str | None:
        return self.task.head

    def head_dim(self) -> int:
        c = self.config
        explicit = getattr(c, "head_dim", None)
        if explicit:
            return int(explicit)
        return getattr(c, self.spec.hidden_key) // self._base["num_heads"]

    def blocks(self) -> list[BlockSpec]:
        s = self.spec
        layers = self.model.get_submodule(self.layers_path())
        hd = self.head_dim()
        out: list[BlockSpec] = []
        for i, block in enumerate(layers):
            root = f"{self.layers_path()}.{i}"
            if s.fused_qkv:
                total = out_features(block.get_submodule(s.q), s.transposed)
                heads = kv = total // (3 * hd)
                width = heads * hd
                q = Slice(f"{root}.{s.q}", "out", 0, width)
                k = Slice(f"{root}.{s.q}", "out", width, width)
                v = Slice(f"{root}.{s.q}", "out", 2 * width, width)
            else:
                heads = out_features(block.get_submodule(s.q), s.transposed) // hd
                kv = out_features(block.get_submodule(s.k), s.transposed) // hd
                q, k, v = (Slice(f"{root}.{p}", "out") for p in (s.q, s.k, s.v))
            attn = AttentionSpec(
                module=f"{root}.{s.attention}", q=q, k=k, v=v, o=Slice(f"{root}.{s.o}", "in"),
                num_heads=heads, num_kv_heads=kv, head_dim=hd,
            )
            width = out_features(block.get_submodule(s.mlp_inputs[0]), s.transposed)
            mlp = MLPSpec(
                inputs=tuple(Slice(f"{root}.{p}", "out") for p in s.mlp_inputs),
                output=Slice(f"{root}.{s.mlp_output}", "in"), width=width,
            )
            out.append(BlockSpec(i, root, attn, mlp, tuple(f"{root}.{n}" for n in s.norms)))
        return out

    @property
    def transposed(self) -> bool:
        return self.spec.transposed

    # -- fixing attributes after a structural change -----------------------------------------
    def set_attention_units(self, block: int, num_units: int) -> None:
        b = self.blocks()[block]
        ratio = self._base["num_heads"] // self._base["num_kv_heads"]
        module = self.model.get_submodule(b.attention.module)
        for attr, quantity in self.spec.head_attributes.items():
            value = HEAD_QUANTITIES[quantity](num_units * ratio, num_units, b.attention.head_dim)
            setattr(module, attr, value)

    def set_layers(self, kept: list[int]) -> None:
        layers = self.model.get_submodule(self.layers_path())
        for new_idx, block in enumerate(layers):
            for module in block.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = new_idx
        setattr(self.config, self.spec.layers_key, len(layers))
        layer_types = getattr(self.config, "layer_types", None)
        if isinstance(layer_types, list) and len(layer_types) != len(layers):
            self.config.layer_types = [layer_types[i] for i in kept]

    # -- identity ---------------------------------------------------------------------------
    def _fingerprint_from_config(self) -> dict[str, Any]:
        c = self.config
        s = self.spec
        heads = getattr(c, s.heads_key)
        kv = getattr(c, s.kv_heads_key, None) if s.kv_heads_key else None
        return {
            "family": s.family,
            "model_type": c.model_type,
            "architecture": type(self.model).__name__,
            "num_layers": getattr(c, s.layers_key),
            "hidden_size": getattr(c, s.hidden_key),
            "num_heads": heads,
            "num_kv_heads": kv or heads,
            "ffn_width": getattr(c, s.ffn_key, None) or 4 * getattr(c, s.hidden_key),
        }

    def fingerprint(self) -> dict[str, Any]:
        return dict(self._base)

    def rebase(self) -> None:
        """Declare the current (dense) weights a new base model: the old base hash becomes
        ``parent_hash`` and ``base_hash()`` is taken afresh from the weights on its next call.
        Used after LoRA is merged, so artifacts built from the merged model name *its* weights.

        Raises :class:`~edgeadapt.errors.ConfigError` for a pruned model (its plan is relative to
        the old base)."""
        if self.plan is not None and not self.plan.is_dense():
            raise ConfigError("rebase: a pruned model keeps its base identity (its plan is relative to it)")
        self.parent_hash, self._base_hash, self.plan = self._base_hash, None, None

