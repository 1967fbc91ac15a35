"""Rotary position embeddings (RoPE, Su et al. 2021): rotate query/key pairs by position."""

from dataclasses import dataclass
from typing import Annotated

import torch

from zoo import PositionalScheme, Range


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryPositions(PositionalScheme):
    """Rotates the first ``fraction`` of each head's dimensions (GPT-NeoX layout)."""

    @dataclass
    class Options:
        base: Annotated[float, Range(min=0, min_open=True)] = 10000.0
        fraction: Annotated[float, Range(min=0, max=1, min_open=True)] = 1.0  # share of each head's dimensions that rotate

    @staticmethod
    def check_spec(spec, options):
        if int(spec.head_dim * options.fraction) % 2:
            return f"rotary needs an even number of rotated dimensions per head, got {int(spec.head_dim * options.fraction)}"

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        dim = int(self.spec.head_dim * self.options.fraction)
        inv_freq = self.options.base ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
        angles = positions.to(torch.float32)[..., None] * inv_freq  # (B, T, dim/2)
        angles = torch.cat((angles, angles), dim=-1)[:, None]  # (B, 1, T, dim)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def rotate(self, q, k, positions):
        cos, sin = self.cos_sin(positions, q.dtype)
        dim = cos.shape[-1]

        def apply(x):  # (B, H, T, hd)
            x_rot, x_pass = x[..., :dim], x[..., dim:]
            return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)

        return apply(q), apply(k)
