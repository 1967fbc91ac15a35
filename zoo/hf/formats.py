"""Hugging Face checkpoint formats: one per ``model_type``, registered by plugins.

A :class:`CheckpointFormat` is data: the weight table (zoo parameter pattern -> the
:mod:`zoo.hf.transforms` transform naming its Hugging Face tensors, ``{i}`` for the
layer), the names that are not weights, and the ``config.json`` <-> spec mapping
(:class:`ConfigField` rows, required values, and the spec template the components come
from). The functions below use that data for every family alike: plan a checkpoint's
names and shapes before reading, convert tensors both ways, build a spec from
``config.json`` and check one against a spec.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import nn

from zoo.core.model_dir import name_mismatch
from zoo.core.catalog import list_models
from zoo.core.spec import ModelSpec, load_spec, merge, overrides_to_dict, parse_spec
from zoo.errors import WeightsError
from zoo.hf.transforms import Same

ROPE_DEFAULT = "default"


def _spec_value(spec: ModelSpec, path: str) -> Any:
    """A spec field by dotted path (``attention.n_heads``); derived properties included."""
    node: Any = spec
    for part in path.split("."):
        node = getattr(node.options, part) if hasattr(node, "options") and not hasattr(node, part) else getattr(node, part)
    return node


@dataclass(frozen=True)
class ConfigField:
    """One ``config.json`` field and the spec field it corresponds to, both ways.

    ``read(config)`` takes the value from a transformers config object (default: the
    attribute ``key``); ``write(spec)`` gives the value ``config.json`` needs (default:
    the spec field at ``field``); the two are compared when a checkpoint is read into a
    spec, unless ``checked`` is False (a training setting such as dropout). ``to_spec``
    turns a read value into the spec's (GPT-2's activation names, say; default: as it is),
    and ``accepts`` lists the spec values the family can hold at all (default: any)."""

    key: str
    field: str
    read: Callable[[Any], Any] | None = None
    write: Callable[[ModelSpec], Any] | None = None
    to_spec: Callable[[Any], Any] | None = None
    accepts: tuple | None = None
    checked: bool = True

    def from_config(self, config) -> Any:
        return self.read(config) if self.read else getattr(config, self.key, None)

    def from_spec(self, spec: ModelSpec) -> Any:
        return self.write(spec) if self.write else _spec_value(spec, self.field)

    def spec_value(self, config) -> Any:
        """The value a spec built from ``config`` gets."""
        value = self.from_config(config)
        return self.to_spec(value) if self.to_spec else value


# zoo MLP type -> the activation name transformers' configs use for it (``ACT2FN``), and the other
# names that mean the same function there
HF_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
HF_ACTIVATION_ALIASES = {"gelu_pytorch_tanh": "gelu_new"}


def activation_field(key: str = "activation_function") -> ConfigField:
    """The ``config.json`` field naming the MLP's activation <-> the spec's ``mlp.type``
    (GPT-2's and Marian's ``activation_function``), for the MLP types in :data:`HF_ACTIVATIONS`."""
    to_zoo = {name: zoo for zoo, name in HF_ACTIVATIONS.items()}

    def read(config) -> Any:
        name = getattr(config, key, None)
        return HF_ACTIVATION_ALIASES.get(name, name)

    return ConfigField(key, "mlp.type", read=read, write=lambda spec: HF_ACTIVATIONS.get(spec.mlp.type),
                       to_spec=lambda name: to_zoo.get(name, name), accepts=tuple(HF_ACTIVATIONS))


def rope_parameter(name: str, default: Any = None) -> Callable[[Any], Any]:
    """A reader of one of transformers 5's ``rope_parameters`` (``rope_theta``, ``partial_rotary_factor``)."""
    return lambda config: (getattr(config, "rope_parameters", None) or {}).get(name, default)


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    return a == b


def _template_fields(template: dict):
    """(``attention.bias``, False) for each field of a spec template (two levels deep)."""
    for key, value in template.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, wanted in items:
            yield (key if sub is None else f"{key}.{sub}"), wanted


