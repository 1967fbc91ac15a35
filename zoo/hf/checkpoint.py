"""Pretrained weights: Hugging Face GPT-2 checkpoints and zoo model directories → a zoo model.

A source is ``"hf"`` (the hub id in the spec's ``weights.hf``), a hub id (read from the
Hugging Face cache, downloaded when the hub is reachable), a local directory in Hugging
Face layout (``config.json`` + ``model.safetensors``, sharded safetensors, or
``pytorch_model.bin`` read with ``weights_only=True``), or a zoo model directory.

Loading a Hugging Face checkpoint checks ``config.json`` against the spec field by field
before any tensor is read, then checks every key and shape against the name table below,
and only then reads: tensors are memory-mapped views of the file, assigned into a
model assembled on the meta device, so a model needs about 1x its weight bytes.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from zoo.core.builder import assemble
from zoo.core.model_dir import SPEC, load_model, load_state
from zoo.errors import WeightsError
from zoo.core.spec import ModelSpec

# --------------------------------------------------------------------------- name tables

# Hugging Face GPT-2 name (without the "transformer." prefix) -> zoo DecoderLM name; "{}" is the layer index.
GPT2_WEIGHT_MAP = {
    "wte.weight": "wte.weight",
    "wpe.weight": "positional.weight",
    "h.{}.ln_1.weight": "stack.h.{}.ln_1.weight",
    "h.{}.ln_1.bias": "stack.h.{}.ln_1.bias",
    "h.{}.attn.c_attn.weight": "stack.h.{}.attn.c_attn.weight",
    "h.{}.attn.c_attn.bias": "stack.h.{}.attn.c_attn.bias",
    "h.{}.attn.c_proj.weight": "stack.h.{}.attn.c_proj.weight",
    "h.{}.attn.c_proj.bias": "stack.h.{}.attn.c_proj.bias",
    "h.{}.ln_2.weight": "stack.h.{}.ln_2.weight",
    "h.{}.ln_2.bias": "stack.h.{}.ln_2.bias",
    "h.{}.mlp.c_fc.weight": "stack.h.{}.mlp.c_fc.weight",
    "h.{}.mlp.c_fc.bias": "stack.h.{}.mlp.c_fc.bias",
    "h.{}.mlp.c_proj.weight": "stack.h.{}.mlp.c_proj.weight",
    "h.{}.mlp.c_proj.bias": "stack.h.{}.mlp.c_proj.bias",
    "ln_f.weight": "stack.ln_f.weight",
    "ln_f.bias": "stack.ln_f.bias",
}
# GPT-2's Conv1D stores weights [in, out]; nn.Linear stores [out, in].
GPT2_TRANSPOSED = {
    "h.{}.attn.c_attn.weight",
    "h.{}.attn.c_proj.weight",
    "h.{}.mlp.c_fc.weight",
    "h.{}.mlp.c_proj.weight",
}
# Causal-mask buffers that old checkpoints carry; they are not weights.
GPT2_IGNORED = {"h.{}.attn.bias", "h.{}.attn.masked_bias"}
# A separate output head, present in untied checkpoints (and in some tied ones, as a copy).
GPT2_LM_HEAD = "lm_head.weight"
HF_PREFIX = "transformer."

# zoo MLP type -> config.json activation_function (and the names Hugging Face accepts for each).
HF_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
HF_ACTIVATION_ALIASES = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}

# config.json field -> (spec field it corresponds to, the value the spec implies).
GPT2_CONFIG_MAP: dict[str, tuple[str, Callable[[ModelSpec], Any]]] = {
    "vocab_size": ("vocab_size", lambda s: s.vocab_size),
    "n_positions": ("context_length", lambda s: s.context_length),
    "n_embd": ("d_model", lambda s: s.d_model),
    "n_layer": ("n_layers", lambda s: s.n_layers),
    "n_head": ("attention.n_heads", lambda s: s.n_heads),
    "n_inner": ("mlp.d_ff", lambda s: s.mlp.options.d_ff or 4 * s.d_model),
    "activation_function": ("mlp.type", lambda s: s.mlp.type),
    "layer_norm_epsilon": ("norm.eps", lambda s: s.norm.options.eps),
    "tie_word_embeddings": ("tie_embeddings", lambda s: s.tie_embeddings),
}
# config.json fields the zoo's GPT-2 layout cannot express otherwise: field -> required value.
GPT2_CONFIG_FIXED = {
    "model_type": "gpt2",
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
}


def expand(pattern: str, n_layers: int) -> list[str]:
    """``"h.{}.ln_1.weight"`` -> one name per layer; a name without ``{}`` -> itself."""
    return [pattern.format(i) for i in range(n_layers)] if "{}" in pattern else [pattern]


def gpt2_names(spec: ModelSpec) -> dict[str, tuple[str, bool]]:
    """Every Hugging Face name of ``spec``'s checkpoint -> (zoo name, stored transposed)."""
    names = {}
    for hf, ours in GPT2_WEIGHT_MAP.items():
        for i, hf_name in enumerate(expand(hf, spec.n_layers)):
            names[hf_name] = (ours.format(i), hf in GPT2_TRANSPOSED)
    if not spec.tie_embeddings:
        names[GPT2_LM_HEAD] = ("lm_head.weight", False)
    return names


