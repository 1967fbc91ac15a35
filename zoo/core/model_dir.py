"""A zoo model directory: a built model on disk as ``model.safetensors`` + ``spec.yaml`` +
``manifest.json``, written atomically by :func:`save_model` and read by :func:`load_model`."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from zoo.core.files import HF_CONFIG, MANIFEST, SPEC, WEIGHTS, atomic_directory, read_json, write_manifest
from zoo.core.spec import ModelSpec, load_spec
from zoo.core.tensor_files import read_tensors
from zoo.errors import WeightsError, ZooError, first_line

# Spec fields that do not change which weights fit.
ARCHITECTURE_IGNORED = {"name", "description", "weights", "dropout", "tokenizer", "init",
                        "bos_token_id", "eos_token_id", "pad_token_id"}


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


def write_model_files(model: nn.Module, spec: ModelSpec, out: Path, extra: dict | None = None,
                      tensors: dict[str, torch.Tensor] | None = None) -> dict:
    """Write weights, resolved spec and manifest into directory ``out``; return the manifest.

    ``tensors``: the weights to write, when they are not ``model``'s own state (a model
    wrapped with an adapter writes its merged weights under the plain names)."""
    tensors = state_dict_for_saving(model) if tensors is None else tensors
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt", "zoo_model": spec.name})
    (out / SPEC).write_text(spec.to_yaml(), encoding="utf-8")
    first = next(iter(tensors.values()))
    manifest = {
        "model": spec.name,
        "parameters": sum(p.numel() for name, p in model.named_parameters() if ".lora_" not in name),
        "dtype": str(first.dtype).replace("torch.", ""),
        **(extra or {}),
    }
    return write_manifest(out, manifest, files=(WEIGHTS,))


def save_model(model: nn.Module, spec: ModelSpec, out_dir: str | os.PathLike, overwrite: bool = False,
               extra: dict | None = None) -> dict:
    """Write a model directory atomically: all three files appear together or none does.
    Returns the manifest."""
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        return write_model_files(model, spec, tmp, extra)


def name_mismatch(missing: list[str], unexpected: list[str], shown: int = 5) -> str:
    """``"missing a, b and 3 more; unexpected c"``: the tensor names that keep weights from fitting."""
    parts = []
    for label, names in (("missing", missing), ("unexpected", unexpected)):
        if names:
            more = f" and {len(names) - shown} more" if len(names) > shown else ""
            parts.append(f"{label} {', '.join(names[:shown])}{more}")
    return "; ".join(parts)


def check_fit(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`WeightsError` unless ``tensors`` has every name and shape of ``model``'s
    state (a tied LM head may be absent) and nothing else."""
    names = model.state_dict()
    tied = {"lm_head.weight"} if getattr(model.spec, "tie_embeddings", False) else set()
    missing = sorted(set(names) - set(tensors) - tied)
    unexpected = sorted(set(tensors) - set(names))
    if missing or unexpected:
        raise WeightsError(f"{source}: weights do not fit model {model.spec.name}: {name_mismatch(missing, unexpected)}")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(names[name].shape):
            raise WeightsError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, model {model.spec.name} expects {tuple(names[name].shape)}"
            )


def save(model: nn.Module, out_dir: str | os.PathLike, overwrite: bool = False) -> dict:
    """``zoo build -o`` for a model in hand: :func:`save_model` with the model's own spec."""
    return save_model(model, model.spec, out_dir, overwrite=overwrite)


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Put ``tensors`` into ``model`` after :func:`check_fit`.

    ``model`` comes from :func:`zoo.core.meta.assemble`, on the meta device: its tensors
    take the given ones as they are (no copy). Tensors the checkpoint does not hold (a
    plugin's unsaved tables) get storage on the tensors' device, in their floating dtype,
    and their modules' ``reset_parameters()``.
    """
    from zoo.core.builder import materialize

    check_fit(model, tensors, source)
    model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()
    first = next(iter(tensors.values()))
    dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), first.dtype)
    unset = [m for m in model.modules() if any(t.is_meta for t in [*m.parameters(recurse=False),
                                                                       *m.buffers(recurse=False)])]
    if unset:
        materialize(model, first.device, dtype)
        with torch.no_grad():
            for module in reversed(unset):
                if not callable(getattr(module, "reset_parameters", None)):
                    raise WeightsError(f"{source} holds no value for {type(module).__qualname__}'s tensors and the "
                                       "module defines no reset_parameters() to make them")
                module.reset_parameters()
    return model


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> nn.Module:
    """Load a directory written by :func:`save_model` (or ``zoo build -o``)."""
    from zoo.core.meta import assemble
    from zoo.core.limits import check_fits

    path = Path(path)
    if not path.is_dir():
        raise WeightsError(f"{path}: no such model directory; create one with 'zoo build MODEL -o {path}'")
    if not (path / WEIGHTS).is_file():
        from zoo.core.adapters import apply_adapter, lora_record
        from zoo.core.files import ADAPTER, BASE

        record = lora_record(path)
        if record is not None:  # frozen base + LoRA adapter (zoo train --lora --no-merge), merged here
            base = load_model(path / record.get("base", BASE), device=device, dtype=dtype)
            return apply_adapter(base, path / record.get("adapter", ADAPTER), device=device, dtype=dtype)
        raise WeightsError(f"{path}: no {WEIGHTS} in this directory; is it a zoo model directory?")
    spec = load_spec(path / SPEC)
    stored = stored_dtype(path)
    check_fits(spec, device, dtype or stored)  # a hand-edited spec.yaml may ask for too much
    if dtype is None or dtype == stored:
        try:
            tensors = load_file(str(path / WEIGHTS), device=str(device))  # mapped: the file's pages, no copy
        except (SafetensorError, OSError) as exc:
            raise WeightsError(f"{path / WEIGHTS}: cannot read safetensors file ({first_line(exc)}); it may be truncated") from None
    else:  # cast on the way in, one tensor at a time: the stored dtype is never resident whole
        tensors = {name: t.to(device) for name, t in read_tensors(path / WEIGHTS, dtype).items()}
    model = load_state(assemble(spec), tensors, str(path / WEIGHTS))
    return model.eval()


def stored_dtype(path: Path) -> torch.dtype:
    """The dtype the directory's manifest says its weights are stored in (float32 if it does not say)."""
    try:
        name = read_json(path / MANIFEST).get("dtype", "float32")
    except ZooError:
        name = "float32"
    dtype = getattr(torch, str(name), None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def is_model_directory(path: Path) -> bool:
    """A zoo model directory has a spec.yaml; a Hugging Face one has a config.json instead."""
    return (path / SPEC).is_file() and not (path / HF_CONFIG).is_file()


def load_model_for_spec(spec: ModelSpec, path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> nn.Module:
    """The model in directory ``path``, refused unless its architecture is ``spec``'s."""
    model = load_model(path, device=device, dtype=dtype)
    ours = {k: v for k, v in spec.to_dict().items() if k not in ARCHITECTURE_IGNORED}
    theirs = {k: v for k, v in model.spec.to_dict().items() if k not in ARCHITECTURE_IGNORED}
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key):
            raise WeightsError(
                f"{path}: holds {model.spec.name} with {key} {theirs.get(key)!r}, but {spec.name} has {ours.get(key)!r}; "
                "pick the matching model or --set the field"
            )
    return model
