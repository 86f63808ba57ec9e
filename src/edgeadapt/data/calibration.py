"""Built-in calibration batches for importance scoring, chosen by the model's modality.

Images come from the digits training split; text from the built-in documentation corpus
(train split), tokenized with the model's tokenizer. Sentence encoders get paragraph halves as
positive pairs for their contrastive loss.

Labels are only given when they are the model's own: an image classifier whose label space is
not the digits' (another number of labels, or named labels that are not digits) gets batches
without ``labels``, and its loss uses the model's own predictions as targets
(:class:`~edgeadapt.models.tasks.Classification`), as text calibration always does. Digit
labels 0-9 used as ImageNet classes would score neurons for a task the model never learned, and
a 2-label head would fail on label 8.
"""

from __future__ import annotations

import random
import re
import warnings
from collections.abc import Mapping, Sequence

from edgeadapt.data.registry import dataset_info
from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import ModelAdapter
from edgeadapt.models.inspect import limits_from_config

Batch = dict
# transformers' placeholder names (id2label when the config names no classes): no meaning to compare.
_PLACEHOLDER = re.compile(r"^LABEL_\d+$")


def label_mismatch(model: object, classes: Sequence[str],
                   aliases: Mapping[str, str] | None = None) -> str | None:
    """Why a classifier's label space is not ``classes`` (the dataset's, in label order), or
    ``None`` when the dataset's labels are the model's. Compared: the number of labels
    (``config.num_labels``), then the names (``config.id2label``, mapped through the dataset's
    ``aliases``) where the model names its labels (not transformers' ``LABEL_i`` placeholders)."""
    config = getattr(model, "config", None)
    num_labels = getattr(config, "num_labels", None)
    if not isinstance(num_labels, int):
        return None
    if num_labels != len(classes):
        return f"the model has {num_labels} labels and the data {len(classes)} classes"
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    names = [id2label.get(i, f"LABEL_{i}") for i in range(num_labels)]
    if all(_PLACEHOLDER.match(n) for n in names):
        return None
    aliases = dict(aliases or {})
    mapped = [aliases.get(n, aliases.get(n.lower(), n)) for n in names]
    if [m.lower() for m in mapped] != [c.lower() for c in classes]:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        return f"the model's labels ({shown}) are not the data's classes ({', '.join(classes[:4])}, ...)"
    return None


def calibration_batches(adapter: ModelAdapter, num_batches: int = 8, batch_size: int = 8,
                        max_length: int = 128, seed: int = 0, split: str = "train") -> list[Batch]:
    """``num_batches`` batches of built-in data suited to ``adapter`` (seeded sample).

    Images: digits at the model's ``image_size``, with labels only when the model's label space is
    the digits' (:func:`label_mismatch`; otherwise a warning says the model's predictions are the
    targets). Text: ``max_length`` tokens at most, and never more than the model's positions; a
    token id beyond the model's ``vocab_size`` is a :class:`~edgeadapt.errors.ConfigError` naming both
    numbers (a tokenizer that is not the model's)."""
    if num_batches < 1 or batch_size < 1:
        raise ConfigError("num_batches and batch_size must be >= 1")
    rng = random.Random(seed)
    if adapter.modality == "image":
        from edgeadapt.data.digits import digits_tensors, image_batches

        size = adapter.model.config.image_size
        x, y = digits_tensors(split, size=size, seed=0)
        idx = rng.sample(range(len(x)), min(len(x), num_batches * batch_size))
        labels = y[idx]
        info = dataset_info("digits")
        why = label_mismatch(adapter.model, info.classes, info.class_aliases) \
            if adapter.task.name == "classification" else None
        if why is not None:
            warnings.warn(f"calibration: {why}, so the digit labels are not this model's; importance "
                          "uses the model's own predictions as targets", UserWarning, stacklevel=2)
            labels = None
        return list(image_batches(x[idx], labels, batch_size))
    from edgeadapt.data.text import builtin_paragraphs, text_batches

    if getattr(adapter, "tokenizer", None) is None:
        raise ConfigError(f"model {getattr(adapter, 'name', '?')!r} has no tokenizer; text calibration "
                          "needs one: save the model's tokenizer into its directory "
                          "(tokenizer.save_pretrained(DIR)), or use an importance that needs no data "
                          "(--importance magnitude or magnitude-l2)")
    config = getattr(adapter.model, "config", None)
    positions = limits_from_config(config.to_dict()).positions if config is not None else None
    if positions is not None:
        max_length = min(max_length, positions)
    texts = builtin_paragraphs(split)
    texts = rng.sample(texts, min(len(texts), num_batches * batch_size))
    pairs = adapter.task.name == "sentence-embedding"
    batches = list(text_batches(adapter.tokenizer, texts, batch_size, max_length, pairs=pairs))
    vocab = getattr(config, "vocab_size", None)
    top = max(int(b["input_ids"].max()) for b in batches)
    if isinstance(vocab, int) and top >= vocab:
        raise ConfigError(f"model {getattr(adapter, 'name', '?')!r}: its tokenizer gives token id {top} but "
                          f"the model has vocab_size {vocab} (ids up to {vocab - 1}); ship the tokenizer the "
                          "model was trained with")
    return batches
