"""Hugging Face checkpoints: reading weights from a directory, the hub or its cache,
and :func:`load_weights` / :func:`load`, the zoo's entry points for weights from anywhere.

A source is ``"hf"`` (the hub id in the spec's ``weights.hf``), a hub id (read from the
Hugging Face cache, downloaded when the hub is reachable), a local directory in Hugging
Face layout (``config.json`` + ``model.safetensors``, sharded safetensors, or
``pytorch_model.bin`` read with ``weights_only=True``), or a zoo model directory.

Loading a Hugging Face checkpoint checks ``config.json`` against the spec field by field
before any tensor is read, then checks every key and shape against the name table of
:mod:`zoo.hf.formats` registered for its ``model_type``, and only then reads: tensors are memory-mapped views of the file,
assigned into a model whose large layers wait on the meta device, so a model needs about 1x its weight bytes.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from zoo.core.meta import assemble
from zoo.core.files import HF_CONFIG, HF_PYTORCH_BIN, HF_SAFETENSORS, HF_SAFETENSORS_INDEX, HF_SAFETENSORS_SHARDS, read_json
from zoo.core.limits import check_fits
from zoo.core.model_dir import is_model_directory, load_model, load_model_for_spec, load_state
from zoo.core.tensor_files import read_tensor
from zoo.core.spec import ModelSpec
from zoo.errors import WeightsError, first_line
from zoo.hf.formats import checkpoint_format, plan, to_zoo_tensors

# --------------------------------------------------------------------------- reading checkpoints


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class CheckpointReader:
    """Names, shapes and tensors of a Hugging Face checkpoint, without reading data up front.

    Safetensors files (one, or the shards an index names) are memory-mapped; a
    ``pytorch_model.bin`` is read with ``torch.load(weights_only=True, mmap=True)``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._stack = ExitStack()
        self._files: dict[str, Any] = {}  # name -> open safetensors handle (for the headers)
        self._paths: dict[str, Path] = {}  # name -> its safetensors file
        self._tensors: dict[str, torch.Tensor] | None = None  # from pytorch_model.bin
        if (directory / HF_SAFETENSORS).is_file():
            self._open_safetensors([directory / HF_SAFETENSORS])
        elif (directory / HF_SAFETENSORS_INDEX).is_file():
            self._open_safetensors(self._shards(directory / HF_SAFETENSORS_INDEX))
        elif (directory / HF_PYTORCH_BIN).is_file():
            self._tensors = self._load_bin(directory / HF_PYTORCH_BIN)
        else:
            raise WeightsError(
                f"{directory}: no weights found (expected {HF_SAFETENSORS}, {HF_SAFETENSORS_INDEX} or {HF_PYTORCH_BIN})"
            )

    def _shards(self, index_path: Path) -> list[Path]:
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError):
            raise WeightsError(f"{index_path}: not a valid safetensors index (needs a 'weight_map')") from None
        return [index_path.parent / name for name in sorted(set(weight_map.values()))]

    def _open_safetensors(self, paths: list[Path]) -> None:
        for path in paths:
            try:
                handle = self._stack.enter_context(safe_open(str(path), framework="pt"))
            except (SafetensorError, OSError) as exc:
                self.close()
                raise WeightsError(f"{path}: cannot read safetensors file ({first_line(exc)}); "
                                   "it may be truncated or corrupt") from None
            for name in handle.keys():
                self._files[name] = handle
                self._paths[name] = path

    @staticmethod
    def _load_bin(path: Path) -> dict[str, torch.Tensor]:
        def load(mmap: bool):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

        try:
            try:
                tensors = load(mmap=True)
            except RuntimeError as exc:  # the legacy (non-zip) format cannot be memory-mapped
                if "mmap" not in str(exc):
                    raise
                tensors = load(mmap=False)
        except pickle.UnpicklingError as exc:
            raise WeightsError(f"{path}: refused to unpickle ({first_line(exc)}); convert it to safetensors") from None
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            raise WeightsError(f"{path}: cannot read PyTorch checkpoint ({first_line(exc)}); "
                               "it may be truncated or corrupt") from None
        if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise WeightsError(f"{path}: not a state dict of tensors")
        return tensors

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor name -> shape, read from headers only."""
        if self._tensors is not None:
            return {name: tuple(t.shape) for name, t in self._tensors.items()}
        return {name: tuple(handle.get_slice(name).get_shape()) for name, handle in self._files.items()}

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor ``name`` in ``dtype`` (None: as stored). Stored in that dtype, a safetensors
        tensor is a memory-mapped view (no copy); stored otherwise, it is read into memory of its
        own and cast slice by slice (:func:`zoo.core.tensor_files.read_tensor`), so converting a
        checkpoint to a smaller dtype never holds the whole file resident."""
        if self._tensors is not None:
            tensor = self._tensors[name]
            return tensor if dtype is None else tensor.to(dtype)
        handle = self._files[name]
        try:
            stored = SAFETENSORS_DTYPES.get(handle.get_slice(name).get_dtype())
            if dtype is None or stored == dtype:
                return handle.get_tensor(name)
        except SafetensorError as exc:
            raise WeightsError(f"{self.directory}: cannot read {name} ({first_line(exc)})") from None
        return read_tensor(self._paths[name], name, dtype)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_config(directory: Path) -> dict:
    """``config.json`` of a Hugging Face model directory."""
    path = directory / HF_CONFIG
    if not path.is_file():
        raise WeightsError(f"{directory}: no {HF_CONFIG}; a Hugging Face model directory needs {HF_CONFIG} beside its weights")
    return read_json(path, WeightsError)


