"""Drift streams: an ordered list of target domains the edge device meets one after another.

A :class:`DriftStream` is a list of :class:`Domain` s. Each domain is a *registered dataset*
(:func:`edgeadapt.data.registry.build_dataset`) with options: for images the corruption machinery
(``digits-c`` with ``corruption``/``severity``), for text any registered text dataset. A domain
has an *unlabeled* adaptation split (what the device sees; the dataset's ``val`` split by default)
and a *labelled* (or, for text, held-out) evaluation split (how we score it; ``test`` by default),
and may be flagged ``labelled: true`` (it arrives with labels; its adaptation split keeps them).

Written in YAML (a list, or a mapping with a ``stream`` list)::

    stream:
      - {dataset: digits-c, options: {corruption: fog, severity: 3}}
      - {dataset: builtin-docs}
      - {dataset: text-files, root: data/manuals, name: manuals, labelled: true}
      - fog:5                                  # shorthand: digits-c, corruption fog, severity 5
      - {corruption: contrast, severity: 4}    # shorthand too

or as a string ``"gaussian_noise:5,fog:3,contrast:4"`` (digits-c domains; a bare registered dataset
name such as ``builtin-docs`` is that dataset with its default options).

Building a stream's data (:meth:`DriftStream.build`) takes what the model needs from the model
(:class:`ModelInputs`): the image side from its config, the tokenizer and context length for text.
For the built-in ``digits-c`` the adaptation images are the digits validation images and the
evaluation images the digits test images, each corrupted with its own seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgeadapt.data.external import HF_TEXT_DATASETS
from edgeadapt.data.registry import build_dataset, dataset_info, list_datasets, options_at_size
from edgeadapt.data.splits import ImageSplit, Splits, TextSplit
from edgeadapt.errors import ConfigError

# Mixes easy and hard domains and revisits corruption families, so methods that only help on
# noise, or that collapse on low-contrast images, show it (DESIGN.md §5). With CIFAR-10-C's
# parameters at 16×16 noise and blur barely hurt the source tiny ViT (clean ≈ 0.95), so the hard
# domains are contrast, fog, brightness and glass blur. Source accuracy per domain, mean of 3 seeds
# (benchmarks/results/drift_severity.json): gaussian_noise:5 .945, fog:5 .493, brightness:5 .744,
# contrast:5 .283, glass_blur:4 .753, impulse_noise:5 .924, snow:5 .852, motion_blur:5 .881,
# fog:3 .819, contrast:4 .649. Also in configs/streams/default.yaml (a test keeps them equal).
DEFAULT_STREAM = ("gaussian_noise:5,fog:5,brightness:5,contrast:5,glass_blur:4,impulse_noise:5,"
                  "snow:5,motion_blur:5,fog:3,contrast:4")

CORRUPTED = "digits-c"  # the dataset the shorthand forms name
DOMAIN_FIELDS = ("dataset", "options", "root", "labelled", "name", "adapt_split", "eval_split")
SPLITS = ("train", "val", "test")
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Domain:
    """One target domain: a registered ``dataset`` built with ``options`` (and ``root`` for
    datasets that read local files). ``labelled``: the domain arrives with labels (its adaptation
    split keeps them). ``adapt_split``/``eval_split``: which of the dataset's train/val/test splits
    the device adapts on and is scored on (different splits: the evaluation data stays held out).
    ``name``: how reports call it (default: ``corruption:severity`` for digits-c, else the dataset
    and its options)."""

    dataset: str = CORRUPTED
    options: Mapping[str, Any] = field(default_factory=dict)
    root: str | None = None
    labelled: bool = False
    name: str | None = None
    adapt_split: str = "val"
    eval_split: str = "test"

    @classmethod
    def corrupted(cls, corruption: str, severity: int, labelled: bool = False) -> Domain:
        """A ``digits-c`` domain: ``corruption`` (a CIFAR-10-C name) at ``severity`` 1-5."""
        return cls(CORRUPTED, {"corruption": corruption, "severity": severity}, labelled=labelled)

    @property
    def corruption(self) -> str | None:
        """The digits-c corruption, ``None`` for any other dataset."""
        return self.options.get("corruption") if self.dataset == CORRUPTED else None

    @property
    def severity(self) -> int | None:
        """The digits-c severity, ``None`` for any other dataset."""
        return self.options.get("severity") if self.dataset == CORRUPTED else None

    def __str__(self) -> str:
        if self.name:
            return self.name
        if self.dataset == CORRUPTED and set(self.options) == {"corruption", "severity"}:
            return f"{self.corruption}:{self.severity}"
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.dataset}({opts})" if opts else self.dataset

    def to_dict(self) -> dict[str, Any]:
        """The YAML mapping form (only the fields that differ from the defaults)."""
        out: dict[str, Any] = {"dataset": self.dataset}
        defaults = Domain()
        for key in DOMAIN_FIELDS[1:]:
            value = getattr(self, key)
            if value != getattr(defaults, key):
                out[key] = dict(value) if key == "options" else value
        return out


@dataclass(frozen=True)
class DomainData:
    """A domain's adaptation split (unlabeled unless the domain is ``labelled``) and evaluation
    split, each with ``batches(batch_size, shuffle=False, seed=0)`` and ``len()``: an
    :class:`~edgeadapt.data.splits.ImageSplit` for images; for text a :class:`TokenBlocks` (causal
    LMs) or :class:`Paragraphs` (encoders), or the raw ``TextSplit`` when no model was given."""

    domain: Domain
    adapt: Any
    test: Any

    @property
    def labelled(self) -> bool:
        return self.domain.labelled


@dataclass(frozen=True)
class ModelInputs:
    """What the model takes, read from it once: ``modality`` ("image"/"text", ``None`` when the
    adapter does not say), ``image_size`` (pixels a side, from its config), ``tokenizer``,
    ``task`` (its task name, e.g. "causal-lm") and ``max_length`` (tokens per sequence: the asked
    length capped at the model's positions)."""

    modality: str | None = None
    image_size: int | None = None
    tokenizer: Any = None
    task: str | None = None
    max_length: int = 128

    @classmethod
    def of(cls, adapter: Any, max_length: int = 128) -> ModelInputs:
        """Read from a model adapter (any object with ``model.config``, ``tokenizer``, ``task``,
        ``modality``; missing attributes mean "not known")."""
        from edgeadapt.models.inspect import limits_from_config

        config = getattr(getattr(adapter, "model", None), "config", None)
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        limits = limits_from_config(config if isinstance(config, dict) else {})
        positions = limits.positions
        task = getattr(getattr(adapter, "task", None), "name", None)
        return cls(getattr(adapter, "modality", None), limits.image_size, getattr(adapter, "tokenizer", None),
                   task, min(max_length, positions) if positions else max_length)


@dataclass(frozen=True)
class TokenBlocks:
    """A text split as one token stream cut into ``seq_len`` blocks (what a causal LM adapts on and
    is scored on: perplexity over held-out blocks). ``ids``: 1-D token ids of the joined texts."""

    ids: torch.Tensor
    seq_len: int

    def __len__(self) -> int:
        return len(self.ids) // self.seq_len

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[Batch]:
        """``{"input_ids", "attention_mask", "labels"}`` batches of ``[b, seq_len]`` blocks."""
        from edgeadapt.data.tokens import token_blocks

        return token_blocks(self.ids, self.seq_len, batch_size, shuffle=shuffle, seed=seed)(0)

    def unlabeled(self) -> TokenBlocks:
        return self  # a language model's targets are its inputs


@dataclass(frozen=True)
class Paragraphs:
    """A text split as padded paragraphs of at most ``max_length`` tokens (what an encoder takes)."""

    texts: tuple[str, ...]
    tokenizer: Any
    max_length: int

    def __len__(self) -> int:
        return len(self.texts)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[Batch]:
        """``{"input_ids", "attention_mask"}`` batches, in a seeded order when ``shuffle``."""
        from edgeadapt.data.text import text_batches

        order = torch.randperm(len(self.texts), generator=torch.Generator().manual_seed(seed)).tolist() \
            if shuffle else range(len(self.texts))
        return text_batches(self.tokenizer, [self.texts[i] for i in order], batch_size, self.max_length)

    def unlabeled(self) -> Paragraphs:
        return self


def for_model(split: ImageSplit | TextSplit, inputs: ModelInputs | None, where: str = "data") -> Any:
    """``split`` in the form the model takes: images as they are; text tokenized by the model's
    tokenizer into :class:`TokenBlocks` (causal LMs) or :class:`Paragraphs` (others); unchanged
    without ``inputs`` (or, for text, without a known model: no tokenizer and no modality). A
    modality the model does not take, or text for a model without a tokenizer, is a
    :class:`ConfigError` naming ``where``."""
    if inputs is None:
        return split
    kind = "image" if isinstance(split, ImageSplit) else "text"
    if inputs.modality is not None and inputs.modality != kind:
        raise ConfigError(f"{where}: the data is {kind} but the model takes {inputs.modality} input; choose "
                          f"a dataset of {inputs.modality} data (see `edgeadapt data list`)")
    if isinstance(split, ImageSplit) or (inputs.tokenizer is None and inputs.modality is None):
        return split  # no text model known: the texts as they are
    if inputs.tokenizer is None:
        raise ConfigError(f"{where}: the dataset holds text but the model has no tokenizer; load the model "
                          "with its tokenizer (an edgeadapt artifact keeps it in tokenizer/)")
    if inputs.task == "causal-lm":
        from edgeadapt.data.tokens import corpus_ids

        return TokenBlocks(corpus_ids(inputs.tokenizer, split.texts), inputs.max_length)
    return Paragraphs(tuple(split.texts), inputs.tokenizer, inputs.max_length)


def _registered() -> str:
    return ", ".join(d.name for d in list_datasets())


def _shorthand(item: Any, where: str) -> Domain:
    """``"name:severity"``, a bare registered dataset name, or ``{corruption, severity[, labelled]}``."""
    from edgeadapt.data.corruptions import check_corruption

    labelled = False
    if isinstance(item, str):
        name, sep, sev = item.strip().partition(":")
        name = name.strip()
        if not sep:
            if name in {d.name for d in list_datasets()}:
                return Domain(name)
            raise ConfigError(f"{where}: {item!r} needs a severity, e.g. '{name}:3' (a digits-c corruption), "
                              f"or name a registered dataset ({_registered()})")
        try:
            severity = int(sev)
        except ValueError:
            raise ConfigError(f"{where}: severity {sev!r} of {name!r} must be an integer in 1..5") from None
    else:
        labelled = item.get("labelled", False)
        keys = set(item)
        if keys - {"corruption", "severity", "labelled"} or not {"corruption", "severity"} <= keys:
            raise ConfigError(f"{where}: a domain mapping needs exactly 'corruption' and 'severity', "
                              f"got {sorted(item)} (or name a dataset: {{dataset: ..., options: {{...}}}})")
        name, severity = item["corruption"], item["severity"]
        if not isinstance(severity, int) or isinstance(severity, bool):
            raise ConfigError(f"{where}: severity of {name!r} must be an integer in 1..5, got {severity!r}")
    try:
        check_corruption(name, severity)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return _checked(Domain.corrupted(name, severity, labelled=labelled), where)


def _mapping(item: Mapping[str, Any], where: str) -> Domain:
    """``{dataset, options, root, labelled, name, adapt_split, eval_split}``."""
    unknown = sorted(set(item) - set(DOMAIN_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; a domain takes {list(DOMAIN_FIELDS)} "
                          "(dataset options go under 'options')")
    options = item.get("options") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where}.options: {options!r} is not a mapping; write e.g. "
                          "{corruption: fog, severity: 3}")
    root = item.get("root")
    domain = Domain(dataset=item["dataset"], options=dict(options), root=None if root is None else str(root),
                    labelled=item.get("labelled", False), name=item.get("name"),
                    adapt_split=item.get("adapt_split", "val"), eval_split=item.get("eval_split", "test"))
    return _checked(domain, where)


