"""LoRA adapters on zoo models, through Hugging Face's PEFT.

LoRA (Hu et al., 2021) freezes a model's weights and trains a rank-r update ``B·A`` beside
chosen linear layers: each computes ``W x + (alpha / r) · B A x``. PEFT wraps any
``nn.Linear`` by module name, so an adapter fits every zoo model whose projections are
linear layers, plugins included. Targets are named by role, ``attention`` (self- and
cross-attention) and ``mlp``, or by module name (``c_attn``, ``attn.c_proj``).

A model directory may hold its model as frozen base + adapter (``zoo train --lora
--no-merge``)::

    spec.yaml manifest.json      manifest["lora"] names the parts
    base/                        the frozen weights: a zoo model directory
    adapter/                     adapter_config.json + adapter_model.safetensors, PEFT's own format

:func:`zoo.core.model_dir.load_model` reads such a directory back as one model, the adapter merged
(:func:`apply_adapter`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from zoo.core.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST, read_json
from zoo.core.meta import tied_names
from zoo.errors import DataError, WeightsError

# a role -> the block attributes whose linear layers it names
ROLES = {"attention": ("attn", "crossattention"), "mlp": ("mlp",)}
DEFAULT_TARGETS = "attention,mlp"
PLUGIN_FIELD = {"attn": "attention", "crossattention": "cross_attention", "mlp": "mlp"}


def linear_layers(model: nn.Module) -> list[str]:
    """The module names of ``model``'s ``nn.Linear`` layers."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def by_layer(names: list[str]) -> list[str]:
    """``stack.h.0.attn.c_attn``, ``stack.h.1.attn.c_attn`` -> ``stack.h.{i}.attn.c_attn``, once each."""
    return list(dict.fromkeys(re.sub(r"\.\d+\.", ".{i}.", name) for name in names))


def role_of(name: str) -> str | None:
    parts = name.split(".")
    return next((role for role, attributes in ROLES.items() if any(a in parts for a in attributes)), None)


def _check_role(model: nn.Module, role: str) -> None:
    """Refuse a role whose component (a plugin, perhaps) computes its projections without ``nn.Linear``."""
    for name, module in model.named_modules():
        attribute = name.rpartition(".")[2]
        if attribute not in ROLES[role] or not any(True for _ in module.parameters()):
            continue
        if not any(isinstance(m, nn.Linear) for m in module.modules()):
            field = PLUGIN_FIELD[attribute]
            plugin = getattr(getattr(model.spec, field, None), "type", type(module).__name__)
            raise DataError(f"the {field.replace('_', '-')} plugin {plugin!r} ({name}) computes its projections "
                            f"without nn.Linear, and LoRA wraps nn.Linear layers only; target other layers with "
                            f"--lora-targets (linear layers: {', '.join(by_layer(linear_layers(model)))})")


def lora_targets(model: nn.Module, targets: str) -> list[str]:
    """The module names of ``model``'s linear layers that ``targets`` (comma-separated roles or
    module names) chooses; works on a model whose weights are still on the meta device."""
    linears = linear_layers(model)
    shown = ", ".join(by_layer(linears)) or "none"
    tied = {name.rpartition(".")[0] for pair in tied_names(model).items() for name in pair}  # modules sharing a weight
    chosen: list[str] = []
    wanted = [t.strip() for t in targets.split(",") if t.strip()]
    if not wanted:
        raise DataError(f"--lora-targets is empty; give roles (attention, mlp) or linear layers of "
                        f"{model.spec.name}: {shown}")
    for target in wanted:
        if target in ROLES:
            _check_role(model, target)
            found = [n for n in linears if role_of(n) == target]
        else:
            found = [n for n in linears if n == target or n.endswith("." + target)]
        if not found:
            raise DataError(f"--lora-targets {target}: matches no linear layer of {model.spec.name}; give "
                            f"attention, mlp or one of its linear layers: {shown}")
        shared = sorted(set(found) & tied)
        if shared:
            raise DataError(f"--lora-targets {target}: {shared[0]} shares its weight with another layer (a tied "
                            "embedding); an adapter on it would untie them, so leave it out")
        chosen += [n for n in found if n not in chosen]
    return chosen


