"""What every block layout shares: its sublayers, made by the builder from the spec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from zoo.components import NoOptions


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
