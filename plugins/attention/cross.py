"""Cross-attention: decoder queries over encoder output (the 2017 Transformer's second sublayer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from zoo import Attention, Context, Range


class CrossAttention(Attention):
    """Queries from ``q_attn``, keys/values from the encoder via ``c_attn`` (GPT-2's cross names).

    Heads follow the model's ``attention.n_heads``. The encoder's keys and values are
    computed once per sequence and kept in ``ctx.memory_cache`` while decoding.
    """

    @dataclass
    class Options:
        bias: bool = True
        dropout: Annotated[float, Range(min=0, max=1, max_open=True)] = 0.0

    def __init__(self, spec, options, layer_index: int = 0) -> None:
        super().__init__(spec, options, layer_index)
        self.n_heads = spec.n_heads
        self.head_dim = spec.head_dim
        self.dropout = options.dropout
        self.q_attn = nn.Linear(spec.d_model, spec.d_model, bias=options.bias)
        self.c_attn = nn.Linear(spec.d_model, 2 * spec.d_model, bias=options.bias)
        self.c_proj = nn.Linear(spec.d_model, spec.d_model, bias=options.bias)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, S, D = memory.shape
        k, v = self.c_attn(memory).split(D, dim=-1)
        k = k.view(B, S, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, S, hd)
        v = v.view(B, S, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, S, hd)
        return k, v

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        B, T, D = x.shape
        q = self.q_attn(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        if ctx.memory_cache is not None:
            if self.layer_index not in ctx.memory_cache:
                ctx.memory_cache[self.layer_index] = self.memory_kv(ctx.memory)
            k, v = ctx.memory_cache[self.layer_index]
        else:
            k, v = self.memory_kv(ctx.memory)
        y = self.attend(q, k, v, ctx.memory_mask, False)  # (B, H, T, hd)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, D))

    def attend(self, q, k, v, mask, is_causal: bool) -> torch.Tensor:
        """softmax(q kᵀ / √d + mask) v over the encoder's keys; override to change how scores are formed."""
        dropout = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout)