def _checked(d: Domain, where: str) -> Domain:
    """Refuse, before any data is read, what the registry or the splits cannot give."""
    from edgeadapt.data.corruptions import check_corruption

    if not isinstance(d.dataset, str) or d.dataset not in {i.name for i in list_datasets()}:
        raise ConfigError(f"{where}.dataset: {d.dataset!r} is not a registered dataset; choose one of: "
                          f"{_registered()} (or register yours with @register_dataset)")
    info = dataset_info(d.dataset)
    unknown = sorted(set(d.options) - set(info.options))
    if unknown:
        takes = ", ".join(info.options) if info.options else "no options"
        raise ConfigError(f"{where}.options: {unknown} are not options of dataset {d.dataset!r}; it takes "
                          f"{takes}; remove them")
    if d.dataset == CORRUPTED:
        try:
            check_corruption(d.options.get("corruption", "gaussian_noise"), d.options.get("severity", 3))
        except ValueError as exc:
            raise ConfigError(f"{where}.options: {exc}") from None
    if not isinstance(d.labelled, bool):
        raise ConfigError(f"{where}.labelled: {d.labelled!r} must be true or false")
    if d.name is not None and (not isinstance(d.name, str) or not d.name.strip()):
        raise ConfigError(f"{where}.name: {d.name!r} must be a non-empty string")
    for key in ("adapt_split", "eval_split"):
        if getattr(d, key) not in SPLITS:
            raise ConfigError(f"{where}.{key}: {getattr(d, key)!r} is not a split; choose one of "
                              f"{list(SPLITS)}")
    if d.adapt_split == d.eval_split:
        raise ConfigError(f"{where}: adapt_split and eval_split are both {d.adapt_split!r}; the evaluation "
                          "split must be held out, so choose two different splits")
    if d.root is not None and not Path(d.root).expanduser().exists():
        raise ConfigError(f"{where}.root: {d.root!r} does not exist; point it at the domain's local data")
    if d.dataset in HF_TEXT_DATASETS:
        from edgeadapt.data.config import check_hub_cached

        check_hub_cached(d.dataset, None if d.root is None else Path(d.root), f"{where}.root")
    return d


