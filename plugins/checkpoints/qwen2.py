"""Qwen2 (``Qwen2ForCausalLM``): Llama's layout with biases on q, k and v (not on the output)."""

from zoo import CheckpointFormat
from zoo.plugins.checkpoints.llama import LAYER, TEMPLATE, decoder_fields, decoder_weights
from zoo.hf.transforms import Fused, qkv_sizes

ATTN = LAYER + "self_attn."

QWEN2 = CheckpointFormat(
    model_type="qwen2",
    architecture="Qwen2ForCausalLM",
    weights={
        **decoder_weights(),
        "stack.h.{i}.attn.c_attn.bias": Fused((ATTN + "q_proj.bias", ATTN + "k_proj.bias", ATTN + "v_proj.bias"),
                                              qkv_sizes),
    },
    template={**TEMPLATE, "attention": {"type": "multi_head", "n_heads": 32, "bias": True, "out_bias": False}},
    fields=decoder_fields(),
    fixed={"hidden_act": "silu", "use_sliding_window": False},
    ignored=(ATTN + "rotary_emb.inv_freq",),
    description="Qwen2: Llama with q/k/v biases (Qwen2, Qwen2.5)",
)
