"""The export-time forms of zoo models: plain tensors in, plain tensors out.

Each graph is traced from the model's own pass (:meth:`DecoderLM.forward`,
:meth:`EncoderDecoder.encode` / ``decode``); only its edges are adapted. An ONNX graph
cannot hold a Python cache object, so :class:`PastKeyValues` stands in for the cache:
past keys and values come in as inputs and the grown ``present`` ones go out. The
model is asked for ``static_mask=True`` (the mask is always built, never skipped when
nothing is padded). The names are the shared ones of Optimum, transformers.js and
onnxruntime-genai (``input_ids``, ``attention_mask``, ``past_key_values.{i}.key`` /
``.value`` → ``logits`` for every position, ``present.{i}.key`` / ``.value``), and no
input is zoo's own, so those clients run the decoder as it is; positions come from the
cumulative sum of ``attention_mask``, so left, right and interior padding all work.

A decoder-only model exports as one graph, ``decoder``. The encoder-decoder exports as
``encoder`` (source → memory), ``cross_attention_kv`` (memory → every decoder layer's
cross-attention keys and values, computed once per source) and ``decoder`` (which takes
those precomputed keys and values with ``--kv-cache``, or the memory itself without).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn


# Example sizes for tracing: all different, and none 0 or 1, so that no dynamic
# dimension is specialised or merged with another that happens to share its size.
EXAMPLE = {"batch": 2, "sequence": 5, "past_sequence": 7, "source_sequence": 11}


def example_size(dim: str | int) -> int:
    """The tracing size of a declared dimension: an int, a name or a sum of names."""
    return dim if isinstance(dim, int) else sum(EXAMPLE[part.strip()] for part in dim.split("+"))


# The decoder's optional input (int64, shape (1,), default 0): the first position that gets logits,
# counted from the end when negative (-1: the last only); the logits' sequence dimension follows it.
LOGITS_START = "logits_start"
LOGITS_SEQUENCE = "logits_sequence"


def past_name(layer: int, part: str) -> str:
    """The input holding layer ``layer``'s past ``part`` (``key`` or ``value``)."""
    return f"past_key_values.{layer}.{part}"


def present_name(layer: int, part: str) -> str:
    """The output holding layer ``layer``'s grown ``part`` (``key`` or ``value``)."""
    return f"present.{layer}.{part}"


class PastKeyValues:
    """A layer cache made of the graph's ``past_key_values.*`` inputs; ``update`` appends
    the new keys and values, and the results are the graph's ``present.*`` outputs.

    ``length`` is the past inputs' (symbolic) sequence length, so the model counts
    positions as it does with :class:`zoo.core.cache.KVCache`; ``memory`` holds the
    precomputed cross-attention keys and values by layer.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor],
                 memory: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        self.keys, self.values = list(keys), list(values)
        self.length = self.keys[0].shape[2]
        self.memory = memory

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[layer] = torch.cat((self.keys[layer], k), dim=2)  # (B, KV, past + T, hd)
        self.values[layer] = torch.cat((self.values[layer], v), dim=2)
        return self.keys[layer], self.values[layer]

    def advance(self, n: int) -> None:
        self.length = self.length + n

    def interleaved(self) -> list[torch.Tensor]:
        return [t for pair in zip(self.keys, self.values) for t in pair]


class ExportGraph(nn.Module):
    """One graph to export: its inputs and outputs by name, with symbolic dimensions.

    ``inputs``/``outputs`` are ``(name, dims)`` pairs where each dim is a name from
    :data:`EXAMPLE` (dynamic), an int (static) or a ``"+"``-joined sum of names.
    """

    name = "graph"
    selects_logits = False  # the exporter adds the optional input logits_start (see exporter.select_logit_positions)

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


class CachedGraph(ExportGraph):
    """A graph that returns logits and, with ``kv_cache``, takes each layer's past keys and
    values and returns the present ones (an empty past serves prefill)."""

    name = "decoder"

    def __init__(self, model: nn.Module, kv_cache: bool, n_layers: int) -> None:
        super().__init__(model)
        self.kv_cache = kv_cache
        self.n_layers = n_layers

    def past_inputs(self) -> list[tuple[str, tuple]]:
        past = self.kv_dims("past_sequence")
        return [(past_name(i, part), past) for i in range(self.n_layers) for part in ("key", "value")]

    def outputs(self):
        names = [("logits", ("batch", "sequence", self.spec.vocab_size))]
        if self.kv_cache:
            total = self.kv_dims("past_sequence + sequence")
            names += [(present_name(i, part), total) for i in range(self.n_layers) for part in ("key", "value")]
        return names


class DecoderGraph(CachedGraph):
    """A decoder-only LM: ``input_ids``, ``attention_mask`` (B, past + T) and, with a
    cache, ``past_key_values.{i}.key``/``.value`` → ``logits`` (B, T, V) and
    ``present.{i}.key``/``.value``. An empty past serves prefill. The saved graph also takes
    the optional ``logits_start``, so that prefill can ask for the last position's logits only."""

    selects_logits = True

    def __init__(self, model: nn.Module, kv_cache: bool) -> None:
        super().__init__(model, kv_cache, model.spec.n_layers)

    def inputs(self):
        total = "past_sequence + sequence" if self.kv_cache else "sequence"
        names = [("input_ids", ("batch", "sequence")), ("attention_mask", ("batch", total))]
        return names + self.past_inputs() if self.kv_cache else names

    def forward(self, input_ids, attention_mask, *past):
        cache = PastKeyValues(past[0::2], past[1::2]) if self.kv_cache else None
        logits = self.model(input_ids, attention_mask, cache=cache, static_mask=True)  # (B, T, V)
        return (logits, *cache.interleaved()) if cache is not None else logits


