"""Built-in MLPs: GELU (exact and tanh, as GPT-2), ReLU (2017 paper), SwiGLU (Shazeer, 2020)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch.nn.functional as F
from torch import nn

from zoo import MLP, Range, hookimpl


@dataclass
class MLPOptions:
    d_ff: Annotated[int, Range(min=1)] | None = None  # hidden width; None: 4 * d_model
    bias: bool = True


class FeedForward(MLP):
    """``c_proj(act(c_fc(x)))`` with GPT-2's layer names."""

    Options = MLPOptions

    def __init__(self, spec, options) -> None:
        super().__init__()
        d_ff = options.d_ff or 4 * spec.d_model
        self.c_fc = nn.Linear(spec.d_model, d_ff, bias=options.bias)
        self.c_proj = nn.Linear(d_ff, spec.d_model, bias=options.bias)

    def activation(self, h):
        raise NotImplementedError

    def forward(self, x):
        return self.c_proj(self.activation(self.c_fc(x)))


class GeluMLP(FeedForward):
    def activation(self, h):
        return F.gelu(h)


class GeluTanhMLP(FeedForward):
    """GELU with the tanh approximation (GPT-2's ``gelu_new``)."""

    def activation(self, h):
        return F.gelu(h, approximate="tanh")


class ReluMLP(FeedForward):
    def activation(self, h):
        return F.relu(h)


class SwiGLU(MLP):
    """``c_proj(silu(gate) * up)`` with gate and up fused in ``c_fc``."""

    Options = MLPOptions

    def __init__(self, spec, options) -> None:
        super().__init__()
        d_ff = options.d_ff or 4 * spec.d_model
        self.c_fc = nn.Linear(spec.d_model, 2 * d_ff, bias=options.bias)
        self.c_proj = nn.Linear(d_ff, spec.d_model, bias=options.bias)

    def forward(self, x):
        gate, up = self.c_fc(x).chunk(2, dim=-1)
        return self.c_proj(F.silu(gate) * up)


MLPS = {"gelu": GeluMLP, "gelu_tanh": GeluTanhMLP, "relu": ReluMLP, "swiglu": SwiGLU}


@hookimpl
def zoo_register_components(registry):
    for name, mlp in MLPS.items():
        registry.add("mlp", name, mlp)
