"""GPT-2 (``GPT2LMHeadModel``): learned positions, fused q/k/v with biases, LayerNorm, Conv1D
weights stored [in, out] (``Transposed``), the tensors under ``transformer.`` (which old
checkpoints leave off), and an ``lm_head`` only when untied."""

from zoo import CheckpointFormat, ConfigField
from zoo.hf.formats import activation_field
from zoo.hf.transforms import Same, Transposed

PREFIX = "transformer."
LAYER = PREFIX + "h.{i}."



def weights() -> dict:
    """zoo parameter -> its GPT-2 tensor; the four projections are Conv1D, stored transposed."""
    table = {"wte.weight": Same(PREFIX + "wte.weight"), "positional.weight": Same(PREFIX + "wpe.weight"),
             "stack.ln_f.weight": Same(PREFIX + "ln_f.weight"), "stack.ln_f.bias": Same(PREFIX + "ln_f.bias")}
    for part in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        conv1d = not part.startswith("ln_")
        table[f"stack.h.{{i}}.{part}.weight"] = (Transposed if conv1d else Same)(f"{LAYER}{part}.weight")
        table[f"stack.h.{{i}}.{part}.bias"] = Same(f"{LAYER}{part}.bias")
    return table


FIELDS = (
    ConfigField("vocab_size", "vocab_size"),
    ConfigField("n_positions", "context_length"),
    ConfigField("n_embd", "d_model"),
    ConfigField("n_layer", "n_layers"),
    ConfigField("n_head", "attention.n_heads"),
    ConfigField("n_inner", "mlp.d_ff", read=lambda c: c.n_inner or 4 * c.n_embd,
                write=lambda s: s.d_ff),
    activation_field(),
    ConfigField("layer_norm_epsilon", "norm.eps"),
    ConfigField("tie_word_embeddings", "tie_embeddings"),
    ConfigField("resid_pdrop", "dropout", checked=False),  # training settings: written, not compared
    ConfigField("embd_pdrop", "dropout", checked=False),
    ConfigField("attn_pdrop", "attention.dropout", checked=False),
)

TEMPLATE = {
    "family": "decoder",
    "vocab_size": 50257,
    "context_length": 1024,
    "d_model": 768,
    "n_layers": 12,
    "positional": {"type": "learned"},
    "attention": {"type": "multi_head", "n_heads": 12, "n_kv_heads": None, "bias": True, "causal": None,
                  "out_bias": None},
    "block": {"type": "pre_norm"},
    "norm": {"type": "layer_norm", "bias": True},
    "mlp": {"type": "gelu_tanh", "bias": True},
    "scale_embeddings": False,
}

GPT2 = CheckpointFormat(
    model_type="gpt2",
    architecture="GPT2LMHeadModel",
    weights=weights(),
    template=TEMPLATE,
    fields=FIELDS,
    fixed={"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False},
    head=Same("lm_head.weight"),
    ignored=(LAYER + "attn.bias", LAYER + "attn.masked_bias"),  # causal-mask buffers of old checkpoints
    optional_prefix=PREFIX,
    defaults={"tokenizer": "gpt2"},  # GPT-2's byte-level BPE, which zoo ships
    description="GPT-2: learned positions, Conv1D weights (GPT-2 small to XL)",
)
