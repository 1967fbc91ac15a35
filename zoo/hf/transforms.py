"""Tensor transforms between a Hugging Face checkpoint's layout and the zoo's.

A checkpoint format's weight table maps each zoo parameter (a name pattern with ``{i}``
for the layer) to one transform, which names the Hugging Face tensors it is made of and
converts both ways. ``to_hf`` on meta tensors gives the shapes a checkpoint must have,
so shapes are checked before any data is read; every transform is a reshaping, so a
round trip is bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Same:
    """One Hugging Face tensor, stored as the zoo stores it."""

    name: str

    def sources(self) -> tuple[str, ...]:
        return (self.name,)

    def to_zoo(self, tensors: list[torch.Tensor], spec) -> torch.Tensor:
        return tensors[0]

    def to_hf(self, tensor: torch.Tensor, spec) -> list[torch.Tensor]:
        return [tensor]


@dataclass(frozen=True)
class Transposed(Same):
    """GPT-2's Conv1D: stored ``[in, out]`` where ``nn.Linear`` keeps ``[out, in]``."""

    def to_zoo(self, tensors, spec):
        return tensors[0].t()  # a view: no copy

    def to_hf(self, tensor, spec):
        return [tensor.t()]


@dataclass(frozen=True)
class Fused:
    """Separate Hugging Face tensors (``q_proj``, ``k_proj``, ``v_proj``; ``gate_proj``,
    ``up_proj``) concatenated along dim 0 into one zoo tensor; ``sizes(spec)`` gives each
    part's rows."""

    names: tuple[str, ...]
    sizes: Callable

    def sources(self) -> tuple[str, ...]:
        return self.names

    def to_zoo(self, tensors, spec):
        return torch.cat(tensors, dim=0)

    def to_hf(self, tensor, spec):
        return list(tensor.split(self.sizes(spec), dim=0))


@dataclass(frozen=True)
class HeadInterleaved(Same):
    """GPT-NeoX's ``query_key_value``: rows laid out ``[heads, parts, head_dim]``, where the
    zoo's fused projection keeps ``[parts, heads, head_dim]`` (all queries, then keys, then values)."""

    parts: int = 3

    def to_zoo(self, tensors, spec):
        x = tensors[0]  # (H * 3 * hd, ...) in [H, 3, hd] order
        rest = x.shape[1:]
        return x.reshape(spec.n_heads, self.parts, spec.head_dim, *rest).transpose(0, 1).reshape(x.shape)

    def to_hf(self, tensor, spec):
        rest = tensor.shape[1:]
        return [tensor.reshape(self.parts, spec.n_heads, spec.head_dim, *rest).transpose(0, 1).reshape(tensor.shape)]


def qkv_sizes(spec) -> tuple[int, int, int]:
    """Rows of the query, key and value projections."""
    return spec.n_heads * spec.head_dim, spec.n_kv_heads * spec.head_dim, spec.n_kv_heads * spec.head_dim


def halves(spec) -> tuple[int, int]:
    """Rows of SwiGLU's gate and up projections."""
    return spec.d_ff, spec.d_ff


@dataclass(frozen=True)
class Permuted:
    """Another transform's tensors with the model-width axis reordered: ``axis`` 1 for a layer
    that reads the residual stream (weight columns), 0 for one that writes or normalises it
    (weight rows, bias, gain). ``order(spec)`` gives the permutation: Hugging Face's channel
    ``j`` holds the zoo's ``order[j]`` (Marian's sines-then-cosines, see the ``marian`` format)."""

    inner: object
    axis: int
    order: Callable

    def sources(self) -> tuple[str, ...]:
        return self.inner.sources()

    def to_zoo(self, tensors, spec):
        inverse = torch.argsort(self.order(spec))
        return self.inner.to_zoo([t.index_select(self.axis, inverse.to(t.device)) for t in tensors], spec)

    def to_hf(self, tensor, spec):
        order = self.order(spec)
        return [t.index_select(self.axis, order.to(t.device)) for t in self.inner.to_hf(tensor, spec)]


@dataclass(frozen=True)
class Copies:
    """One zoo tensor stored under several Hugging Face names, each a copy (Marian's shared
    table and its encoder and decoder copies, written when the output layer is untied)."""

    names: tuple[str, ...]

    def sources(self) -> tuple[str, ...]:
        return self.names

    def to_zoo(self, tensors, spec):
        from zoo.errors import WeightsError

        if any(not torch.equal(t, tensors[0]) for t in tensors[1:]):
            raise WeightsError(f"{', '.join(self.names)} differ; the zoo keeps one table for them all")
        return tensors[0]

    def to_hf(self, tensor, spec):
        return [tensor] * len(self.names)
