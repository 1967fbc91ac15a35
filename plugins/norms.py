"""Built-in norms: LayerNorm (Ba et al., 2016) and RMSNorm (Zhang & Sennrich, 2019)."""

from dataclasses import dataclass
from typing import Annotated

from torch import nn

from zoo import Norm, Range, hookimpl


class LayerNorm(Norm, nn.LayerNorm):
    @dataclass
    class Options:
        eps: Annotated[float, Range(min=0, min_open=True)] = 1e-5
        bias: bool = True

    def __init__(self, spec, options) -> None:
        super().__init__(spec.d_model, eps=options.eps, bias=options.bias)


class RMSNorm(Norm, nn.RMSNorm):
    @dataclass
    class Options:
        eps: Annotated[float, Range(min=0, min_open=True)] = 1e-6

    def __init__(self, spec, options) -> None:
        super().__init__(spec.d_model, eps=options.eps)


@hookimpl
def zoo_register_components(registry):
    registry.add("norm", "layer_norm", LayerNorm)
    registry.add("norm", "rms_norm", RMSNorm)