def is_ignored(hf_name: str) -> bool:
    """True for the causal-mask buffers of old GPT-2 checkpoints."""
    return any(re.fullmatch(re.escape(p).replace(r"\{\}", r"\d+"), hf_name) for p in GPT2_IGNORED)


# --------------------------------------------------------------------------- spec <-> config.json


def gpt2_layout_problem(spec: ModelSpec) -> str | None:
    """Why ``spec`` cannot be a Hugging Face ``GPT2LMHeadModel``, or None if it can."""
    attention = spec.attention.options
    wanted = [
        ("family", spec.family, "decoder"),
        ("positional", spec.positional.type, "learned"),
        ("attention", spec.attention.type, "multi_head"),
        ("attention.n_kv_heads", spec.n_kv_heads, spec.n_heads),
        ("attention.bias", getattr(attention, "bias", None), True),
        ("attention.causal", getattr(attention, "causal", None) in (None, True), True),
        ("block", spec.block.type, "pre_norm"),
        ("norm", spec.norm.type, "layer_norm"),
        ("norm.bias", getattr(spec.norm.options, "bias", None), True),
        ("mlp.bias", getattr(spec.mlp.options, "bias", None), True),
        ("scale_embeddings", spec.scale_embeddings, False),
    ]
    for field, value, expected in wanted:
        if value != expected:
            return f"{spec.name} has {field} {value!r}; a GPT-2 checkpoint needs {expected!r}"
    if spec.mlp.type not in HF_ACTIVATIONS:
        return f"{spec.name} has mlp {spec.mlp.type!r}; a GPT-2 checkpoint needs one of {', '.join(HF_ACTIVATIONS)}"
    return None


def gpt2_config_values(config: dict) -> dict:
    """``config.json`` with GPT2Config's defaults filled in for the fields the zoo checks."""
    from transformers import GPT2Config

    defaults = GPT2Config()
    values = {key: config.get(key, getattr(defaults, key, None)) for key in (*GPT2_CONFIG_MAP, *GPT2_CONFIG_FIXED)}
    values["model_type"] = config.get("model_type")
    if values["n_inner"] is None:
        values["n_inner"] = 4 * values["n_embd"]
    return values


def check_gpt2_config(config: dict, spec: ModelSpec, where: str) -> None:
    """Raise :class:`WeightsError` naming the first ``config.json`` field that does not fit ``spec``."""
    problem = gpt2_layout_problem(spec)
    if problem:
        raise WeightsError(f"{where}: {problem}")
    values = gpt2_config_values(config)
    for key, expected in GPT2_CONFIG_FIXED.items():
        if values[key] != expected:
            raise WeightsError(f"{where}: {key} is {values[key]!r}; the zoo reads GPT-2 checkpoints with {key} {expected!r}")
    for key, (field, implied) in GPT2_CONFIG_MAP.items():
        theirs, ours = values[key], implied(spec)
        if key == "activation_function":
            theirs = HF_ACTIVATION_ALIASES.get(theirs, theirs)
        if isinstance(ours, float) and isinstance(theirs, (int, float)):
            same = math.isclose(theirs, ours, rel_tol=1e-9)
        else:
            same = theirs == ours
        if not same:
            hint = matching_models(values)
            raise WeightsError(
                f"{where}: {key} is {values[key]!r} but {spec.name} has {field} {ours!r}; "
                + (f"this checkpoint fits {hint}" if hint else "pick a model (or --set) that matches the checkpoint")
            )


def matching_models(values: dict) -> str:
    """Registry models whose config a checkpoint's ``config.json`` values fit, comma-separated."""
    from zoo.core.spec import list_models, load_spec

    found = []
    for name in list_models():
        spec = load_spec(name)
        if gpt2_layout_problem(spec):
            continue
        if all(values[key] == implied(spec) for key, (_, implied) in GPT2_CONFIG_MAP.items()
               if key not in ("activation_function", "layer_norm_epsilon")):
            found.append(name)
    return ", ".join(found)


