"""The model on the meta device: its shapes and parameter counts, with no memory allocated.

Describing gpt2-xl, checking that a model fits (:mod:`zoo.core.limits`) and drawing it
(``zoo show model``) all work from this skeleton; building and loading give it storage.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from zoo.core.model import model_class
from zoo.core.registry import get_registry
from zoo.core.spec import COMPONENT_KIND, ModelSpec

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


def count_parameters(model: nn.Module) -> int:
    """Parameters counted once each (a tied LM head is not counted twice)."""
    return sum(p.numel() for p in model.parameters())


def tied_names(model: nn.Module) -> dict[str, str]:
    """Each second name of a shared parameter (a tied head) -> the first (the embedding)."""
    first: dict[int, str] = {}
    tied = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            tied[name] = first[id(param)]
        first.setdefault(id(param), name)
    return tied


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
