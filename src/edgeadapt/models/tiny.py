"""Seeded, random-init tiny configurations of every built-in family (for tests and demos).

They resolve offline by name (``tiny-vit``, ``tiny-bert``, ``tiny-gpt2``, ``tiny-opt``,
``tiny-llama``; the CNNs ``tiny-resnet``, ``tiny-regnet``, ``tiny-mobilenetv2``,
``tiny-mobilevit``). Text models share a BPE tokenizer trained on the built-in corpus.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TEXT_VOCAB = 2048


def _vit() -> Any:
    from transformers import ViTConfig

    return ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=4,
                     num_attention_heads=4, intermediate_size=128, num_labels=10,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _bert() -> Any:
    from transformers import BertConfig

    return BertConfig(vocab_size=TEXT_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=128, max_position_embeddings=256, num_labels=2, pad_token_id=0)


def _gpt2() -> Any:
    from transformers import GPT2Config

    return GPT2Config(vocab_size=TEXT_VOCAB, n_positions=256, n_embd=64, n_layer=2, n_head=4,
                      bos_token_id=5, eos_token_id=6, pad_token_id=0)


def _opt() -> Any:
    from transformers import OPTConfig

    return OPTConfig(vocab_size=TEXT_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     ffn_dim=128, max_position_embeddings=256, word_embed_proj_dim=64,
                     bos_token_id=5, eos_token_id=6, pad_token_id=0)


def _llama() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=TEXT_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                       bos_token_id=5, eos_token_id=6, pad_token_id=0, tie_word_embeddings=False)


def _llama_ref() -> Any:
    """The reference LM of ``edgeadapt llm-pretrain``: 1.7M parameters, 6 layers, GQA (8 query heads
    in 4 KV groups), big enough that pruning has something to lose, small enough for CPU minutes."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=TEXT_VOCAB, hidden_size=128, num_hidden_layers=6, num_attention_heads=8,
                       num_key_value_heads=4, intermediate_size=384, max_position_embeddings=512,
                       bos_token_id=5, eos_token_id=6, pad_token_id=0, tie_word_embeddings=False)


def _resnet() -> Any:
    """ResNet with basic blocks (the ResNet-18 design), 3 stages of one block, digits at 32x32."""
    from transformers import ResNetConfig

    return ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1],
                        layer_type="basic", num_labels=10, image_size=32)


def _regnet() -> Any:
    """RegNetX: grouped 3x3 bottlenecks (the ResNeXt design) with groups of 8 channels."""
    from transformers import RegNetConfig

    return RegNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1],
                        groups_width=8, layer_type="x", num_labels=10, image_size=32)


def _mobilenetv2() -> Any:
    from transformers import MobileNetV2Config

    return MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.25, finegrained_output=False,
                             num_labels=10, classifier_dropout_prob=0.0)


def _mobilevit() -> Any:
    from transformers import MobileViTConfig

    return MobileViTConfig(num_channels=3, image_size=32, hidden_sizes=[16, 24, 32],
                           neck_hidden_sizes=[8, 16, 24, 32, 40, 48, 96], num_attention_heads=2,
                           num_labels=10, hidden_dropout_prob=0.0, classifier_dropout_prob=0.0)


TINY: dict[str, tuple[Callable[[], Any], str]] = {
    # name: (config factory, task); modality comes from the family table, like any model's
    "tiny-vit": (_vit, "image-classification"),
    "tiny-bert": (_bert, "sequence-classification"),
    "tiny-gpt2": (_gpt2, "causal-lm"),
    "tiny-opt": (_opt, "causal-lm"),
    "tiny-llama": (_llama, "causal-lm"),
    "tiny-llama-ref": (_llama_ref, "causal-lm"),
    # CNN families (models/cnn.py): digits at 32x32, channel pruning instead of heads/neurons
    "tiny-resnet": (_resnet, "image-classification"),
    "tiny-regnet": (_regnet, "image-classification"),
    "tiny-mobilenetv2": (_mobilenetv2, "image-classification"),
    "tiny-mobilevit": (_mobilevit, "image-classification"),
}
