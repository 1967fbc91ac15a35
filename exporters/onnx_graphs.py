"""The export-time forms of zoo models: plain tensors in, plain tensors out.

An ONNX graph cannot hold a Python cache object or branch on tensor values, so each
graph here re-states one of the model's passes with explicit tensors: past keys and
values come in as inputs and the grown ``present`` ones go out, the attention mask is
always built (never skipped when nothing is padded), and the logits are computed only
at the sequence indices in ``logit_index``, so prefill can ask for the last one.

A decoder-only model exports as one graph, ``decoder``. The encoder-decoder exports as
``encoder`` (source → memory), ``cross_attention_kv`` (memory → every decoder layer's
cross-attention keys and values, computed once per source) and ``decoder`` (which takes
those precomputed keys and values with ``--kv-cache``, or the memory itself without).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from zoo.core.components import Context

# Example sizes for tracing: all different, and none 0 or 1, so that no dynamic
# dimension is specialised or merged with another that happens to share its size.
EXAMPLE = {"batch": 2, "sequence": 5, "past_sequence": 7, "source_sequence": 11, "logit_positions": 3}


def example_size(dim: str | int) -> int:
    """The tracing size of a declared dimension: an int, a name or a sum of names."""
    return dim if isinstance(dim, int) else sum(EXAMPLE[part.strip()] for part in dim.split("+"))


class PastKeyValues:
    """A layer cache made of the graph's ``past_*`` inputs; ``update`` appends the new
    keys and values, and the results are the graph's ``present_*`` outputs."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        self.keys, self.values = list(keys), list(values)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[layer] = torch.cat((self.keys[layer], k), dim=2)  # (B, KV, past + T, hd)
        self.values[layer] = torch.cat((self.values[layer], v), dim=2)
        return self.keys[layer], self.values[layer]

    def interleaved(self) -> list[torch.Tensor]:
        return [t for pair in zip(self.keys, self.values) for t in pair]


def attention_mask_for_graph(key_padding: torch.Tensor, q_len: int, causal: bool, bias: torch.Tensor | None,
                             dtype: torch.dtype) -> torch.Tensor:
    """The mask :func:`zoo.core.components.build_mask` gives, always materialised.

    ``key_padding`` (B, past + q_len) is 1 for real tokens. Returns a bool "allowed"
    mask (B, 1, Tq, Tk), or an additive float mask when the positional scheme has a bias.
    """
    k_len = key_padding.shape[1]
    past = k_len - q_len
    q_index = torch.arange(q_len, device=key_padding.device)[:, None] + past  # (Tq, 1)
    k_index = torch.arange(k_len, device=key_padding.device)[None, :]  # (1, Tk)
    allowed = k_index <= q_index if causal else torch.ones(q_len, k_len, dtype=torch.bool, device=key_padding.device)
    # a query always sees itself, so rows of padding never become all -inf (NaN)
    allowed = (allowed[None, None] & key_padding.bool()[:, None, None, :]) | (k_index == q_index)  # (B, 1, Tq, Tk)
    if bias is None:
        return allowed
    return bias.to(dtype).masked_fill(~allowed, float("-inf"))  # (B, H, Tq, Tk)


def positions_for_graph(key_padding: torch.Tensor, q_len: int) -> torch.Tensor:
    """Positions (B, q_len) of the current tokens; left padding shifts each row."""
    positions = key_padding.long().cumsum(-1) - 1  # (B, past + T)
    return positions.clamp(min=0)[:, key_padding.shape[1] - q_len:]


