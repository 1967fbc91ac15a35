"""GPT-NeoX (``GPTNeoXForCausalLM``, Pythia): parallel attention and MLP with a norm each,
rotary on a fraction of each head, exact GELU, biases everywhere, an untied head.

NeoX fuses q/k/v per head: ``query_key_value`` rows are laid out [heads, 3, head_dim],
the zoo's ``c_attn`` [3, heads, head_dim]; :class:`HeadInterleaved` maps exactly."""

from zoo import CheckpointFormat, ConfigField
from zoo.hf.formats import rope_parameter
from zoo.hf.transforms import HeadInterleaved, Same

LAYER = "gpt_neox.layers.{i}."


def _layer_weights() -> dict:
    out = {}
    for part in ("weight", "bias"):
        out.update({
            f"stack.h.{{i}}.ln_1.{part}": Same(f"{LAYER}input_layernorm.{part}"),
            f"stack.h.{{i}}.ln_2.{part}": Same(f"{LAYER}post_attention_layernorm.{part}"),
            f"stack.h.{{i}}.attn.c_attn.{part}": HeadInterleaved(f"{LAYER}attention.query_key_value.{part}"),
            f"stack.h.{{i}}.attn.c_proj.{part}": Same(f"{LAYER}attention.dense.{part}"),
            f"stack.h.{{i}}.mlp.c_fc.{part}": Same(f"{LAYER}mlp.dense_h_to_4h.{part}"),
            f"stack.h.{{i}}.mlp.c_proj.{part}": Same(f"{LAYER}mlp.dense_4h_to_h.{part}"),
            f"stack.ln_f.{part}": Same(f"gpt_neox.final_layer_norm.{part}"),
        })
    return out


GPT_NEOX = CheckpointFormat(
    model_type="gpt_neox",
    architecture="GPTNeoXForCausalLM",
    weights={"wte.weight": Same("gpt_neox.embed_in.weight"), **_layer_weights()},
    head=Same("embed_out.weight"),
    renamed={"embed_out.weight": "lm_head.weight"},  # transformers 5 renames it on load
    template={
        "family": "decoder",
        "vocab_size": 50432,
        "context_length": 2048,
        "d_model": 6144,
        "n_layers": 44,
        "positional": {"type": "rotary"},
        "attention": {"type": "multi_head", "n_heads": 64, "bias": True},
        "block": {"type": "parallel", "shared_norm": False},
        "norm": {"type": "layer_norm", "bias": True},
        "mlp": {"type": "gelu", "bias": True},
        "scale_embeddings": False,
        },
    fields=(
        ConfigField("vocab_size", "vocab_size"),
        ConfigField("max_position_embeddings", "context_length"),
        ConfigField("hidden_size", "d_model"),
        ConfigField("num_hidden_layers", "n_layers"),
        ConfigField("num_attention_heads", "attention.n_heads"),
        ConfigField("intermediate_size", "mlp.d_ff", write=lambda s: s.d_ff),
        ConfigField("layer_norm_eps", "norm.eps"),
        ConfigField("rotary_pct", "positional.fraction", read=rope_parameter("partial_rotary_factor", 1.0)),
        ConfigField("rotary_emb_base", "positional.base", read=rope_parameter("rope_theta")),
        ConfigField("tie_word_embeddings", "tie_embeddings"),
    ),
    fixed={"hidden_act": "gelu", "use_parallel_residual": True, "attention_bias": True},
    ignored=(LAYER + "attention.bias", LAYER + "attention.masked_bias", LAYER + "attention.rotary_emb.inv_freq"),
    description="GPT-NeoX: parallel residual with two norms, partial rotary, exact GELU (Pythia)",
)