def _domain(item: Any, where: str) -> Domain:
    if isinstance(item, Domain):
        return _checked(item, where)
    if isinstance(item, Mapping) and "dataset" in item:
        return _mapping(item, where)
    if isinstance(item, (str, Mapping)):
        return _shorthand(item, where)
    raise ConfigError(f"{where}: expected a mapping {{dataset: NAME, options: {{...}}}}, a "
                      f"'corruption:severity' string or {{corruption, severity}}, got {item!r}")


@dataclass(frozen=True)
class DriftStream:
    """An ordered list of :class:`Domain` s (at least one), checked against the dataset registry
    when made (:meth:`parse`). Iterating yields the domains; :meth:`build` their data."""

    domains: tuple[Domain, ...]

    def __post_init__(self) -> None:
        if not self.domains:
            raise ConfigError("stream is empty; give at least one domain such as 'fog:3'")
        checked = tuple(_domain(d, f"stream[{i}]") for i, d in enumerate(self.domains))
        object.__setattr__(self, "domains", checked)

    @classmethod
    def parse(cls, spec: DriftStream | str | Path | Sequence[Any] | None = None) -> DriftStream:
        """A stream from ``"a:5,b:3"``, a YAML file (a list, or a mapping with a ``stream`` list), a
        list of items (mappings naming a dataset, shorthand strings/mappings, :class:`Domain` s), or
        ``None`` for the default stream. Each refusal is a :class:`ConfigError` naming
        ``stream[i].field``, the value and the fix."""
        if isinstance(spec, DriftStream):
            return spec
        if spec is None:
            spec = DEFAULT_STREAM
        if isinstance(spec, Path) or (isinstance(spec, str) and spec.endswith((".yaml", ".yml"))):
            import yaml

            path = Path(spec)
            if not path.is_file():
                raise ConfigError(f"stream: file {path} does not exist")
            loaded = yaml.safe_load(path.read_text())
            items = loaded.get("stream") if isinstance(loaded, dict) else loaded
            if not isinstance(items, list):
                raise ConfigError(f"stream: {path} must hold a list of domains "
                                  "(or a mapping with a 'stream' list)")
            return cls.parse(items)
        if isinstance(spec, str):
            items: list[Any] = [s for s in spec.split(",") if s.strip()]
        elif isinstance(spec, Sequence):
            items = list(spec)
        else:
            raise ConfigError(f"stream: expected a string, a YAML file or a list of domains, got {spec!r}")
        if not items:
            raise ConfigError("stream is empty; give at least one domain such as 'fog:3'")
        return cls(tuple(_domain(item, f"stream[{i}]") for i, item in enumerate(items)))

    def __iter__(self) -> Iterator[Domain]:
        return iter(self.domains)

    def __len__(self) -> int:
        return len(self.domains)

    def __getitem__(self, index: int) -> Domain:
        return self.domains[index]

    def to_list(self) -> list[dict[str, Any]]:
        """The YAML form: one mapping per domain."""
        return [d.to_dict() for d in self.domains]

    def raw_splits(self, index: int, image_size: int | None = None, seed: int = 0) -> Splits:
        """Domain ``index``'s train/val/test splits from the registry. An image dataset with a
        ``size`` option is built at ``image_size`` unless the domain sets it (a different explicit
        size is refused); digits-c's ``corruption_seed`` defaults to ``seed``."""
        d, where = self.domains[index], f"stream[{index}]"
        options = options_at_size(d.dataset, d.options, image_size, f"{where}.options.size")
        if d.dataset == CORRUPTED:
            options.setdefault("corruption_seed", seed)
        try:
            return build_dataset(d.dataset, root=d.root, **options)
        except ConfigError as exc:
            raise ConfigError(f"{where} ({d}): {exc}") from None

    def build(self, model: Any = None, *, inputs: ModelInputs | None = None, seed: int = 0,
              max_length: int = 128) -> list[DomainData]:
        """Every domain's adaptation and evaluation data, in order, in the form ``model`` (a model
        adapter; or ``inputs`` directly) takes: images at the model's side, text tokenized by its
        tokenizer into ``max_length``-token sequences. Without either, the raw splits. A split
        with no samples (or, for text, fewer tokens than one sequence) is a :class:`ConfigError`
        naming the domain, the dataset and the split."""
        if inputs is None and model is not None:
            inputs = ModelInputs.of(model, max_length)
        out = []
        for i, d in enumerate(self.domains):
            where = f"stream[{i}]"
            splits = self.raw_splits(i, inputs.image_size if inputs else None, seed)
            parts = []
            for key in ("adapt_split", "eval_split"):
                split_name = getattr(d, key)
                raw = getattr(splits, split_name)
                what = f"{where} ({d}): the {split_name!r} split of dataset {d.dataset!r}"
                if len(raw) == 0:
                    raise ConfigError(f"{what} has no samples, so the domain is empty ({key}); give it data "
                                      f"(options/root) or choose another {key}")
                if key == "eval_split" and isinstance(raw, ImageSplit) and raw.labels is None:
                    raise ConfigError(f"{what} has no labels to score on; choose a labelled eval_split")
                data = for_model(raw, inputs, f"{where} ({d})")
                if len(data) == 0:
                    raise ConfigError(f"{what} has fewer than {inputs.max_length} tokens, so the domain is "
                                      f"empty ({key}); give it more text or use a shorter max_length")
                if key == "adapt_split" and not d.labelled and hasattr(data, "unlabeled"):
                    data = data.unlabeled()
                parts.append(data)
            out.append(DomainData(d, *parts))
        return out

    def describe(self, sizes: bool = False, seed: int = 0) -> str:
        """One line per domain (for CLI summaries); with ``sizes`` the adaptation and evaluation
        split sizes (images, or texts) read from the registry."""
        lines = []
        for i, d in enumerate(self.domains):
            text = f"{i + 1:>2}. {str(d):<28} {d.dataset:<14}"
            opts = {k: v for k, v in d.options.items() if str(d) != f"{d.corruption}:{d.severity}"}
            if opts and d.name:
                text += " " + ", ".join(f"{k}={v}" for k, v in sorted(opts.items()))
            if sizes:
                splits = self.raw_splits(i, seed=seed)
                text += (f" adapt {len(getattr(splits, d.adapt_split)):>5} ({d.adapt_split})"
                         f"  eval {len(getattr(splits, d.eval_split)):>5} ({d.eval_split})")
            if d.labelled:
                text += "  labelled"
            lines.append(text.rstrip())
        return "\n".join(lines)


def parse_stream(spec: DriftStream | str | Path | Sequence[Any] | None = None) -> list[Domain]:
    """The domains of :meth:`DriftStream.parse` ``(spec)``, as a list; None → the default stream."""
    return list(DriftStream.parse(spec).domains)


def stream_data(domains: DriftStream | Sequence[Domain] | str | None = None, size: int | None = None,
                seed: int = 0, model: Any = None, max_length: int = 128) -> list[DomainData]:
    """Adaptation (unlabeled unless the domain is labelled) and evaluation splits for each domain, in
    order (:meth:`DriftStream.build`), for ``model`` (a model adapter: image side and tokenizer are
    read from it) or, without one, images at ``size`` pixels (the dataset's default when None)."""
    stream = DriftStream.parse(domains if domains is None or isinstance(domains, (str, DriftStream))
                               else list(domains))
    inputs = ModelInputs.of(model, max_length) if model is not None else \
        ModelInputs(image_size=size, max_length=max_length) if size is not None else None
    return stream.build(inputs=inputs, seed=seed)


def describe_stream(domains: DriftStream | Sequence[Domain]) -> str:
    """One line per domain (for CLI summaries)."""
    return DriftStream.parse(domains if isinstance(domains, DriftStream) else list(domains)).describe()