def gpt2_config(spec: ModelSpec, dtype: torch.dtype = torch.float32):
    """The ``transformers.GPT2Config`` of ``spec`` (which must pass :func:`gpt2_layout_problem`)."""
    from transformers import GPT2Config

    config = {key: implied(spec) for key, (_, implied) in GPT2_CONFIG_MAP.items()}
    config["activation_function"] = HF_ACTIVATIONS[spec.mlp.type]
    config.update({k: v for k, v in GPT2_CONFIG_FIXED.items() if k != "model_type"})
    dropout = spec.dropout
    attn_dropout = getattr(spec.attention.options, "dropout", 0.0)
    return GPT2Config(
        **config, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=attn_dropout,
        bos_token_id=spec.bos_token_id, eos_token_id=spec.eos_token_id, pad_token_id=spec.pad_token_id,
        dtype=str(dtype).removeprefix("torch."), architectures=["GPT2LMHeadModel"],
    )


def to_hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A zoo GPT-2 model's weights under ``GPT2LMHeadModel`` names, Conv1D weights transposed."""
    spec = model.spec
    ours = model.state_dict()
    out = {}
    for hf_name, (zoo_name, transposed) in gpt2_names(spec).items():
        tensor = ours[zoo_name]
        name = hf_name if hf_name == GPT2_LM_HEAD else HF_PREFIX + hf_name
        out[name] = (tensor.t() if transposed else tensor).contiguous()  # Conv1D: [in, out]
    return out


def to_hf_model(model: nn.Module):
    """A ``transformers.GPT2LMHeadModel`` holding the zoo GPT-2 ``model``'s weights, in eval mode."""
    from transformers import GPT2LMHeadModel

    with torch.device("meta"):
        hf_model = GPT2LMHeadModel(gpt2_config(model.spec, model.wte.weight.dtype))
    hf_model.load_state_dict(to_hf_state_dict(model), strict=False, assign=True)
    hf_model.tie_weights()
    return hf_model.eval()


# --------------------------------------------------------------------------- reading checkpoints

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
CONFIG = "config.json"


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (the CLI prints errors on one line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class CheckpointReader:
    """Names, shapes and tensors of a Hugging Face checkpoint, without reading data up front.

    Safetensors files (one, or the shards an index names) are memory-mapped; a
    ``pytorch_model.bin`` is read with ``torch.load(weights_only=True, mmap=True)``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._stack = ExitStack()
        self._files: dict[str, Any] = {}  # name -> open safetensors handle
        self._tensors: dict[str, torch.Tensor] | None = None  # from pytorch_model.bin
        if (directory / SAFETENSORS).is_file():
            self._open_safetensors([directory / SAFETENSORS])
        elif (directory / SAFETENSORS_INDEX).is_file():
            self._open_safetensors(self._shards(directory / SAFETENSORS_INDEX))
        elif (directory / PYTORCH_BIN).is_file():
            self._tensors = self._load_bin(directory / PYTORCH_BIN)
        else:
            raise WeightsError(
                f"{directory}: no weights found (expected {SAFETENSORS}, {SAFETENSORS_INDEX} or {PYTORCH_BIN})"
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

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` (a memory-mapped view where the format allows)."""
        if self._tensors is not None:
            return self._tensors[name]
        try:
            return self._files[name].get_tensor(name)
        except SafetensorError as exc:
            raise WeightsError(f"{self.directory}: cannot read {name} ({first_line(exc)})") from None

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_config(directory: Path) -> dict:
    """``config.json`` of a Hugging Face model directory."""
    path = directory / CONFIG
    if not path.is_file():
        raise WeightsError(f"{directory}: no {CONFIG}; a Hugging Face model directory needs config.json beside its weights")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not valid JSON ({first_line(exc)})") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return config


def plan_gpt2(model: nn.Module, shapes: dict[str, tuple[int, ...]], where: str) -> dict[str, tuple[str, bool]]:
    """Match checkpoint names to those of ``model`` (a zoo GPT-2, on the meta device), checking
    every key and shape before any data is read.

    Returns HF name (as stored) -> (zoo name, stored transposed).
    """
    spec = model.spec
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    wanted = gpt2_names(spec)
    stored = {}  # canonical HF name (no prefix) -> name in the file
    unexpected = []
    for name in shapes:
        canonical = name.removeprefix(HF_PREFIX)
        if canonical in wanted:
            stored[canonical] = name
        elif not (is_ignored(canonical) or (canonical == GPT2_LM_HEAD and spec.tie_embeddings)):
            unexpected.append(name)
    missing = [name for name in wanted if name not in stored]
    if missing or unexpected:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected)):
            if names:
                more = f" and {len(names) - 5} more" if len(names) > 5 else ""
                parts.append(f"{label} {', '.join(names[:5])}{more}")
        raise WeightsError(f"{where}: checkpoint does not fit {spec.name}: {'; '.join(parts)}")
    plan = {}
    for canonical, (zoo_name, transposed) in wanted.items():
        name = stored[canonical]
        shape = shapes[name][::-1] if transposed else shapes[name]
        if shape != expected[zoo_name]:
            want = expected[zoo_name][::-1] if transposed else expected[zoo_name]
            raise WeightsError(f"{where}: {name} has shape {shapes[name]}, {spec.name} needs {want}")
        plan[name] = (zoo_name, transposed)
    return plan