@dataclass
class CheckpointFormat:
    """A Hugging Face model family as the zoo reads and writes it.

    ``weights``: zoo parameter pattern -> transform (``{i}`` the layer, ``{j}`` a decoder
    layer of an encoder-decoder; a function of the spec where the layout depends on it); ``head``: the untied output head's transform; ``ignored``: Hugging
    Face name patterns that are not weights (mask buffers); ``optional_prefix``: a prefix
    some checkpoints leave off (old GPT-2 files). ``template``: the spec fields every
    model of the family shares (its components); ``fields``: the ``config.json`` fields
    that size it; ``fixed``: ``config.json`` fields the zoo reads with one value only
    (a value, or a function of the transformers config).
    """

    model_type: str
    architecture: str  # the transformers class, e.g. "LlamaForCausalLM"
    weights: dict[str, Any]
    template: dict
    fields: tuple[ConfigField, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    head: Any = Same("lm_head.weight")
    ignored: tuple[str, ...] = ()
    optional_prefix: str = ""
    renamed: dict[str, str] = field(default_factory=dict)  # checkpoint name -> the transformers module's, where they differ
    defaults: dict = field(default_factory=dict)  # spec fields a spec read from config.json gets, unchecked (tokenizer)
    zero: tuple[str, ...] = ()  # Hugging Face tensors the zoo has no place for, read only when all zero
    description: str = ""

    def __repr__(self) -> str:  # how ``zoo plugins`` names a format
        return f"{type(self).__qualname__}({self.model_type!r}: {self.architecture})"

    # ------------------------------------------------------------------ weights

    def table(self, spec: ModelSpec) -> dict[str, Any]:
        """Every zoo parameter name of ``spec`` -> its transform, layers expanded (``{i}`` over
        the layers, and for an encoder-decoder ``{j}`` over the decoder's)."""
        out = {}
        for ours, transform in self.weights.items():
            if callable(transform) and not hasattr(transform, "sources"):
                transform = transform(spec)  # an entry that depends on the spec (tied or not)
            key = next((k for k in LAYER_KEYS if k in ours), None)
            for i in range(LAYER_KEYS[key](spec)) if key else [None]:
                out[ours.replace(key, str(i)) if key else ours] = _at_layer(transform, key, i)
        if not spec.tie_embeddings:
            out["lm_head.weight"] = self.head
        return out

    def is_ignored(self, hf_name: str, spec: ModelSpec) -> bool:
        if spec.tie_embeddings and hf_name in self.head.sources():
            return True  # a tied checkpoint may keep a copy of the head
        return any(_matches(pattern, hf_name) for pattern in (*self.ignored, *self.zero))

    # ------------------------------------------------------------------ config.json <-> spec

    def hf_config_class(self):
        from transformers import AutoConfig

        return type(AutoConfig.for_model(self.model_type))

    def parse_config(self, config: dict, where: str):
        """``config.json`` as the transformers config object, defaults filled in."""
        values = {k: v for k, v in config.items() if k != "model_type"}
        try:
            return self.hf_config_class()(**values)
        except (TypeError, ValueError, KeyError) as exc:
            raise WeightsError(f"{where}: transformers cannot read this {self.model_type} config ({exc})") from None

    def refuse_unsupported(self, config: dict, parsed, where: str) -> None:
        """Raise for what the zoo does not implement: rotary scaling, other fixed fields."""
        scaling = config.get("rope_scaling") or {}
        scaled = scaling.get("rope_type", scaling.get("type", ROPE_DEFAULT)) if isinstance(scaling, dict) else scaling
        parsed_type = (getattr(parsed, "rope_parameters", None) or {}).get("rope_type", ROPE_DEFAULT)
        kind = scaled if scaled != ROPE_DEFAULT else parsed_type
        if kind != ROPE_DEFAULT:
            raise WeightsError(f"{where}: rope_scaling {kind!r} is not implemented by the zoo (plain rotary only); "
                               "refused rather than run with different positions")
        for key, wanted in self.fixed.items():
            expected = wanted(parsed) if callable(wanted) else wanted
            value = getattr(parsed, key, None)
            if not same_value(value, expected):
                raise WeightsError(f"{where}: {key} is {value!r}; the zoo reads {self.model_type} checkpoints "
                                   f"with {key} {expected!r}")

    def spec_problem(self, spec: ModelSpec) -> str | None:
        """Why ``spec`` cannot be this family's checkpoint, or None if it can."""
        sized = {f.field for f in self.fields}
        for path, wanted in _template_fields(self.template):
            if path in sized:
                continue
            value = _spec_value_or_none(spec, path)
            if not same_value(value, wanted):
                return f"{spec.name} has {path} {value!r}; a {self.model_type} checkpoint needs {wanted!r}"
        for f in self.fields:
            value = _spec_value_or_none(spec, f.field)
            if f.accepts is not None and value not in f.accepts:
                return (f"{spec.name} has {f.field} {value!r}; a {self.model_type} checkpoint needs one of "
                        f"{', '.join(map(str, f.accepts))}")
        return None

    def first_difference(self, parsed, spec: ModelSpec) -> tuple[ConfigField, Any, Any] | None:
        for f in self.fields:
            if not f.checked:
                continue
            theirs, ours = f.from_config(parsed), f.from_spec(spec)
            if not same_value(theirs, ours):
                return f, theirs, ours
        return None

    def fitting_models(self, parsed) -> list[str]:
        """The catalog models a checkpoint (its parsed config) fits exactly."""
        specs = {model: load_spec(model) for model in list_models()}
        return [model for model, spec in specs.items()
                if self.spec_problem(spec) is None and self.first_difference(parsed, spec) is None]

    def check_config(self, config: dict, spec: ModelSpec, where: str) -> None:
        """Raise :class:`WeightsError` naming the first ``config.json`` field that does not fit ``spec``."""
        problem = self.spec_problem(spec)
        if problem:
            raise WeightsError(f"{where}: {problem}")
        parsed = self.parse_config(config, where)
        self.refuse_unsupported(config, parsed, where)
        found = self.first_difference(parsed, spec)
        if found:
            f, theirs, ours = found
            fits = self.fitting_models(parsed)
            raise WeightsError(f"{where}: {f.key} is {theirs!r} but {spec.name} has {f.field} {ours!r}; "
                               + (f"this checkpoint fits {', '.join(fits)}" if fits else
                                  "pick a model (or --set) that matches the checkpoint"))

    def spec_from_config(self, config: dict, name: str) -> ModelSpec:
        """The spec of a checkpoint from its ``config.json``: the catalog model it fits when
        there is one, else the family's template sized by the config and called ``name``."""
        parsed = self.parse_config(config, name)
        self.refuse_unsupported(config, parsed, name)
        fits = self.fitting_models(parsed)
        if fits:
            return load_spec(fits[0])
        values = {f.field: f.spec_value(parsed) for f in self.fields}
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            token = getattr(parsed, key, None)
            if isinstance(token, list):
                token = token[0] if token else None
            ok = isinstance(token, int) and 0 <= token < values["vocab_size"]
            values[key] = token if ok else None
        raw = merge(merge(self.template, self.defaults), overrides_to_dict(values))
        raw["description"] = f"{self.architecture} read from {name}"
        return parse_spec(raw, name, name)

    def hf_config(self, spec: ModelSpec, dtype: torch.dtype = torch.float32):
        """The transformers config of ``spec`` (which must pass :meth:`spec_problem`)."""
        values = {f.key: f.from_spec(spec) for f in self.fields}
        for key, wanted in self.fixed.items():
            if not callable(wanted):
                values[key] = wanted
        return self.hf_config_class()(
            **values, bos_token_id=spec.bos_token_id, eos_token_id=spec.eos_token_id, pad_token_id=spec.pad_token_id,
            dtype=str(dtype).removeprefix("torch."), architectures=[self.architecture],
        )

    def hf_class(self):
        import transformers

        return getattr(transformers, self.architecture)


def _spec_value_or_none(spec: ModelSpec, path: str) -> Any:
    try:
        return _spec_value(spec, path)
    except AttributeError:
        return None


# a layer placeholder in a weight pattern -> how many layers it stands for
LAYER_KEYS: dict[str, Callable[[ModelSpec], int]] = {"{i}": lambda spec: spec.n_layers,
                                                     "{j}": lambda spec: spec.n_decoder_layers}


def _at_layer(transform, key: str | None, i: int | None):
    """``transform`` with its names' layer placeholder ``key`` set to ``i`` (wrappers included)."""
    if key is None:
        return transform
    if hasattr(transform, "inner"):
        return replace(transform, inner=_at_layer(transform.inner, key, i))
    if hasattr(transform, "names"):
        return replace(transform, names=tuple(n.replace(key, str(i)) for n in transform.names))
    return replace(transform, name=transform.name.replace(key, str(i)))


def _matches(pattern: str, name: str) -> bool:
    import re

    regex = re.escape(pattern)
    for key in LAYER_KEYS:
        regex = regex.replace(re.escape(key), r"\d+")
    return re.fullmatch(regex, name) is not None


# --------------------------------------------------------------------------- tensors both ways


def expected_shapes(fmt: CheckpointFormat, model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every Hugging Face tensor name of ``model``'s checkpoint -> its shape (from meta tensors)."""
    spec = model.spec
    ours = model.state_dict()
    shapes = {}
    for zoo_name, transform in fmt.table(spec).items():
        meta = torch.empty(ours[zoo_name].shape, device="meta")
        for name, tensor in zip(transform.sources(), transform.to_hf(meta, spec)):
            shapes[name] = tuple(tensor.shape)
    return shapes


def plan(fmt: CheckpointFormat, model: nn.Module, shapes: dict[str, tuple[int, ...]], where: str) -> dict[str, str]:
    """Match a checkpoint's names and shapes to ``model``'s (a zoo model, on the meta device)
    before any data is read; returns canonical Hugging Face name -> name as stored."""
    spec = model.spec
    expected = expected_shapes(fmt, model)
    stored, unexpected = {}, []
    for name in shapes:
        canonical = name if name in expected or not fmt.optional_prefix else fmt.optional_prefix + name
        if canonical in expected:
            stored[canonical] = name
        elif not (fmt.is_ignored(name, spec) or fmt.is_ignored(canonical, spec)):
            unexpected.append(name)
    missing = [name for name in expected if name not in stored]
    if missing or unexpected:
        raise WeightsError(f"{where}: checkpoint does not fit {spec.name}: {name_mismatch(missing, unexpected)}")
    for canonical, shape in expected.items():
        if shapes[stored[canonical]] != shape:
            raise WeightsError(f"{where}: {stored[canonical]} has shape {shapes[stored[canonical]]}, "
                               f"{spec.name} needs {shape}")
    return stored


def to_zoo_tensors(fmt: CheckpointFormat, spec: ModelSpec, get: Callable[[str], torch.Tensor],
                   convert: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The zoo's tensors from Hugging Face ones, ``get(hf_name)`` reading each; ``convert`` (a cast,
    a move) applies to each before the next is read."""
    convert = convert or (lambda t: t)
    return {zoo_name: convert(t.to_zoo([get(n) for n in t.sources()], spec)) for zoo_name, t in fmt.table(spec).items()}


def to_hf_state_dict(model: nn.Module, fmt: CheckpointFormat | None = None) -> dict[str, torch.Tensor]:
    """``model``'s weights under its family's Hugging Face names and layout."""
    spec = model.spec
    fmt = fmt or format_for_spec(spec)
    ours = model.state_dict()
    out = {}
    for zoo_name, transform in fmt.table(spec).items():
        for name, tensor in zip(transform.sources(), transform.to_hf(ours[zoo_name], spec)):
            out[name] = tensor.contiguous()
    return out


def to_hf_model(model: nn.Module, fmt: CheckpointFormat | None = None):
    """The transformers model of ``model``'s family (or ``fmt``'s) holding its weights, in eval mode.

    transformers' own ``from_pretrained(None, config=..., state_dict=...)`` builds it: on the
    meta device, taking the tensors as they are, with the buffers it computes (rotary
    frequencies, Marian's position tables) made by transformers itself."""
    fmt = fmt or format_for_spec(model.spec)
    dtype = model.token_table.weight.dtype
    tensors = {fmt.renamed.get(name, name): t for name, t in to_hf_state_dict(model, fmt).items()}
    config = fmt.hf_config(model.spec, dtype)
    with quiet_transformers():  # no "Loading weights" bar for tensors already in memory
        hf_model, info = fmt.hf_class().from_pretrained(None, config=config, state_dict=tensors, dtype=dtype,
                                                        output_loading_info=True)
    unset = [name for name in info["missing_keys"] if name not in getattr(hf_model, "all_tied_weights_keys", {})
             and not fmt.is_ignored(name, model.spec)]
    if unset:
        raise WeightsError(f"{fmt.architecture} has parameters the {fmt.model_type} table does not fill: "
                           f"{', '.join(sorted(unset)[:3])}")
    return hf_model.eval()


@contextmanager
def quiet_transformers():
    """transformers' progress bars off for the duration (its own switch), as they were after."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------- the registry


def formats() -> dict[str, CheckpointFormat]:
    """Every registered checkpoint format by ``model_type``."""
    from zoo.core.registry import get_registry

    registry = get_registry()
    return {name: registry.get("checkpoint_format", name) for name in registry.names("checkpoint_format")}


def checkpoint_format(model_type: Any, where: str) -> CheckpointFormat:
    """The format registered for ``model_type``, or a :class:`WeightsError` naming the supported ones."""
    known = formats()
    if model_type not in known:
        raise WeightsError(f"{where}: model_type {model_type!r} is not supported; "
                           f"the zoo reads {', '.join(known)} checkpoints (add a family with a checkpoint_format plugin)")
    return known[model_type]


def closest_format(spec: ModelSpec) -> CheckpointFormat | None:
    """The format of the catalog model ``spec`` is named after (``gpt2`` with ``--set``), if any."""
    if spec.name in list_models():
        for fmt in formats().values():
            if fmt.spec_problem(load_spec(spec.name)) is None:
                return fmt
    return None


def layout_problem(spec: ModelSpec) -> str | None:
    """Why no registered family can hold ``spec``, or None when one can."""
    problems = {name: fmt.spec_problem(spec) for name, fmt in formats().items()}
    if not all(problems.values()):
        return None
    closest = closest_format(spec)
    if closest is not None:
        return problems[closest.model_type]
    return f"{spec.name} fits none of the checkpoint formats {', '.join(problems)} ({next(iter(problems.values()))})"


def format_for_spec(spec: ModelSpec) -> CheckpointFormat:
    """The registered format whose layout ``spec`` has."""
    for fmt in formats().values():
        if fmt.spec_problem(spec) is None:
            return fmt
    raise WeightsError(f"no Hugging Face checkpoint format can hold this model: {layout_problem(spec)}")
