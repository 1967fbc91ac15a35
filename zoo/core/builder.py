"""Spec → ``nn.Module``: assemble on the meta device, give every tensor storage, initialise.

:func:`zoo.core.meta.assemble` runs every component's constructor on the meta device, so
describing gpt2-xl costs no memory and building allocates each weight exactly once.
:func:`build` then gives each tensor storage in the target device and dtype and
initialises: the spec's scheme for ``nn.Linear`` and ``nn.Embedding``, every other module's
``reset_parameters()`` (as timm and litgpt build). Nothing of torch is replaced: the
per-thread :class:`zoo.core.meta.InitMode` skips initialisation on the meta device and, with
a seed, gives the build a ``torch.Generator`` of its own, so two builds in two threads give
the tensors they give one after the other.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zoo.core.components import Attention, MLP
from zoo.core.limits import check_fits
from zoo.core.meta import InitMode, assemble
from zoo.core.spec import ModelSpec, load_spec
from zoo.errors import PluginError


# The layers random init knows: their weights come from the spec's scheme. A subclass that
# defines its own reset_parameters() is not one of them; it is treated like any plugin module.
KNOWN_LAYERS = (nn.Linear, nn.Embedding)
_RESETS = {cls: cls.reset_parameters for cls in KNOWN_LAYERS}


def is_known_layer(module: nn.Module) -> bool:
    """An ``nn.Linear`` or ``nn.Embedding`` whose reset_parameters() is torch's own."""
    return any(isinstance(module, cls) and type(module).reset_parameters is _RESETS[cls] for cls in KNOWN_LAYERS)


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
    model.to(device=device)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def uninitialisable(model: nn.Module) -> str | None:
    """A module holding tensors that neither the scheme nor a ``reset_parameters()`` sets, or None."""
    for name, module in model.named_modules():
        own = [n for n, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]]
        if own and not is_known_layer(module) and not callable(getattr(module, "reset_parameters", None)):
            return (f"{type(module).__qualname__} ({name or 'the model'}) holds {', '.join(own)} but defines no "
                    "reset_parameters(): zoo constructs models on the meta device, so the values a constructor "
                    "gives are not kept; set them in reset_parameters()")
    return None


def init_weights(model: nn.Module, spec: ModelSpec) -> None:
    """Initialise in place: the spec's scheme for the known layers, then every other
    module's own ``reset_parameters()``, innermost first (so a component may re-initialise
    its sublayers); all other parameters and buffers keep their values.

    ``gpt2``: N(0, 0.02) for linear and embedding weights, the layers that write into the
    residual stream (each attention's and MLP's declared ``residual_projection``) scaled by
    1/√(2·n_layers), zero biases (Radford et al., 2019).
    ``xavier``: Xavier-uniform linear weights, N(0, d_model^-½) embeddings (Vaswani et al., 2017).
    """
    n_layers = spec.n_layers + spec.n_decoder_layers
    modules = list(model.named_modules())
    residual = {id(getattr(m, m.residual_projection)) for _, m in modules
                if isinstance(m, (Attention, MLP)) and getattr(m, "residual_projection", None)
                and isinstance(getattr(m, m.residual_projection, None), nn.Module)}
    with torch.no_grad():
        for name, module in modules:
            if not is_known_layer(module):
                continue
            if isinstance(module, nn.Linear):
                if spec.tie_embeddings and name == "lm_head":
                    continue
                if spec.init == "gpt2":
                    std = 0.02 / math.sqrt(2 * n_layers) if id(module) in residual else 0.02
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
    model = assemble(spec)
    problem = uninitialisable(model)
    if problem:
        raise PluginError(problem)
    with InitMode(seed):
        materialize(model, device, dtype)
        init_weights(model, spec)
    return model.eval()
