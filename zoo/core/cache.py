"""The key/value cache that incremental decoding and beam search fill layer by layer."""

from __future__ import annotations

import torch


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