class EncoderGraph(ExportGraph):
    """The encoder: ``src_ids``, ``src_mask`` (B, S; 1 = real token) → ``memory`` (B, S, D)."""

    name = "encoder"

    def inputs(self):
        return [("src_ids", ("batch", "source_sequence")), ("src_mask", ("batch", "source_sequence"))]

    def outputs(self):
        return [("memory", ("batch", "source_sequence", self.spec.d_model))]

    def forward(self, src_ids, src_mask):
        return self.model.encode(src_ids, src_mask, static_mask=True)  # (B, S, D)


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
        stored = self.model.cross_attention_kv(memory)
        if len(stored) != self.spec.n_decoder_layers:
            raise CrossAttentionCacheMissing(type(self.model.decoder.h[0].crossattention))
        return tuple(t for i in sorted(stored) for t in stored[i])


class Seq2SeqDecoderGraph(CachedGraph):
    """The encoder-decoder's decoder: ``tgt_ids``, ``tgt_mask`` (B, past + T),
    ``src_mask`` and either ``memory`` (no cache) or the precomputed
    ``memory_key_{i}``/``memory_value_{i}`` with ``past_key_values.{i}.key``/``.value``
    → ``logits`` (B, T, V) (and ``present.{i}.key``/``.value``)."""

    def __init__(self, model: nn.Module, kv_cache: bool) -> None:
        super().__init__(model, kv_cache, model.spec.n_decoder_layers)

    def inputs(self):
        total = "past_sequence + sequence" if self.kv_cache else "sequence"
        names = [("tgt_ids", ("batch", "sequence")), ("tgt_mask", ("batch", total)),
                 ("src_mask", ("batch", "source_sequence"))]
        if not self.kv_cache:
            return names + [("memory", ("batch", "source_sequence", self.spec.d_model))]
        memory_dims = ("batch", self.spec.n_heads, "source_sequence", self.spec.head_dim)
        memory = [(f"memory_{part}_{i}", memory_dims) for i in range(self.n_layers) for part in ("key", "value")]
        return names + self.past_inputs() + memory

    def forward(self, tgt_ids, tgt_mask, src_mask, *rest):
        if self.kv_cache:
            past, memory_kv = rest[: 2 * self.n_layers], rest[2 * self.n_layers:]
            memory_cache = {i: (memory_kv[2 * i], memory_kv[2 * i + 1]) for i in range(self.n_layers)}
            cache, memory = PastKeyValues(past[0::2], past[1::2], memory_cache), None
        else:
            cache, memory = None, rest[0]
        logits = self.model.decode(tgt_ids, memory, src_mask, tgt_mask, cache=cache, static_mask=True)  # (B, T, V)
        return (logits, *cache.interleaved()) if cache is not None else logits


def graphs_for(model: nn.Module, kv_cache: bool) -> list[ExportGraph]:
    """The graphs a model exports as, in the order they run."""
    if model.spec.is_encoder_decoder:
        graphs = [EncoderGraph(model)]
        if kv_cache:
            graphs.append(CrossAttentionKVGraph(model))
        return graphs + [Seq2SeqDecoderGraph(model, kv_cache)]
    return [DecoderGraph(model, kv_cache)]
