"""Hugging Face GPT-2: fused ``c_attn`` (q|k|v sections) and transposed ``Conv1D`` weights."""

from edgeadapt.models.adapter import ArchSpec

GPT2 = ArchSpec(
    family="gpt2", model_types=("gpt2",), layers="h",
    attention="attn", q="attn.c_attn", k="attn.c_attn", v="attn.c_attn", o="attn.c_proj",
    mlp_inputs=("mlp.c_fc",), mlp_output="mlp.c_proj", norms=("ln_1", "ln_2"),
    embeddings=("wte", "wpe"), fused_qkv=True, transposed=True,
    head_attributes={"num_heads": "heads", "split_size": "heads*head_dim"},
    ffn_key="n_inner",
    classes={"causal-lm": "GPT2LMHeadModel"},
)