def directory_format(directory: Path, config: dict):
    """The registered checkpoint format of a Hugging Face directory, by its ``model_type``."""
    return checkpoint_format(config.get("model_type"), str(directory / HF_CONFIG))


def load_hf_directory(spec: ModelSpec, directory: Path, device="cpu", dtype=torch.float32) -> nn.Module:
    """A zoo model with the weights of a Hugging Face directory of any registered family."""
    config = read_config(directory)
    fmt = directory_format(directory, config)
    problem = fmt.spec_problem(spec)
    if problem:
        raise WeightsError(f"{directory / HF_CONFIG}: model_type is {fmt.model_type!r} and {problem}; "
                           "pick a model of that family, or build from the directory itself (zoo build DIR)")
    fmt.check_config(config, spec, str(directory / HF_CONFIG))
    model = assemble(spec)
    with CheckpointReader(directory) as reader:
        stored = plan(fmt, model, reader.shapes(), str(directory))
        for name in fmt.zero:
            if name in reader.shapes() and reader.get(name, torch.float32).any():
                raise WeightsError(f"{directory}: {name} is not zero, and a zoo {spec.family} has no place for it; "
                                   "this checkpoint cannot be read exactly")
        tensors = to_zoo_tensors(fmt, spec, lambda name: reader.get(stored[name], dtype),
                                 lambda t: t.to(device=device, dtype=dtype))
    return load_state(model, tensors, str(directory)).eval()


def local_hf_directory(source: str) -> Path | None:
    """``source`` as a local Hugging Face model directory (``config.json``, no zoo
    ``spec.yaml``), or None when it is anything else (a catalog name, a spec file)."""
    path = Path(source).expanduser()
    if path.is_dir() and (path / HF_CONFIG).is_file() and not is_model_directory(path):
        return path
    return None


def hf_directory_spec(directory: Path, name: str) -> ModelSpec:
    """The spec of a Hugging Face directory, from its ``config.json``: the catalog model it
    fits, else its family's layout sized by the config."""
    config = read_config(directory)
    return directory_format(directory, config).spec_from_config(config, name)


# --------------------------------------------------------------------------- sources

