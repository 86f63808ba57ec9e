"""Hugging Face OPT decoders."""

from edgeadapt.models.adapter import ArchSpec

OPT = ArchSpec(
    family="opt", model_types=("opt",), layers="decoder.layers",
    attention="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
    o="self_attn.out_proj", mlp_inputs=("fc1",), mlp_output="fc2",
    norms=("self_attn_layer_norm", "final_layer_norm"),
    embeddings=("decoder.embed_tokens", "decoder.embed_positions"),
    head_attributes={"num_heads": "heads"}, ffn_key="ffn_dim",
    classes={"causal-lm": "OPTForCausalLM"},
)
