"""The two model shapes the zoo assembles from registry components.

:class:`DecoderLM` is GPT-2 shaped (``wte``, ``positional``, ``h.{i}``, ``ln_f``,
``lm_head``); :class:`EncoderDecoder` is the 2017 Transformer (shared ``embed``,
``encoder``, ``decoder``, tied ``lm_head``). Neither knows which positional scheme,
attention, block layout, norm or MLP it holds: every component is looked up in the
registry by the name the spec gives, and positional schemes act through the three
methods of :class:`zoo.core.components.PositionalScheme`.

This is the one forward pass: the ONNX exporter traces these same methods, giving a
cache made of graph inputs (anything with ``length``, ``update`` and ``advance``, as
:class:`zoo.core.cache.KVCache` has), ``static_mask=True`` and a ``logit_index``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from zoo.core.cache import KVCache
from zoo.core.components import BlockParts, Context
from zoo.core.dropout import Dropout
from zoo.core.masks import build_mask, memory_mask, positions_from_mask
from zoo.core.registry import get_registry
from zoo.core.spec import ModelSpec


def make_component(spec: ModelSpec, field: str, **site) -> nn.Module:
    """Instantiate the component the spec names in ``field`` (e.g. ``"attention"``)."""
    component = getattr(spec, field)
    kind = "attention" if field == "cross_attention" else field
    cls = get_registry().get(kind, component.type)
    return cls(spec, component.options, **site)


class Stack(nn.Module):
    """A sequence of blocks, with the final norm that pre-norm layouts need.

    ``checkpointing``: in training, keep only each block's input and compute the block
    again in the backward pass (activation checkpointing: the memory of one block's
    activations instead of all of them, for about a third more compute)."""

    def __init__(self, spec: ModelSpec, n_layers: int, causal: bool, cross: bool) -> None:
        super().__init__()
        self.causal = causal
        self.checkpointing = False
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
        recompute = self.checkpointing and self.training and torch.is_grad_enabled()
        for block in self.h:
            x = checkpoint(block, x, ctx, use_reentrant=False) if recompute else block(x, ctx)
        return self.ln_f(x) if self.ln_f is not None else x


def _causal(spec: ModelSpec, default: bool) -> bool:
    causal = getattr(spec.attention.options, "causal", None)
    return default if causal is None else causal


def self_attention_context(positional: nn.Module, positions: torch.Tensor, past: int,
                           key_padding: torch.Tensor | None, causal: bool, dtype: torch.dtype,
                           static_mask: bool, **fields) -> Context:
    """The :class:`Context` of one pass over new tokens at ``positions`` (B, T) after
    ``past`` cached ones: the positional bias and the mask, built once for every layer."""
    T, device = positions.shape[1], positions.device
    q_index = torch.arange(past, past + T, device=device)  # (T,)
    k_index = torch.arange(past + T, device=device)  # (past + T,)
    bias = positional.attention_bias(q_index, k_index, causal)  # (1, H, T, past + T) or None
    mask, is_causal = build_mask(T, past, key_padding, causal, bias, dtype, device, static=static_mask)
    return Context(positions=positions, positional=positional, mask=mask, is_causal=is_causal, **fields)


def select_positions(x: torch.Tensor, last_only: bool, logit_index: torch.Tensor | None) -> torch.Tensor:
    """The hidden states (B, K, D) that logits are wanted for: all, the last, or ``logit_index`` (K,)."""
    if last_only:
        return x[:, -1:]  # (B, 1, D)
    if logit_index is not None:
        return x.index_select(1, logit_index)  # (B, K, D)
    return x


class LanguageModel(nn.Module):
    """What both shapes share: a token table (named ``table_name``), the positional scheme,
    embedding dropout, the LM head (tied to the table when the spec says so) and a cache."""

    table_name = "wte"

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        setattr(self, self.table_name, nn.Embedding(spec.vocab_size, spec.d_model))
        self.positional = make_component(spec, "positional")
        self.drop = Dropout(spec.dropout)
        self.embed_scale = math.sqrt(spec.d_model) if spec.scale_embeddings else 1.0

    @property
    def token_table(self) -> nn.Embedding:
        return getattr(self, self.table_name)

    def add_head(self) -> None:
        """The LM head, made last so that parameters keep GPT-2's order."""
        self.lm_head = nn.Linear(self.spec.d_model, self.spec.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.spec.tie_embeddings:
            self.lm_head.weight = self.token_table.weight

    def new_cache(self, batch: int, capacity: int, **kw) -> KVCache:
        param = self.token_table.weight
        kw.setdefault("dtype", param.dtype)
        kw.setdefault("device", param.device)
        return KVCache.for_spec(self.spec, batch, capacity, **kw)

    def embed_tokens(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Scaled token embeddings plus the positional scheme's (B, T, D)."""
        x = self.token_table(ids)  # (B, T, D)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        return self.drop(self.positional.embed(x, positions))


class DecoderLM(LanguageModel):
    """A decoder-only language model (GPT-2 and relatives)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.stack = Stack(spec, spec.n_layers, causal=_causal(spec, True), cross=False)
        self.add_head()

    @property
    def causal(self) -> bool:
        return self.stack.causal

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False, logit_index: torch.Tensor | None = None,
                static_mask: bool = False) -> torch.Tensor:
        """Logits (B, T, V) for ``input_ids`` (B, T).

        ``attention_mask`` (B, past + T) marks real tokens with 1 (left padding for
        batched generation); with a ``cache`` only the new tokens are given and the
        cache advances by T. ``last_only`` computes logits for the last position only,
        ``logit_index`` (K,) for those positions only (B, K, V). ``static_mask`` always
        builds the mask, never branching on tensor values (for export).
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if positions is None:
            positions = positions_from_mask(attention_mask, past, T, B, input_ids.device)
        x = self.embed_tokens(input_ids, positions)  # (B, T, D)
        ctx = self_attention_context(self.positional, positions, past, attention_mask, self.causal, x.dtype,
                                     static_mask, cache=cache)
        x = self.stack(x, ctx)  # (B, T, D)
        if cache is not None:
            cache.advance(T)
        return self.lm_head(select_positions(x, last_only, logit_index))  # (B, T or K, V)


class EncoderDecoder(LanguageModel):
    """The 2017 Transformer: bidirectional encoder, causal decoder with cross-attention."""

    table_name = "embed"

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.encoder = Stack(spec, spec.n_layers, causal=False, cross=False)
        self.decoder = Stack(spec, spec.n_decoder_layers, causal=_causal(spec, True), cross=True)
        self.add_head()

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor | None = None,
               static_mask: bool = False) -> torch.Tensor:
        """Encoder output (B, S, D); ``src_mask`` (B, S) is 1 for real tokens (right padding,
        so positions count from 0 in every row). ``static_mask`` as in :meth:`decode`."""
        B, S = src_ids.shape
        positions = positions_from_mask(None, 0, S, B, src_ids.device)  # (B, S)
        x = self.embed_tokens(src_ids, positions)  # (B, S, D)
        ctx = self_attention_context(self.positional, positions, 0, src_mask, self.encoder.causal, x.dtype,
                                     static_mask)
        return self.encoder(x, ctx)  # (B, S, D)

    def decode(self, tgt_ids: torch.Tensor, memory: torch.Tensor | None, src_mask: torch.Tensor | None = None,
               tgt_mask: torch.Tensor | None = None, cache: KVCache | None = None,
               last_only: bool = False, logit_index: torch.Tensor | None = None,
               static_mask: bool = False) -> torch.Tensor:
        """Logits (B, T, V) for target tokens given encoder ``memory``; with a ``cache``
        only new tokens are given and cross-attention keys/values are computed once
        (``memory`` may be None once ``cache.memory`` holds them). ``last_only`` and
        ``logit_index`` select positions as in :meth:`DecoderLM.forward`; ``static_mask``
        always builds the masks, never branching on tensor values (for export)."""
        B, T = tgt_ids.shape
        past = cache.length if cache is not None else 0
        positions = positions_from_mask(tgt_mask, past, T, B, tgt_ids.device)  # (B, T)
        x = self.embed_tokens(tgt_ids, positions)  # (B, T, D)
        ctx = self_attention_context(self.positional, positions, past, tgt_mask, self.decoder.causal, x.dtype,
                                     static_mask, cache=cache, memory=memory,
                                     memory_mask=memory_mask(src_mask, T, static_mask),
                                     memory_cache=cache.memory if cache is not None else None)
        x = self.decoder(x, ctx)  # (B, T, D)
        if cache is not None:
            cache.advance(T)
        return self.lm_head(select_positions(x, last_only, logit_index))  # (B, T or K, V)

    def cross_attention_kv(self, memory: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Every decoder layer's cross-attention keys and values for ``memory`` (B, S, D),
        by layer as a cache's ``memory`` holds them: each layer's cross-attention runs once
        on a one-token query and stores them in the memory cache it is given."""
        B = memory.shape[0]
        positions = positions_from_mask(None, 0, 1, B, memory.device)  # (B, 1)
        stored: dict = {}
        ctx = Context(positions=positions, positional=self.positional, memory=memory, memory_cache=stored)
        for block in self.decoder.h:
            block.crossattention(memory[:, :1], ctx)
        return stored

    def forward(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor, src_mask: torch.Tensor | None = None,
                tgt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, T, V)."""
        return self.decode(tgt_ids, self.encode(src_ids, src_mask), src_mask, tgt_mask)


def model_class(spec: ModelSpec) -> type[nn.Module]:
    return EncoderDecoder if spec.is_encoder_decoder else DecoderLM
