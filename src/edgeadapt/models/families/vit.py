"""Hugging Face ViT (transformers 5.x layout: ``layers.N.attention.{q,k,v,o}_proj``)."""

from edgeadapt.models.adapter import ArchSpec

VIT = ArchSpec(
    family="vit", model_types=("vit",), layers="layers",
    attention="attention", q="attention.q_proj", k="attention.k_proj", v="attention.v_proj",
    o="attention.o_proj", mlp_inputs=("mlp.fc1",), mlp_output="mlp.fc2",
    norms=("layernorm_before", "layernorm_after"), embeddings=("embeddings",),
    head_attributes={"num_attention_heads": "heads"},
    classes={"image-classification": "ViTForImageClassification", "encoder": "ViTModel"},
    modality="image",
)
