"""The model on the meta device: its shapes and parameter counts, with no memory allocated.

Describing gpt2-xl, checking that a model fits (:mod:`zoo.core.limits`) and drawing it
(``zoo show model``) all work from this skeleton; building and loading give it storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from zoo.core.model import model_class
from zoo.core.registry import get_registry
from zoo.core.spec import COMPONENT_KIND, ModelSpec

# Every torch function that draws random numbers and takes a ``generator=``: torch.nn.init's
# (which modules call from their constructors and reset_parameters()), the in-place Tensor
# methods they call, and the sampling factories.
RANDOM_INIT = frozenset(getattr(nn.init, name) for name in (
    "uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
    "xavier_normal_", "orthogonal_", "sparse_"))
RANDOM_METHODS = frozenset(getattr(torch.Tensor, name) for name in (
    "uniform_", "normal_", "random_", "bernoulli_", "exponential_", "geometric_", "log_normal_", "cauchy_"))
RANDOM_FACTORIES = frozenset((torch.rand, torch.randn, torch.randint, torch.randperm, torch.normal, torch.bernoulli,
                              torch.multinomial, torch.rand_like, torch.randn_like, torch.randint_like))
FIXED_INIT = frozenset(getattr(nn.init, name) for name in ("constant_", "ones_", "zeros_", "eye_", "dirac_"))
INIT_FUNCTIONS = RANDOM_INIT | FIXED_INIT


class InitMode(TorchFunctionMode):
    """How zoo constructs and initialises a model, in the current thread only (torch function
    modes are per thread; nothing of torch is replaced):

    - initialisation of a meta tensor returns it untouched: there is nothing to initialise
      there, and the first random op on a meta tensor imports ``torch._dynamo`` (seconds of
      start-up for every command);
    - with ``seed``, every random draw that names no generator takes this build's own
      ``torch.Generator`` (one per device type), so a seeded build gives the same tensors
      whatever else the process is doing; without one, draws use torch's global generator.
    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self.seed = seed
        self.generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        if device.type not in self.generators:
            self.generators[device.type] = torch.Generator(device=device).manual_seed(self.seed)
        return self.generators[device.type]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in INIT_FUNCTIONS or func in RANDOM_METHODS:
            tensor = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
            if self.seed is not None and func not in FIXED_INIT and kwargs.get("generator") is None:
                kwargs["generator"] = self.generator(tensor.device)
        elif func in RANDOM_FACTORIES and self.seed is not None and kwargs.get("generator") is None:
            like = next((a for a in args if isinstance(a, torch.Tensor)), None)
            device = torch.device(kwargs["device"]) if kwargs.get("device") is not None else (
                like.device if like is not None else torch.get_default_device())
            if device.type != "meta":
                kwargs["generator"] = self.generator(device)
        return func(*args, **kwargs)


def assemble(spec: ModelSpec) -> nn.Module:
    """The model with every parameter and buffer on the meta device (no memory allocated)."""
    with torch.device("meta"), InitMode():
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
