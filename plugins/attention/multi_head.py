"""Multi-head self-attention; ``n_kv_heads`` < ``n_heads`` gives grouped- or multi-query attention.

Causal or bidirectional is decided by the mask in the forward context, which the model
builds once per pass; ``scaled_dot_product_attention`` is the fast path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from zoo import Attention, Context, Range


class MultiHeadAttention(Attention):
    """Self-attention with fused q/k/v projection ``c_attn`` and output ``c_proj`` (GPT-2 names)."""

    @dataclass
    class Options(Attention.Options):  # n_heads, n_kv_heads
        bias: bool = True
        dropout: Annotated[float, Range(min=0, max=1, max_open=True)] = 0.0
        causal: bool | None = None  # None: causal in a decoder, bidirectional in an encoder
        out_bias: bool | None = None  # bias of c_proj; None: as ``bias`` (Qwen2 has q/k/v biases only)

    def __init__(self, spec, options, layer_index: int = 0) -> None:
        super().__init__(spec, options, layer_index)
        self.n_heads = options.n_heads
        self.n_kv_heads = options.n_kv_heads or options.n_heads
        self.head_dim = spec.d_model // options.n_heads
        self.dropout = options.dropout
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.c_attn = nn.Linear(spec.d_model, q_dim + 2 * kv_dim, bias=options.bias)
        out_bias = options.bias if options.out_bias is None else options.out_bias
        self.c_proj = nn.Linear(q_dim, spec.d_model, bias=out_bias)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        B, T, _ = x.shape
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        q, k, v = self.c_attn(x).split((q_dim, kv_dim, kv_dim), dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        q, k = ctx.positional.rotate(q, k, ctx.positions)
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer_index, k, v)  # (B, KV, past + T, hd)
        if self.n_kv_heads != self.n_heads and getattr(self.attend, "__func__", None) is not MultiHeadAttention.attend:
            # an override of attend (or one set on the instance) gets every query head's keys and values;
            # the built-in one shares each key/value head among its group in SDPA instead of copying the
            # cache g times a step
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)  # (B, H, Tk, hd)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        y = self.attend(q, k, v, ctx.mask, ctx.is_causal)  # (B, H, T, hd)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, q_dim))

    def attend(self, q, k, v, mask, is_causal: bool) -> torch.Tensor:
        """softmax(q kᵀ / √d + mask) v, q (B, H, T, hd) and k, v (B, KV, Tk, hd) with KV dividing H;
        override to change how scores are formed (an override is given k and v with H heads)."""
        dropout = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout,
                                              enable_gqa=k.shape[1] != q.shape[1])
