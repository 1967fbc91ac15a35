"""The protocol every component plugin follows, and the per-forward context.

Every component is an ``nn.Module`` constructed as ``cls(spec, options, **site)``,
where ``options`` is an instance of the class's ``Options`` dataclass (validated when
the spec loads) and ``site`` carries where it sits (``causal=`` for self-attention).

Positional schemes may act in three places, and the model calls all three on every
scheme, so learned, sinusoidal, rotary and ALiBi fit without special cases:

* :meth:`PositionalScheme.embed` adds to the token embeddings (learned, sinusoidal);
* :meth:`PositionalScheme.rotate` turns queries and keys inside attention (rotary);
* :meth:`PositionalScheme.attention_bias` adds to attention scores (ALiBi).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn


@dataclass
class NoOptions:
    """Options of a component that takes none."""


class PositionalScheme(nn.Module):
    """Base class of positional plugins; each method defaults to doing nothing."""

    Options = NoOptions

    def __init__(self, spec, options) -> None:
        super().__init__()
        self.spec = spec
        self.options = options

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Add positions to token embeddings ``x`` (B, T, D) at ``positions`` (B, T)."""
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate queries and keys (B, H, T, hd) of the current tokens at ``positions`` (B, T)."""
        return q, k

    def attention_bias(self, q_index: torch.Tensor, k_index: torch.Tensor, causal: bool) -> torch.Tensor | None:
        """An additive score bias (1, H, Tq, Tk) from query and key sequence indices, or None."""
        return None


@dataclass
class BlockParts:
    """The sublayers a block arranges; the builder makes them from the spec."""

    attention: nn.Module
    mlp: nn.Module
    norm: Callable[[], nn.Module]  # a fresh norm each call
    cross_attention: nn.Module | None = None
    dropout: float = 0.0


class Block(nn.Module):
    """Holds ``attn``, ``mlp``, ``crossattention`` and their norms under GPT-2's names.

    Subclasses define ``forward(x, ctx)`` and say whether the stack needs a final norm
    (``final_norm``): pre-norm layouts leave the residual stream un-normalised.
    """

    Options = NoOptions
    final_norm = True

    def __init__(self, spec, options, parts: BlockParts) -> None:
        super().__init__()
        self.ln_1 = parts.norm()
        self.attn = parts.attention
        if parts.cross_attention is not None:
            self.ln_cross_attn = parts.norm()
            self.crossattention = parts.cross_attention
        else:
            self.crossattention = None
        self.ln_2 = parts.norm()
        self.mlp = parts.mlp
        self.dropout = nn.Dropout(parts.dropout)


class LayerCache(Protocol):
    """What self-attention needs from a key/value cache: store the new keys and values
    of one layer and return all keys and values seen so far."""

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class Context:
    """Everything attention needs besides its input, computed once per forward pass."""

    positions: torch.Tensor  # (B, T) position of each current token
    positional: PositionalScheme
    mask: torch.Tensor | None = None  # bool (allowed) or float (additive), broadcast to (B, H, Tq, Tk)
    is_causal: bool = False  # let SDPA apply the causal mask itself
    cache: LayerCache | None = None
    memory: torch.Tensor | None = None  # encoder output (B, S, D) for cross-attention
    memory_mask: torch.Tensor | None = None  # bool (B, 1, 1, S)
    memory_cache: dict | None = None  # layer -> precomputed cross-attention (k, v)


class KVCache:
    """A preallocated key/value cache for incremental decoding.

    Keys and values of layer ``i`` live in ``k[i]``/``v[i]`` of shape
    (B, n_kv_heads, capacity, head_dim); ``length`` tokens are filled. Storage grows
    by doubling if a sequence outruns ``capacity``.
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (batch, n_kv_heads, capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.length = 0
        self.memory: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # cross-attention k/v

    @classmethod
    def for_spec(cls, spec, batch: int, capacity: int, n_layers: int | None = None, **kw) -> "KVCache":
        layers = n_layers or (spec.n_decoder_layers if spec.is_encoder_decoder else spec.n_layers)
        return cls(layers, batch, spec.n_kv_heads, spec.head_dim, capacity, **kw)

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * self.capacity)
        for store in (self.k, self.v):
            for i, old in enumerate(store):
                new = old.new_zeros(*old.shape[:2], capacity, old.shape[3])
                new[:, :, : self.length] = old[:, :, : self.length]
                store[i] = new

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        if end > self.capacity:
            self._grow(end)
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """Mark ``n`` more tokens as stored (the model calls this after all layers ran)."""
        self.length += n

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows ``index`` (beam search)."""
        self.k = [k.index_select(0, index) for k in self.k]
        self.v = [v.index_select(0, index) for v in self.v]
        self.memory = {i: (k.index_select(0, index), v.index_select(0, index)) for i, (k, v) in self.memory.items()}


def build_mask(q_len: int, past: int, key_padding: torch.Tensor | None, causal: bool,
               bias: torch.Tensor | None, dtype: torch.dtype, device) -> tuple[torch.Tensor | None, bool]:
    """Combine causality, key padding and a positional bias into one SDPA mask.

    Returns ``(mask, is_causal)``; the mask is None where SDPA's own ``is_causal`` (or
    no mask) suffices, a bool "allowed" mask without bias, or an additive float mask.
    ``key_padding`` is (B, past + q_len), True for real tokens.
    """
    k_len = past + q_len
    if key_padding is not None and bool(key_padding.all()):
        key_padding = None
    if key_padding is None and bias is None:
        if not causal or q_len == 1:
            return None, False
        if past == 0:
            return None, True
    q_index = torch.arange(past, k_len, device=device)[:, None]
    k_index = torch.arange(k_len, device=device)[None, :]
    allowed = (k_index <= q_index) if causal else torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    allowed = allowed[None, None]  # (1, 1, Tq, Tk)
    if key_padding is not None:
        # a query always sees itself, so rows of padding never become all -inf (NaN)
        allowed = (allowed & key_padding[:, None, None, :].bool()) | (k_index == q_index)
    if bias is None:
        return allowed, False
    return bias.to(dtype).masked_fill(~allowed, float("-inf")), False
