"""Llama-family decoders (Llama, Mistral, Qwen2): gated MLP and grouped-query attention."""

from edgeadapt.models.adapter import ArchSpec

LLAMA = ArchSpec(
    family="llama", model_types=("llama", "mistral", "qwen2"), layers="layers",
    attention="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
    o="self_attn.o_proj", mlp_inputs=("mlp.gate_proj", "mlp.up_proj"), mlp_output="mlp.down_proj",
    norms=("input_layernorm", "post_attention_layernorm"), embeddings=("embed_tokens",),
    kv_heads_key="num_key_value_heads",
    classes={"causal-lm": "AutoModelForCausalLM"},
)
