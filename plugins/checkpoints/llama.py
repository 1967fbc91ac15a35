"""Llama (``LlamaForCausalLM``): rotary, grouped-query attention without biases, SwiGLU,
RMSNorm. Hugging Face's Llama rotates halves (``rotate_half``), as the zoo's rotary
scheme does, so no permutation is needed; q/k/v and gate/up are fused in the zoo."""

from zoo import CheckpointFormat, ConfigField
from zoo.hf.formats import rope_parameter
from zoo.hf.transforms import Fused, Same, halves, qkv_sizes

LAYER = "model.layers.{i}."


def decoder_weights(layer: str = LAYER) -> dict:
    """The weight table shared by Llama-shaped families (Llama, Qwen2): zoo name -> transform."""
    attn, mlp = layer + "self_attn.", layer + "mlp."
    return {
        "wte.weight": Same("model.embed_tokens.weight"),
        "stack.h.{i}.ln_1.weight": Same(layer + "input_layernorm.weight"),
        "stack.h.{i}.attn.c_attn.weight": Fused((attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"),
                                                qkv_sizes),
        "stack.h.{i}.attn.c_proj.weight": Same(attn + "o_proj.weight"),
        "stack.h.{i}.ln_2.weight": Same(layer + "post_attention_layernorm.weight"),
        "stack.h.{i}.mlp.c_fc.weight": Fused((mlp + "gate_proj.weight", mlp + "up_proj.weight"), halves),
        "stack.h.{i}.mlp.c_proj.weight": Same(mlp + "down_proj.weight"),
        "stack.ln_f.weight": Same("model.norm.weight"),
    }


def decoder_fields() -> tuple[ConfigField, ...]:
    """``config.json`` fields of Llama-shaped families <-> spec fields."""
    return (
        ConfigField("vocab_size", "vocab_size"),
        ConfigField("max_position_embeddings", "context_length"),
        ConfigField("hidden_size", "d_model"),
        ConfigField("num_hidden_layers", "n_layers"),
        ConfigField("num_attention_heads", "attention.n_heads"),
        ConfigField("num_key_value_heads", "attention.n_kv_heads", write=lambda s: s.n_kv_heads),
        ConfigField("intermediate_size", "mlp.d_ff", write=lambda s: s.d_ff),
        ConfigField("rms_norm_eps", "norm.eps"),
        ConfigField("rope_theta", "positional.base", read=rope_parameter("rope_theta")),
        ConfigField("tie_word_embeddings", "tie_embeddings"),
    )


def head_dim(config) -> int:
    return config.hidden_size // config.num_attention_heads


TEMPLATE = {
    "family": "decoder",
    "vocab_size": 32000,
    "context_length": 2048,
    "d_model": 4096,
    "n_layers": 32,
    "positional": {"type": "rotary", "fraction": 1.0},
    "attention": {"type": "multi_head", "n_heads": 32, "bias": False},
    "block": {"type": "pre_norm"},
    "norm": {"type": "rms_norm"},
    "mlp": {"type": "swiglu", "bias": False},
    "scale_embeddings": False,
}

LLAMA = CheckpointFormat(
    model_type="llama",
    architecture="LlamaForCausalLM",
    weights=decoder_weights(),
    template=TEMPLATE,
    fields=decoder_fields(),
    fixed={"hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "head_dim": head_dim},
    ignored=(LAYER + "self_attn.rotary_emb.inv_freq",),
    description="Llama: rotary, GQA, SwiGLU, RMSNorm (SmolLM2, Llama 2/3 without rope scaling)",
)
