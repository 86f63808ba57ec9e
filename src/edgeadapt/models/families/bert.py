"""Hugging Face BERT and RoBERTa encoders (also the pretrained MiniLM sentence encoder)."""

from edgeadapt.models.adapter import ArchSpec

BERT = ArchSpec(
    family="bert", model_types=("bert", "roberta"), layers="encoder.layer",
    attention="attention.self", q="attention.self.query", k="attention.self.key",
    v="attention.self.value", o="attention.output.dense",
    mlp_inputs=("intermediate.dense",), mlp_output="output.dense",
    norms=("attention.output.LayerNorm", "output.LayerNorm"), embeddings=("embeddings",),
    head_attributes={"num_attention_heads": "heads", "all_head_size": "heads*head_dim"},
    classes={"sequence-classification": "AutoModelForSequenceClassification", "encoder": "AutoModel"},
)
