"""Fixed sinusoidal encodings from "Attention Is All You Need" (Vaswani et al., 2017)."""

import math
from dataclasses import dataclass
from typing import Annotated

import torch

from zoo import PositionalScheme, Range


def sinusoid_table(positions: torch.Tensor, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(...); (..., d_model)."""
    half = torch.arange(0, d_model, 2, device=positions.device, dtype=torch.float32)
    inv_freq = torch.exp(-math.log(base) * half / d_model)  # (d/2,)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (..., d/2)
    table = torch.stack((angles.sin(), angles.cos()), dim=-1)  # (..., d/2, 2)
    return table.flatten(-2)[..., :d_model]


class SinusoidalPositions(PositionalScheme):
    """Adds the fixed sinusoid table to the token embeddings; no parameters."""

    @dataclass
    class Options:
        base: Annotated[float, Range(min=0, min_open=True)] = 10000.0

    @staticmethod
    def check_spec(spec, options):
        if spec.d_model % 2:
            return f"sinusoidal positions need an even d_model, got {spec.d_model}"

    def embed(self, x, positions):
        return x + sinusoid_table(positions, x.shape[-1], self.options.base).to(x.dtype)
