"""Spec → ``nn.Module``: assemble on the meta device, then materialise and initialise.

Assembling on the meta device means describing gpt2-xl costs no memory, and building
it allocates each weight exactly once.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from zoo.core.model import model_class
from zoo.core.registry import get_registry
from zoo.core.spec import COMPONENT_KIND, ModelSpec, load_spec


# torch.nn.init functions that modules call from their constructors.
INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_",
                  "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_", "orthogonal_")


@contextlib.contextmanager
def skipped_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s functions return their tensor untouched, for assembly on the
    meta device: there is nothing to initialise there, and the first random op on a meta
    tensor imports ``torch._dynamo`` (seconds of start-up for every command)."""
    saved = {name: getattr(nn.init, name) for name in INIT_FUNCTIONS}
    try:
        for name in INIT_FUNCTIONS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def assemble(spec: ModelSpec) -> nn.Module:
    """The model with every parameter on the meta device (no memory allocated)."""
    with torch.device("meta"), skipped_init():
        return model_class(spec)(spec)


def init_weights(model: nn.Module, spec: ModelSpec) -> None:
    """Initialise in place with the spec's scheme.

    ``gpt2``: N(0, 0.02) for linear and embedding weights, residual projections
    (``c_proj``) scaled by 1/√(2·n_layers), zero biases (Radford et al., 2019).
    ``xavier``: Xavier-uniform linear weights, N(0, d_model^-½) embeddings (Vaswani et al., 2017).
    """
    n_layers = spec.n_layers + spec.n_decoder_layers
    for name, module in model.named_modules():
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
        elif isinstance(module, nn.Embedding):
            std = 0.02 if spec.init == "gpt2" else spec.d_model ** -0.5
            nn.init.normal_(module.weight, std=std)
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:  # a plugin's own parameters with no reset_parameters(): small normal, zero vectors
            for param in module.parameters(recurse=False):
                if param.dim() >= 2:
                    nn.init.normal_(param, std=0.02)
                else:
                    nn.init.zeros_(param)


def materialize(model: nn.Module, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """Allocate uninitialised storage for a meta model (each weight once) and re-tie."""
    model.to(dtype=dtype)
    model.to_empty(device=device)
    model.tie_weights()
    return model


def build(spec: str | ModelSpec, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
          seed: int | None = None, **overrides) -> nn.Module:
    """Build a randomly initialised model from a registry name, spec path or spec.

    Keyword overrides use the spec's field names; nested fields take a mapping or a
    dotted key: ``build("gpt2", positional="rotary", attention={"n_kv_heads": 4})``.
    """
    spec = load_spec(spec, overrides or None)
    from zoo.core.limits import check_fits  # limits assembles through this module: imported here
    check_fits(spec, device, dtype)  # a model that cannot fit is refused before anything is allocated
    model = materialize(assemble(spec), device, dtype)
    if seed is None:
        init_weights(model, spec)
    else:  # a seed fixes every draw, plugins' own reset_parameters() included
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            init_weights(model, spec)
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    """Parameters counted once each (a tied LM head is not counted twice)."""
    return sum(p.numel() for p in model.parameters())


@dataclass
class ParameterRow:
    part: str
    plugin: str
    count: int


def parameter_table(spec: ModelSpec, model: nn.Module | None = None) -> list[ParameterRow]:
    """Parameters per component kind, computed on the meta device unless a model is given."""
    model = model if model is not None else assemble(spec)
    registry = get_registry()
    labels = {
        "positional": "positional", "attention": "attention", "cross_attention": "cross-attention",
        "block": "block", "norm": "norm", "mlp": "mlp",
    }
    owners: dict[str, tuple[str, str]] = {}  # module path -> (part, plugin)
    for field, label in labels.items():
        component = getattr(spec, field)
        if component is None:
            continue
        cls = registry.get(COMPONENT_KIND.get(field, field), component.type)
        for module_name, module in model.named_modules():
            if type(module) is cls:
                owners.setdefault(module_name, (label, component.type))
    counts: dict[tuple[str, str], int] = {}
    for name, param in model.named_parameters():  # shared parameters come once
        module_name = name.rpartition(".")[0]
        prefixes = [".".join(module_name.split(".")[:i]) for i in range(module_name.count(".") + 1, -1, -1)]
        key = next((owners[p] for p in prefixes if p in owners), None)
        if key is None:
            module = model.get_submodule(module_name)
            if isinstance(module, nn.Embedding):
                key = ("token embedding", "embedding")
            else:
                key = (module_name, type(module).__name__)
        counts[key] = counts.get(key, 0) + param.numel()
    rows = [ParameterRow(part, plugin, n) for (part, plugin), n in counts.items()]
    if spec.tie_embeddings:
        rows.append(ParameterRow("lm head", "tied to token embedding", 0))
    return rows
