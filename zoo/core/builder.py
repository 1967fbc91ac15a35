"""Spec → ``nn.Module``: construct the components, give the heavy layers storage, initialise.

:func:`assemble` puts the whole model on the meta device, so describing gpt2-xl costs no
memory. :func:`build` runs every component's constructor for real, so the values a
plugin's constructor gives its parameters and buffers are kept, but defers the layers
whose values random init replaces anyway (``nn.Linear``, ``nn.Embedding``) to the meta
device; they get storage once, in the target dtype, and then the spec's init scheme.
Building allocates each weight exactly once.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Iterator

import torch
from torch import nn

from zoo.core.limits import check_fits
from zoo.core.model import model_class
from zoo.core.spec import ModelSpec, load_spec


# The layers random init knows: their weights come from the spec's scheme, whatever
# their constructor drew. A subclass that defines its own reset_parameters() is not
# one of them; it is treated like any plugin module.
KNOWN_LAYERS = (nn.Linear, nn.Embedding)
_RESETS = {cls: cls.reset_parameters for cls in KNOWN_LAYERS}


def is_known_layer(module: nn.Module) -> bool:
    """An ``nn.Linear`` or ``nn.Embedding`` whose reset_parameters() is torch's own."""
    return any(isinstance(module, cls) and type(module).reset_parameters is _RESETS[cls] for cls in KNOWN_LAYERS)


def _skip_reset(self) -> None:
    """Stands in for a known layer's reset_parameters() while a model is constructed."""


def _on_meta(init):
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        if type(self).reset_parameters is _skip_reset:  # not a subclass with its own init
            kwargs["device"] = "meta"
        init(self, *args, **kwargs)

    return __init__


@contextlib.contextmanager
def known_layers_on_meta() -> Iterator[None]:
    """Construct ``nn.Linear`` and ``nn.Embedding`` on the meta device, with no init; every
    other module is constructed normally (on the current default device)."""
    saved = [(cls, cls.__init__) for cls in KNOWN_LAYERS]
    try:
        for cls, init in saved:
            cls.__init__ = _on_meta(init)
            cls.reset_parameters = _skip_reset
        yield
    finally:
        for cls, init in saved:
            cls.__init__ = init
            cls.reset_parameters = _RESETS[cls]


def construct(spec: ModelSpec, device: str | torch.device = "cpu") -> nn.Module:
    """The model with its components' constructor values on ``device`` and the known
    layers' weights still on the meta device (see :func:`materialize`)."""
    with torch.device(device), known_layers_on_meta():
        return model_class(spec)(spec)


def materialize(model: nn.Module, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """Cast to ``dtype``, then give every meta tensor uninitialised storage on ``device``
    (each once, in ``dtype``: a tied weight stays tied); tensors that hold values keep them."""
    model.to(dtype=dtype)
    fresh: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if tensor.is_meta:
                if id(tensor) not in fresh:
                    empty = torch.empty_like(tensor, device=device)
                    fresh[id(tensor)] = nn.Parameter(empty, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else empty
                setattr(module, name, fresh[id(tensor)])
    model.to(device=device)  # a constructor's tensors made elsewhere
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def init_weights(model: nn.Module, spec: ModelSpec) -> None:
    """Initialise in place: the spec's scheme for the known layers, then every other
    module's own ``reset_parameters()``, innermost first (so a component may re-initialise
    its sublayers); all other parameters and buffers keep their values.

    ``gpt2``: N(0, 0.02) for linear and embedding weights, residual projections
    (``c_proj``) scaled by 1/√(2·n_layers), zero biases (Radford et al., 2019).
    ``xavier``: Xavier-uniform linear weights, N(0, d_model^-½) embeddings (Vaswani et al., 2017).
    """
    n_layers = spec.n_layers + spec.n_decoder_layers
    modules = list(model.named_modules())
    with torch.no_grad():
        for name, module in modules:
            if not is_known_layer(module):
                continue
            if isinstance(module, nn.Linear):
                if spec.tie_embeddings and name == "lm_head":
                    continue
                if spec.init == "gpt2":
                    std = 0.02 / math.sqrt(2 * n_layers) if name.endswith("c_proj") else 0.02
                    nn.init.normal_(module.weight, std=std)
                else:
                    nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            else:
                std = 0.02 if spec.init == "gpt2" else spec.d_model ** -0.5
                nn.init.normal_(module.weight, std=std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
        for _, module in reversed(modules):
            reset = getattr(module, "reset_parameters", None)
            if callable(reset) and not is_known_layer(module):
                reset()


def build(spec: str | ModelSpec, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
          seed: int | None = None, **overrides) -> nn.Module:
    """Build a randomly initialised model from a registry name, spec path or spec.

    Keyword overrides use the spec's field names; nested fields take a mapping or a
    dotted key: ``build("gpt2", positional="rotary", attention={"n_kv_heads": 4})``.
    A seed fixes every draw, plugins' constructors and reset_parameters() included.
    """
    spec = load_spec(spec, overrides or None)
    check_fits(spec, device, dtype)  # a model that cannot fit is refused before anything is allocated
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = materialize(construct(spec, device), device, dtype)
        init_weights(model, spec)
    return model.eval()
