"""Learned absolute position embeddings, as in GPT-2 (``wpe``)."""

import torch
from torch import nn

from zoo import PositionalScheme


class LearnedPositions(PositionalScheme):
    """A trained vector per position, added to the token embeddings."""

    def __init__(self, spec, options) -> None:
        super().__init__(spec, options)
        self.weight = nn.Parameter(torch.empty(spec.context_length, spec.d_model))

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=0.02)

    def embed(self, x, positions):
        return x + self.weight[positions]  # (B, T, D)