def embed_tokens(model: nn.Module, table: nn.Embedding, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Token embeddings, scaled as the spec says, plus the positional scheme's embedding."""
    x = table(ids)  # (B, T, D)
    if model.embed_scale != 1.0:
        x = x * model.embed_scale
    return model.positional.embed(x, positions)


def mask_with_bias(model: nn.Module, key_padding: torch.Tensor, q_len: int, causal: bool, dtype) -> torch.Tensor:
    k_len = key_padding.shape[1]
    index = torch.arange(k_len, device=key_padding.device)
    bias = model.positional.attention_bias(index[k_len - q_len:], index, causal)
    return attention_mask_for_graph(key_padding, q_len, causal, bias, dtype)


class ExportGraph(nn.Module):
    """One graph to export: its inputs and outputs by name, with symbolic dimensions.

    ``inputs``/``outputs`` are ``(name, dims)`` pairs where each dim is a name from
    :data:`EXAMPLE` (dynamic), an int (static) or a ``"+"``-joined sum of names.
    """

    name = "graph"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.spec = model.spec

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def inputs(self) -> list[tuple[str, tuple]]:
        raise NotImplementedError

    def outputs(self) -> list[tuple[str, tuple]]:
        raise NotImplementedError

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """Random tensors of the :data:`EXAMPLE` sizes for every input, in order."""
        examples = []
        for name, dims in self.inputs():
            shape = [example_size(d) for d in dims]
            if name.endswith("_ids"):
                examples.append(torch.randint(0, self.spec.vocab_size, shape, device=self.device))
            elif name.endswith("_mask"):
                examples.append(torch.ones(shape, dtype=torch.int64, device=self.device))
            elif name == "logit_index":
                examples.append(torch.arange(shape[0], device=self.device))
            else:
                examples.append(torch.randn(shape, dtype=self.dtype, device=self.device))
        return tuple(examples)

    def dynamic_shapes(self) -> dict:
        """For ``torch.export``: every named dimension is dynamic, arranged by the
        parameters of ``forward`` (a ``*rest`` parameter takes the remaining inputs)."""
        dynamic = torch.export.Dim.DYNAMIC
        shapes = [{i: dynamic for i, d in enumerate(dims) if isinstance(d, str)} for _, dims in self.inputs()]
        out = {}
        for param in inspect.signature(self.forward).parameters.values():
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                if shapes:
                    out[param.name] = tuple(shapes)
                break
            out[param.name] = shapes.pop(0)
        return out

    def kv_dims(self, length: str) -> tuple:
        return ("batch", self.spec.n_kv_heads, length, self.spec.head_dim)


class DecoderGraph(ExportGraph):
    """A decoder-only LM: ``input_ids``, ``attention_mask`` (B, past + T), ``logit_index``
    and, with a cache, ``past_key_{i}``/``past_value_{i}`` → ``logits`` (B, K, V) and
    ``present_key_{i}``/``present_value_{i}``. An empty past serves prefill."""

    name = "decoder"

    def __init__(self, model: nn.Module, kv_cache: bool) -> None:
        super().__init__(model)
        self.kv_cache = kv_cache
        self.n_layers = self.spec.n_layers

    def inputs(self):
        total = "past_sequence + sequence" if self.kv_cache else "sequence"
        names = [("input_ids", ("batch", "sequence")), ("attention_mask", ("batch", total)),
                 ("logit_index", ("logit_positions",))]
        if self.kv_cache:
            for i in range(self.n_layers):
                names += [(f"past_key_{i}", self.kv_dims("past_sequence")), (f"past_value_{i}", self.kv_dims("past_sequence"))]
        return names

    def outputs(self):
        names = [("logits", ("batch", "logit_positions", self.spec.vocab_size))]
        if self.kv_cache:
            for i in range(self.n_layers):
                total = self.kv_dims("past_sequence + sequence")
                names += [(f"present_key_{i}", total), (f"present_value_{i}", total)]
        return names

    def forward(self, input_ids, attention_mask, logit_index, *past):
        model = self.model
        T = input_ids.shape[1]
        positions = positions_for_graph(attention_mask, T)  # (B, T)
        x = embed_tokens(model, model.wte, input_ids, positions)  # (B, T, D)
        cache = PastKeyValues(past[0::2], past[1::2]) if self.kv_cache else None
        mask = mask_with_bias(model, attention_mask, T, model.causal, x.dtype)
        ctx = Context(positions=positions, positional=model.positional, mask=mask, cache=cache)
        x = model.stack(x, ctx)  # (B, T, D)
        logits = model.lm_head(x.index_select(1, logit_index))  # (B, K, V)
        return (logits, *cache.interleaved()) if cache is not None else logits


class EncoderGraph(ExportGraph):
    """The encoder: ``src_ids``, ``src_mask`` (B, S; 1 = real token) → ``memory`` (B, S, D)."""

    name = "encoder"

    def inputs(self):
        return [("src_ids", ("batch", "source_sequence")), ("src_mask", ("batch", "source_sequence"))]

    def outputs(self):
        return [("memory", ("batch", "source_sequence", self.spec.d_model))]

    def forward(self, src_ids, src_mask):
        model = self.model
        S = src_ids.shape[1]
        positions = torch.arange(S, device=src_ids.device).expand(src_ids.shape[0], S)  # (B, S)
        x = embed_tokens(model, model.embed, src_ids, positions)  # (B, S, D)
        mask = mask_with_bias(model, src_mask, S, False, x.dtype)
        return model.encoder(x, Context(positions=positions, positional=model.positional, mask=mask))


class CrossAttentionCacheMissing(Exception):
    """A cross-attention plugin did not store its keys/values in ``ctx.memory_cache``."""

    def __init__(self, cls: type) -> None:
        super().__init__(f"{cls.__qualname__} does not keep the encoder's keys and values in "
                         "ctx.memory_cache, which --kv-cache needs; export without --kv-cache")
        self.component_class = cls


class CrossAttentionKVGraph(ExportGraph):
    """``memory`` → ``memory_key_{i}``/``memory_value_{i}`` for every decoder layer.

    Each layer's cross-attention plugin is run once on a dummy query with an empty
    ``ctx.memory_cache``; whatever keys and values the plugin stores there become the
    outputs, so any plugin that follows the memory-cache protocol exports.
    """

    name = "cross_attention_kv"

    def inputs(self):
        return [("memory", ("batch", "source_sequence", self.spec.d_model))]

    def outputs(self):
        dims = ("batch", self.spec.n_heads, "source_sequence", self.spec.head_dim)
        return [(f"memory_{part}_{i}", dims) for i in range(self.spec.n_decoder_layers) for part in ("key", "value")]

    def forward(self, memory):
        model = self.model
        B = memory.shape[0]
        query = memory[:, :1]  # (B, 1, D), the plugins' query path is pruned from the graph
        positions = torch.zeros(B, 1, dtype=torch.long, device=memory.device)
        stored: dict = {}
        ctx = Context(positions=positions, positional=model.positional, memory=memory, memory_cache=stored)
        for block in model.decoder.h:
            block.crossattention(query, ctx)
        if len(stored) != len(model.decoder.h):
            raise CrossAttentionCacheMissing(type(model.decoder.h[0].crossattention))
        return tuple(t for i in sorted(stored) for t in stored[i])


class Seq2SeqDecoderGraph(ExportGraph):
    """The encoder-decoder's decoder: ``tgt_ids``, ``tgt_mask`` (B, past + T),
    ``src_mask``, ``logit_index`` and either ``memory`` (no cache) or the precomputed
    ``memory_key_{i}``/``memory_value_{i}`` with ``past_key_{i}``/``past_value_{i}``
    → ``logits`` (and ``present_key_{i}``/``present_value_{i}``)."""

    name = "decoder"

    def __init__(self, model: nn.Module, kv_cache: bool) -> None:
        super().__init__(model)
        self.kv_cache = kv_cache
        self.n_layers = self.spec.n_decoder_layers

    def inputs(self):
        total = "past_sequence + sequence" if self.kv_cache else "sequence"
        names = [("tgt_ids", ("batch", "sequence")), ("tgt_mask", ("batch", total)),
                 ("src_mask", ("batch", "source_sequence")), ("logit_index", ("logit_positions",))]
        if not self.kv_cache:
            return names + [("memory", ("batch", "source_sequence", self.spec.d_model))]
        memory_dims = ("batch", self.spec.n_heads, "source_sequence", self.spec.head_dim)
        for i in range(self.n_layers):
            names += [(f"past_key_{i}", self.kv_dims("past_sequence")), (f"past_value_{i}", self.kv_dims("past_sequence"))]
        for i in range(self.n_layers):
            names += [(f"memory_key_{i}", memory_dims), (f"memory_value_{i}", memory_dims)]
        return names

    def outputs(self):
        names = [("logits", ("batch", "logit_positions", self.spec.vocab_size))]
        if self.kv_cache:
            for i in range(self.n_layers):
                total = self.kv_dims("past_sequence + sequence")
                names += [(f"present_key_{i}", total), (f"present_value_{i}", total)]
        return names

    def forward(self, tgt_ids, tgt_mask, src_mask, logit_index, *rest):
        model = self.model
        T = tgt_ids.shape[1]
        positions = positions_for_graph(tgt_mask, T)  # (B, T)
        x = embed_tokens(model, model.embed, tgt_ids, positions)  # (B, T, D)
        mask = mask_with_bias(model, tgt_mask, T, model.decoder.causal, x.dtype)
        # (B, 1, T, S): ONNX Runtime's Attention wants the query axis spelled out
        memory_mask = src_mask.bool()[:, None, None, :].expand(-1, -1, T, -1)
        if self.kv_cache:
            past, memory_kv = rest[: 2 * self.n_layers], rest[2 * self.n_layers:]
            cache = PastKeyValues(past[0::2], past[1::2])
            memory_cache = {i: (memory_kv[2 * i], memory_kv[2 * i + 1]) for i in range(self.n_layers)}
            ctx = Context(positions=positions, positional=model.positional, mask=mask, cache=cache,
                          memory_mask=memory_mask, memory_cache=memory_cache)
        else:
            cache = None
            ctx = Context(positions=positions, positional=model.positional, mask=mask, memory=rest[0],
                          memory_mask=memory_mask)
        x = model.decoder(x, ctx)  # (B, T, D)
        logits = model.lm_head(x.index_select(1, logit_index))  # (B, K, V)
        return (logits, *cache.interleaved()) if cache is not None else logits


def graphs_for(model: nn.Module, kv_cache: bool) -> list[ExportGraph]:
    """The graphs a model exports as, in the order they run."""
    if model.spec.is_encoder_decoder:
        graphs = [EncoderGraph(model)]
        if kv_cache:
            graphs.append(CrossAttentionKVGraph(model))
        return graphs + [Seq2SeqDecoderGraph(model, kv_cache)]
    return [DecoderGraph(model, kv_cache)]