def load_hf_directory(spec: ModelSpec, directory: Path, device="cpu", dtype=torch.float32) -> nn.Module:
    """A zoo model with the weights of a Hugging Face GPT-2 directory."""
    check_gpt2_config(read_config(directory), spec, str(directory / CONFIG))
    model = assemble(spec)
    with CheckpointReader(directory) as reader:
        plan = plan_gpt2(model, reader.shapes(), str(directory))
        tensors = {}
        for name, (zoo_name, transposed) in plan.items():
            tensor = reader.get(name)
            if transposed:
                tensor = tensor.t()  # [in, out] -> [out, in], a view: no copy
            tensors[zoo_name] = tensor.to(device=device, dtype=dtype)
    return load_state(model, tensors, str(directory)).eval()


# --------------------------------------------------------------------------- sources

HUB_PATTERNS = [CONFIG, SAFETENSORS, SAFETENSORS_INDEX, "model-*-of-*.safetensors"]
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def hub_directory(repo_id: str) -> Path:
    """The local snapshot of hub repository ``repo_id``: from the cache, or downloaded."""
    from huggingface_hub import constants, hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        directory = Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
        if not any(directory.glob("model*.safetensors")) and not (directory / PYTORCH_BIN).exists():
            hf_hub_download(repo_id, PYTORCH_BIN)
        return directory
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        raise WeightsError(
            f"{repo_id}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; "
            f"download it where the hub is reachable ('hf download {repo_id}') or pass a local directory"
        ) from None
    except (HfHubHTTPError, HFValidationError, EntryNotFoundError, OSError) as exc:
        raise WeightsError(f"{repo_id}: cannot fetch from the Hugging Face hub ({first_line(exc)})") from None


def is_zoo_directory(path: Path) -> bool:
    """A zoo model directory has a spec.yaml; a Hugging Face one has a config.json instead."""
    return (path / SPEC).is_file() and not (path / CONFIG).is_file()


# Spec fields that do not change which weights fit.
ARCHITECTURE_IGNORED = {"name", "description", "weights", "dropout", "tokenizer", "init",
                        "bos_token_id", "eos_token_id", "pad_token_id"}


def load_zoo_directory(spec: ModelSpec, path: Path, device="cpu", dtype=torch.float32) -> nn.Module:
    """A zoo model directory's model, refused if its architecture is not ``spec``'s."""
    model = load_model(path, device=device, dtype=dtype)
    ours = {k: v for k, v in spec.to_dict().items() if k not in ARCHITECTURE_IGNORED}
    theirs = {k: v for k, v in model.spec.to_dict().items() if k not in ARCHITECTURE_IGNORED}
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key):
            raise WeightsError(
                f"{path}: holds {model.spec.name} with {key} {theirs.get(key)!r}, but {spec.name} has {ours.get(key)!r}; "
                "pick the matching model or --set the field"
            )
    return model.eval()


def hf_source_directory(spec: ModelSpec, source: str) -> Path | None:
    """The Hugging Face model directory ``source`` names (a hub id is fetched or found in the
    cache), or None when ``source`` is a zoo model directory."""
    if source == "hf":
        hub_id = spec.weights.get("hf")
        if not hub_id:
            raise WeightsError(f"{spec.name} names no Hugging Face weights (weights.hf); pass --weights PATH or a hub id")
        return hub_directory(hub_id)
    path = Path(source).expanduser()
    if path.is_dir():
        return None if is_zoo_directory(path) else path
    if path.exists():
        raise WeightsError(f"{source}: is a file; pass the directory that holds it (with its config.json)")
    if HUB_ID.fullmatch(source):
        return hub_directory(source)
    raise WeightsError(f"{source}: no such directory, and not a Hugging Face hub id")


def load_weights(spec: ModelSpec, source: str, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> nn.Module:
    """The model ``spec`` describes, with weights from ``source``, in eval mode.

    ``source``: ``"hf"`` (the spec's ``weights.hf`` hub id), a hub id, a local Hugging
    Face directory or a zoo model directory.
    """
    directory = hf_source_directory(spec, source)
    if directory is None:
        return load_zoo_directory(spec, Path(source).expanduser(), device, dtype)
    return load_hf_directory(spec, directory, device, dtype)
