"""GPT-2 in Hugging Face's layout: the parameter-name table and ``config.json`` <-> spec,
which the ``gpt2`` checkpoint format (``zoo/plugins/checkpoints/gpt2.py``) states as a
:class:`zoo.hf.formats.CheckpointFormat`.

Hugging Face's ``GPT2LMHeadModel`` names its weights ``transformer.h.{i}.attn.c_attn.weight``
and so on, and stores its Conv1D weights ``[in, out]``; the zoo's DecoderLM keeps the same
names under ``stack.`` and stores ``nn.Linear`` weights ``[out, in]``. The table below is
the whole mapping; :func:`zoo.hf.formats.plan` checks a checkpoint's names and shapes
against it before any tensor is read.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import torch

from zoo.core.catalog import list_models
from zoo.core.spec import ModelSpec, load_spec
from zoo.errors import WeightsError

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


def gpt2_names(spec: ModelSpec) -> dict[str, tuple[str, bool]]:
    """Every Hugging Face name of ``spec``'s checkpoint -> (zoo name, stored transposed)."""
    names = {}
    for hf, ours in GPT2_WEIGHT_MAP.items():
        for i in range(spec.n_layers) if "{}" in hf else [0]:
            names[hf.format(i)] = (ours.format(i), hf in GPT2_TRANSPOSED)
    if not spec.tie_embeddings:
        names[GPT2_LM_HEAD] = ("lm_head.weight", False)
    return names


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
            hint = ", ".join(matching_models(values))
            raise WeightsError(
                f"{where}: {key} is {values[key]!r} but {spec.name} has {field} {ours!r}; "
                + (f"this checkpoint fits {hint}" if hint else "pick a model (or --set) that matches the checkpoint")
            )


def matching_models(values: dict) -> list[str]:
    """Catalog models of the same shape as a checkpoint's ``config.json`` values (those of
    :func:`gpt2_config_values`); activation and epsilon may still differ."""
    found = []
    for name in list_models():
        spec = load_spec(name)
        if gpt2_layout_problem(spec):
            continue
        if all(values[key] == implied(spec) for key, (_, implied) in GPT2_CONFIG_MAP.items()
               if key not in ("activation_function", "layer_norm_epsilon")):
            found.append(name)
    return found


def gpt2_spec(config: dict, name: str) -> ModelSpec:
    """The spec of a Hugging Face GPT-2 checkpoint from its ``config.json``: the catalog model
    it fits when there is one, else ``gpt2`` resized to the config and called ``name``."""
    values = gpt2_config_values(config)
    if values["model_type"] != "gpt2":
        raise WeightsError(f"{name}: model_type is {values['model_type']!r}; the zoo reads GPT-2 checkpoints only")
    overrides = {field: values[key] for key, (field, _) in GPT2_CONFIG_MAP.items()}
    overrides["mlp.type"] = HF_ACTIVATION_ALIASES.get(values["activation_function"], values["activation_function"])
    for found in matching_models(values):
        try:
            check_gpt2_config(config, load_spec(found), name)
        except WeightsError:
            continue  # same shape, another activation or epsilon
        return load_spec(found)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        token = config.get(key)
        overrides[key] = token if isinstance(token, int) and 0 <= token < values["vocab_size"] else None
    spec = load_spec("gpt2", overrides)
    return dataclasses.replace(spec, name=name, description=f"GPT-2 read from {name}", weights={})


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