def add_lora(model: nn.Module, rank: int, alpha: float, dropout: float, targets: str, seed: int = 0):
    """``model`` wrapped by PEFT with a LoRA adapter on ``targets`` (a ``PeftModel``; the base is frozen).

    A (Kaiming) starts from ``seed`` whatever the process did before; B starts at zero, so
    the wrapped model computes what ``model`` did."""
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise DataError(f"--lora {rank}: the rank must be at least 1 (8 or 16 are usual)")
    names = lora_targets(model, targets)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none")
    from zoo.core.meta import InitMode

    with InitMode(seed):  # this call's own generator: other threads' draws do not shift it
        return get_peft_model(model, config)


def adapter_state(peft_model) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's names (``base_model.model.NAME.lora_A.weight``)."""
    from peft import get_peft_model_state_dict

    return {name: t.detach().contiguous() for name, t in get_peft_model_state_dict(peft_model).items()}


def load_adapter_state(peft_model, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Put an adapter's tensors into ``peft_model``, refused unless they are exactly its adapter's."""
    from peft import set_peft_model_state_dict

    expected = adapter_state(peft_model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = [n for n in expected if n in tensors and tensors[n].shape != expected[n].shape]
    if missing or unexpected or wrong:
        what = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                else f"{wrong[0]} has shape {tuple(tensors[wrong[0]].shape)}, not {tuple(expected[wrong[0]].shape)}")
        raise WeightsError(f"{source}: the adapter does not fit this model and LoRA settings ({what})")
    set_peft_model_state_dict(peft_model, tensors)


def save_adapter(peft_model, directory: Path) -> None:
    """Write the adapter into ``directory`` in PEFT's format (config + safetensors)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(peft_model), str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    peft_model.peft_config["default"].save_pretrained(str(directory))


def plain_state(peft_model) -> dict[str, torch.Tensor]:
    """The wrapped model's own tensors under its own names (``...c_attn.weight``), adapter left out,
    each shared tensor once."""
    out, seen = {}, set()
    for name, tensor in peft_model.get_base_model().state_dict().items():
        if ".lora_" in name:
            continue
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype)
        if tensor.data_ptr() and key in seen:
            continue
        seen.add(key)
        out[name.replace(".base_layer.", ".")] = tensor.contiguous()
    return out


def restore_base(peft_model, base_weights: Path) -> None:
    """Copy the frozen weights of every adapted layer back from ``base_weights`` exactly (after
    :func:`merged` left them base + B·A - B·A, which rounding makes not quite the base)."""
    from peft.tuners.lora import LoraLayer

    from zoo.core.tensor_files import read_tensor

    with torch.no_grad():
        for name, module in peft_model.get_base_model().named_modules():
            if isinstance(module, LoraLayer):
                module.get_base_layer().weight.copy_(read_tensor(base_weights, f"{name}.weight"))


class merged:
    """``with merged(peft_model, base_weights):`` the adapted layers hold base + scale·B·A (PEFT's
    merge, in place: no second copy of the weights); on leaving they hold the base again, bit for bit."""

    def __init__(self, peft_model, base_weights: Path) -> None:
        self.model, self.base_weights = peft_model, base_weights

    def __enter__(self):
        self.model.merge_adapter()
        return self.model

    def __exit__(self, *exc) -> None:
        self.model.unmerge_adapter()
        restore_base(self.model, self.base_weights)


# --------------------------------------------------------------------------- base + adapter directories


def lora_record(path: Path) -> dict | None:
    """``manifest["lora"]`` of a model directory held as base + adapter, else None."""
    if not (path / MANIFEST).is_file():
        return None
    return read_json(path / MANIFEST, WeightsError).get("lora")


def apply_adapter(model: nn.Module, adapter: Path, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None) -> nn.Module:
    """``model`` with the adapter in folder ``adapter`` merged into it (no adapter there yet: ``model``)."""
    from peft import LoraConfig, get_peft_model

    if not (adapter / ADAPTER_CONFIG).is_file():
        return model
    try:
        config = LoraConfig.from_pretrained(str(adapter))
        tensors = load_file(str(adapter / ADAPTER_WEIGHTS), device=str(device))
    except (OSError, ValueError, TypeError) as exc:
        raise WeightsError(f"{adapter}: cannot read the LoRA adapter ({exc}); is it complete?") from None
    peft_model = get_peft_model(model, config)
    load_adapter_state(peft_model, {k: v.to(dtype) if dtype else v for k, v in tensors.items()}, str(adapter))
    return peft_model.merge_and_unload().eval()
