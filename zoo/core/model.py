"""The two model shapes the zoo assembles from registry components.

:class:`DecoderLM` is GPT-2 shaped (``wte``, ``positional``, ``h.{i}``, ``ln_f``,
``lm_head``); :class:`EncoderDecoder` is the 2017 Transformer (shared ``embed``,
``encoder``, ``decoder``, tied ``lm_head``). Neither knows which positional scheme,
attention, block layout, norm or MLP it holds: every component is looked up in the
registry by the name the spec gives, and positional schemes act through the three
methods of :class:`zoo.core.components.PositionalScheme`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zoo.core.cache import KVCache
from zoo.core.components import BlockParts, Context
from zoo.core.masks import build_mask, positions_from_mask
from zoo.core.registry import get_registry
from zoo.core.spec import ModelSpec


def make_component(spec: ModelSpec, field: str, **site) -> nn.Module:
    """Instantiate the component the spec names in ``field`` (e.g. ``"attention"``)."""
    component = getattr(spec, field)
    kind = "attention" if field == "cross_attention" else field
    cls = get_registry().get(kind, component.type)
    return cls(spec, component.options, **site)


class Stack(nn.Module):
    """A sequence of blocks, with the final norm that pre-norm layouts need."""

    def __init__(self, spec: ModelSpec, n_layers: int, causal: bool, cross: bool) -> None:
        super().__init__()
        self.causal = causal
        blocks = []
        for i in range(n_layers):
            parts = BlockParts(
                attention=make_component(spec, "attention", layer_index=i),
                mlp=make_component(spec, "mlp"),
                norm=lambda: make_component(spec, "norm"),
                cross_attention=make_component(spec, "cross_attention", layer_index=i) if cross else None,
                dropout=spec.dropout,
            )
            blocks.append(make_component(spec, "block", parts=parts))
        self.h = nn.ModuleList(blocks)
        self.ln_f = make_component(spec, "norm") if type(blocks[0]).final_norm else None

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        for block in self.h:
            x = block(x, ctx)
        return self.ln_f(x) if self.ln_f is not None else x


def _causal(spec: ModelSpec, default: bool) -> bool:
    causal = getattr(spec.attention.options, "causal", None)
    return default if causal is None else causal


class DecoderLM(nn.Module):
    """A decoder-only language model (GPT-2 and relatives)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.wte = nn.Embedding(spec.vocab_size, spec.d_model)
        self.positional = make_component(spec, "positional")
        self.drop = nn.Dropout(spec.dropout)
        self.stack = Stack(spec, spec.n_layers, causal=_causal(spec, True), cross=False)
        self.lm_head = nn.Linear(spec.d_model, spec.vocab_size, bias=False)
        self.embed_scale = math.sqrt(spec.d_model) if spec.scale_embeddings else 1.0
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.spec.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    @property
    def causal(self) -> bool:
        return self.stack.causal

    def new_cache(self, batch: int, capacity: int, **kw) -> KVCache:
        param = self.wte.weight
        kw.setdefault("dtype", param.dtype)
        kw.setdefault("device", param.device)
        return KVCache.for_spec(self.spec, batch, capacity, **kw)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, V) for ``input_ids`` (B, T).

        ``attention_mask`` (B, past + T) marks real tokens with 1 (left padding for
        batched generation); with a ``cache`` only the new tokens are given and the
        cache advances by T. ``last_only`` computes logits for the last position only.
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        device = input_ids.device
        if positions is None:
            positions = positions_from_mask(attention_mask, past, T, B, device)
        x = self.wte(input_ids)  # (B, T, D)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        x = self.drop(self.positional.embed(x, positions))
        bias = self.positional.attention_bias(
            torch.arange(past, past + T, device=device), torch.arange(past + T, device=device), self.causal
        )
        mask, is_causal = build_mask(T, past, attention_mask, self.causal, bias, x.dtype, device)
        ctx = Context(positions=positions, positional=self.positional, mask=mask, is_causal=is_causal, cache=cache)
        x = self.stack(x, ctx)  # (B, T, D)
        if cache is not None:
            cache.advance(T)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(x)  # (B, T, V)


class EncoderDecoder(nn.Module):
    """The 2017 Transformer: bidirectional encoder, causal decoder with cross-attention."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, spec.d_model)
        self.positional = make_component(spec, "positional")
        self.drop = nn.Dropout(spec.dropout)
        self.encoder = Stack(spec, spec.n_layers, causal=False, cross=False)
        self.decoder = Stack(spec, spec.n_decoder_layers, causal=_causal(spec, True), cross=True)
        self.lm_head = nn.Linear(spec.d_model, spec.vocab_size, bias=False)
        self.embed_scale = math.sqrt(spec.d_model) if spec.scale_embeddings else 1.0
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.spec.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def new_cache(self, batch: int, capacity: int, **kw) -> KVCache:
        param = self.embed.weight
        kw.setdefault("dtype", param.dtype)
        kw.setdefault("device", param.device)
        return KVCache.for_spec(self.spec, batch, capacity, **kw)

    def _embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        return self.drop(self.positional.embed(x, positions))

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output (B, S, D); ``src_mask`` (B, S) is 1 for real tokens (right padding)."""
        B, S = src_ids.shape
        device = src_ids.device
        positions = torch.arange(S, device=device).expand(B, S)
        x = self._embed(src_ids, positions)
        index = torch.arange(S, device=device)
        bias = self.positional.attention_bias(index, index, False)
        mask, _ = build_mask(S, 0, src_mask, False, bias, x.dtype, device)
        return self.encoder(x, Context(positions=positions, positional=self.positional, mask=mask))

    def decode(self, tgt_ids: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None = None,
               tgt_mask: torch.Tensor | None = None, cache: KVCache | None = None,
               last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, V) for target tokens given encoder ``memory``; with a ``cache``
        only new tokens are given and cross-attention keys/values are computed once."""
        B, T = tgt_ids.shape
        device = tgt_ids.device
        past = cache.length if cache is not None else 0
        positions = positions_from_mask(tgt_mask, past, T, B, device)
        x = self._embed(tgt_ids, positions)
        bias = self.positional.attention_bias(
            torch.arange(past, past + T, device=device), torch.arange(past + T, device=device), True
        )
        mask, is_causal = build_mask(T, past, tgt_mask, self.decoder.causal, bias, x.dtype, device)
        memory_mask = None if src_mask is None else src_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        ctx = Context(positions=positions, positional=self.positional, mask=mask, is_causal=is_causal,
                      cache=cache, memory=memory, memory_mask=memory_mask,
                      memory_cache=cache.memory if cache is not None else None)
        x = self.decoder(x, ctx)
        if cache is not None:
            cache.advance(T)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(x)

    def forward(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor, src_mask: torch.Tensor | None = None,
                tgt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, T, V)."""
        return self.decode(tgt_ids, self.encode(src_ids, src_mask), src_mask, tgt_mask)


def model_class(spec: ModelSpec) -> type[nn.Module]:
    return EncoderDecoder if spec.is_encoder_decoder else DecoderLM