HUB_PATTERNS = [HF_CONFIG, HF_SAFETENSORS, HF_SAFETENSORS_INDEX, HF_SAFETENSORS_SHARDS]
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def hub_directory(repo_id: str) -> Path:
    """The local snapshot of hub repository ``repo_id``: from the cache, or downloaded."""
    from huggingface_hub import constants, hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        directory = Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
        has_safetensors = any(any(directory.glob(p)) for p in (HF_SAFETENSORS, HF_SAFETENSORS_SHARDS))
        if not has_safetensors and not (directory / HF_PYTORCH_BIN).exists():
            hf_hub_download(repo_id, HF_PYTORCH_BIN)
        return directory
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        raise WeightsError(
            f"{repo_id}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; "
            f"download it where the hub is reachable ('hf download {repo_id}') or pass a local directory"
        ) from None
    except (HfHubHTTPError, HFValidationError, EntryNotFoundError, OSError) as exc:
        raise WeightsError(f"{repo_id}: cannot fetch from the Hugging Face hub ({first_line(exc)})") from None


def hf_directory(source: str) -> Path | None:
    """The Hugging Face model directory ``source`` names (a local directory, or a hub id
    fetched or found in the cache), or None when ``source`` is a zoo model directory."""
    path = Path(source).expanduser()
    if path.is_dir():
        return None if is_model_directory(path) else path
    if path.exists():
        raise WeightsError(f"{source}: is a file; pass the directory that holds it (with its {HF_CONFIG})")
    if HUB_ID.fullmatch(source):
        return hub_directory(source)
    raise WeightsError(f"{source}: no such directory, and not a Hugging Face hub id")


def hf_source_directory(spec: ModelSpec, source: str) -> Path | None:
    """As :func:`hf_directory`, where ``source`` may also be ``"hf"``: the spec's own hub id."""
    if source == "hf":
        hub_id = spec.weights.get("hf")
        if not hub_id:
            raise WeightsError(f"{spec.name} names no Hugging Face weights (weights.hf); pass --weights PATH or a hub id")
        return hub_directory(hub_id)
    return hf_directory(source)


def load_weights(spec: ModelSpec, source: str, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> nn.Module:
    """The model ``spec`` describes, with weights from ``source``, in eval mode.

    ``source``: ``"hf"`` (the spec's ``weights.hf`` hub id), a hub id, a local Hugging
    Face directory or a zoo model directory. A model that cannot fit in ``device``'s memory
    is refused before anything is read.
    """
    check_fits(spec, device, dtype)
    directory = hf_source_directory(spec, source)
    if directory is None:
        return load_model_for_spec(spec, Path(source).expanduser(), device, dtype).eval()
    return load_hf_directory(spec, directory, device, dtype)


def load(source: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> nn.Module:
    """A ready model, in eval mode, from ``source`` alone: a zoo model directory (its own
    ``spec.yaml``), a Hugging Face directory of a registered family (GPT-2, Llama, Qwen2, GPT-NeoX, ...), or a
    hub id (from the Hugging Face cache).

    A checkpoint becomes the catalog model its ``config.json`` fits (``gpt2-medium``,
    ``smollm2-135m``, ...), else its family's layout sized by the config. ``dtype`` None keeps a zoo
    directory's stored dtype and reads a Hugging Face checkpoint as float32. The model's
    ``loaded_from`` is the directory it came from (what :func:`zoo.verify` compares against).
    """
    source = str(source)
    if source == "hf":
        raise WeightsError("'hf' means a spec's own hub id; give the hub id itself (e.g. openai-community/gpt2) "
                           "or use zoo.load_weights(spec, 'hf')")
    directory = hf_directory(source)
    if directory is None:
        directory = Path(source).expanduser()
        model = load_model(directory, device=device, dtype=dtype)
    else:
        model = load_hf_directory(hf_directory_spec(directory, source), directory, device, dtype or torch.float32)
    model.loaded_from = directory  # zoo.verify compares against it (a translation run: its vocabulary)
    return model
