"""A built model on disk: ``model.safetensors`` + ``spec.yaml`` + ``manifest.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from zoo.errors import WeightsError
from zoo.core.files import atomic_directory, sha256_file
from zoo.core.spec import ModelSpec, load_spec

WEIGHTS = "model.safetensors"
SPEC = "spec.yaml"
MANIFEST = "manifest.json"


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor once (a tied ``lm_head.weight`` is dropped)."""
    out, seen = {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype)
        if tensor.data_ptr() and key in seen:
            continue
        seen[key] = name
        out[name] = tensor.contiguous()
    return out


def write_model_files(model: nn.Module, spec: ModelSpec, out: Path, extra: dict | None = None) -> dict:
    """Write weights, resolved spec and manifest into directory ``out``; return the manifest."""
    tensors = state_dict_for_saving(model)
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt", "zoo_model": spec.name})
    (out / SPEC).write_text(spec.to_yaml(), encoding="utf-8")
    first = next(iter(tensors.values()))
    manifest = {
        "model": spec.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(first.dtype).replace("torch.", ""),
        "files": {WEIGHTS: {"sha256": sha256_file(out / WEIGHTS), "bytes": (out / WEIGHTS).stat().st_size}},
        **(extra or {}),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def save_model(model: nn.Module, spec: ModelSpec, out_dir: str | os.PathLike, overwrite: bool = False,
               extra: dict | None = None) -> dict:
    """Write a model directory atomically: all three files appear together or none does."""
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        return write_model_files(model, spec, tmp, extra)


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Copy ``tensors`` into ``model`` (which may be on the meta device), checking every
    key and shape; a tied LM head may be absent."""
    names = model.state_dict()
    tied = {"lm_head.weight"} if getattr(model.spec, "tie_embeddings", False) else set()
    missing = sorted(set(names) - set(tensors) - tied)
    unexpected = sorted(set(tensors) - set(names))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}" + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))
        raise WeightsError(f"{source}: weights do not fit model {model.spec.name}: {'; '.join(parts)}")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(names[name].shape):
            raise WeightsError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, model {model.spec.name} expects {tuple(names[name].shape)}"
            )
    model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()
    return model


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> nn.Module:
    """Load a directory written by :func:`save_model` (or ``zoo build -o``)."""
    from zoo.core.builder import assemble

    path = Path(path)
    if not path.is_dir():
        raise WeightsError(f"{path}: no such model directory; create one with 'zoo build MODEL -o {path}'")
    if not (path / WEIGHTS).is_file():
        raise WeightsError(f"{path}: no {WEIGHTS} in this directory; is it a zoo model directory?")
    spec = load_spec(path / SPEC)
    try:
        tensors = load_file(str(path / WEIGHTS), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path / WEIGHTS}: cannot read safetensors file ({exc}); it may be truncated") from None
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    model = load_state(assemble(spec), tensors, str(path / WEIGHTS))
    return model.eval()
