"""Typed model specs: YAML → :class:`ModelSpec`, checked once at load.

A spec names its components (positional scheme, attention, block layout, norm, MLP)
by the name they are registered under; each name is checked against the component
registry (:mod:`zoo.core.registry`) and each component's
options against that component's ``Options`` dataclass when the spec loads, so a
mistake is reported with its field path before anything is built.

The models with names (``zoo list``) are the *model catalog*: ``registry.yaml`` plus
any files named in ``ZOO_CATALOG``. Reading the catalog needs no plugins (no torch);
only :func:`parse_spec` consults the component registry.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zoo.core.catalog import catalog_entries, read_yaml, resolve_extends, single_model
from zoo.core.registry import get_registry
from zoo.core.typed import build_dataclass, coerce
from zoo.errors import SpecError

COMPONENT_FIELDS = ("positional", "attention", "cross_attention", "block", "norm", "mlp")
COMPONENT_KIND = {"cross_attention": "attention"}
FAMILIES = ("decoder", "encoder-decoder")
INIT_SCHEMES = ("gpt2", "xavier")


@dataclass(frozen=True)
class Component:
    """A component choice: its registered name and checked options."""

    type: str
    options: Any  # the component's Options dataclass instance

    def to_dict(self) -> dict:
        return {"type": self.type, **dataclasses.asdict(self.options)}


@dataclass(frozen=True)
class ModelSpec:
    """A fully resolved model description. Build one with :func:`load_spec`."""

    name: str
    family: str
    vocab_size: int
    context_length: int
    d_model: int
    n_layers: int
    positional: Component
    attention: Component
    block: Component
    norm: Component
    mlp: Component
    cross_attention: Component | None = None
    n_decoder_layers: int = 0
    dropout: float = 0.0
    tie_embeddings: bool = True
    scale_embeddings: bool = False
    init: str = "gpt2"
    description: str = ""
    tokenizer: str | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    weights: dict = field(default_factory=dict)

    # derived from the attention options
    @property
    def n_heads(self) -> int:
        return self.attention.options.n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.attention.options.n_kv_heads or self.attention.options.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def d_ff(self) -> int:
        """The MLP's hidden width: its ``d_ff`` option, or 4 × ``d_model`` when it has none."""
        return getattr(self.mlp.options, "d_ff", None) or 4 * self.d_model

    @property
    def is_encoder_decoder(self) -> bool:
        return self.family == "encoder-decoder"

    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Component):
                value = value.to_dict()
            if value is None or (f.name == "weights" and not value):
                continue
            out[f.name] = value
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- merging


def _as_component(value: Any) -> Any:
    return {"type": value} if isinstance(value, str) else value


def _accepted_options(field: str, type_name: Any) -> set[str]:
    """Option names the component ``type_name`` of ``field``'s kind takes (none if unknown)."""
    registry = get_registry()
    kind = COMPONENT_KIND.get(field, field)
    if not isinstance(type_name, str) or type_name not in registry.names(kind):
        return set()
    options = getattr(registry.get(kind, type_name), "Options", None)
    return {f.name for f in dataclasses.fields(options)} if options else set()


def merge(base: dict, override: dict) -> dict:
    """Deep-merge ``override`` into ``base``.

    A component switched to another ``type`` keeps only the base options the new type
    also accepts (``attention=cosine`` keeps ``n_heads``; ``positional=rotary`` drops
    nothing it could use), since one type's options need not fit another.
    """
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key in COMPONENT_FIELDS:
            value = _as_component(value)
            old = _as_component(out.get(key))
            if not (isinstance(value, dict) and isinstance(old, dict)):
                out[key] = copy.deepcopy(value)
            elif value.get("type", old.get("type")) == old.get("type"):
                out[key] = merge(old, value)
            else:
                keep = _accepted_options(key, value["type"])
                out[key] = {**{k: v for k, v in old.items() if k in keep}, **copy.deepcopy(value)}
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``path=value`` from ``--set``; the value is read as a YAML scalar."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--set {text!r}: expected PATH=VALUE, e.g. attention.n_kv_heads=4")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def overrides_to_dict(overrides: dict[str, Any]) -> dict:
    """``{"attention.n_kv_heads": 4}`` → ``{"attention": {"n_kv_heads": 4}}``."""
    out: dict = {}
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            if part in COMPONENT_FIELDS and isinstance(node.get(part), str):
                node[part] = _as_component(node[part])  # positional=rotary, then positional.base=...
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {dotted}: {part} was already set to a value")
        if parts[-1] in COMPONENT_FIELDS and isinstance(node.get(parts[-1]), dict) and isinstance(value, str):
            value = {**node[parts[-1]], "type": value}
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------- checking


def _component(raw: Any, key: str, where: str, **context) -> Component:
    raw = _as_component(raw)
    path = f"{where}.{key}"
    if not isinstance(raw, dict) or "type" not in raw:
        raise SpecError(f"{path}: give a component name, or a mapping with 'type' and its options")
    kind = COMPONENT_KIND.get(key, key)
    registry = get_registry()
    name = raw["type"]
    if name not in registry.names(kind):
        raise SpecError(f"{path}.type: unknown {kind} {name!r}; choose one of: {', '.join(registry.names(kind))}")
    cls = registry.get(kind, name)
    options_cls = getattr(cls, "Options", None)
    options = raw.copy()
    del options["type"]
    if options_cls is None:
        if options:
            raise SpecError(f"{path}.{sorted(options)[0]}: unknown field; {kind} {name!r} takes no options")
        return Component(name, None)
    return Component(name, build_dataclass(options_cls, options, path))


_TOP_FIELDS = {f.name: f for f in dataclasses.fields(ModelSpec)}


def parse_spec(raw: dict, where: str, name: str) -> ModelSpec:
    """Turn a resolved mapping into a :class:`ModelSpec`, or raise :class:`SpecError` naming
    the field path: the fields' types, the components, then the sizes and each component's own check."""
    raw = dict(raw)
    raw.pop("extends", None)
    raw.setdefault("name", name)
    unknown = sorted(set(raw) - set(_TOP_FIELDS))
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: unknown field; valid fields are {', '.join(sorted(_TOP_FIELDS))}")
    values = {**_plain_fields(raw, where), **_components(raw, where)}
    _check_sizes(values, where)
    spec = ModelSpec(**values)
    _check_components(spec, where)
    return spec


def _plain_fields(raw: dict, where: str) -> dict[str, Any]:
    """The fields that are not components, checked against their annotations."""
    hints = typing.get_type_hints(ModelSpec)
    values: dict[str, Any] = {}
    for fname, f in _TOP_FIELDS.items():
        if fname in COMPONENT_FIELDS:
            continue
        if fname in raw:
            values[fname] = coerce(raw[fname], hints[fname], f"{where}.{fname}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(f"{where}.{fname}: required field is missing")
    return values


def _components(raw: dict, where: str) -> dict[str, Component]:
    """Every component, named in the registry, with its options."""
    values = {}
    for fname in ("positional", "attention", "block", "norm", "mlp"):
        if fname not in raw:
            raise SpecError(f"{where}.{fname}: required field is missing")
        values[fname] = _component(raw[fname], fname, where)
    if raw.get("cross_attention") is not None:
        values["cross_attention"] = _component(raw["cross_attention"], "cross_attention", where)
    return values


def _check_sizes(values: dict, where: str) -> None:
    """What the fields must satisfy together: the family, positive sizes, heads dividing widths, token ids."""
    def bad(fname: str, message: str) -> SpecError:
        return SpecError(f"{where}.{fname}: {message}")

    if values["family"] not in FAMILIES:
        raise bad("family", f"{values['family']!r} is not one of {', '.join(FAMILIES)}")
    if values.get("init", "gpt2") not in INIT_SCHEMES:
        raise bad("init", f"{values['init']!r} is not one of {', '.join(INIT_SCHEMES)}")
    for fname in ("vocab_size", "context_length", "d_model", "n_layers"):
        if values[fname] <= 0:
            raise bad(fname, f"{values[fname]} must be positive")
    if not 0.0 <= values.get("dropout", 0.0) < 1.0:
        raise bad("dropout", f"{values['dropout']} must be in [0, 1)")
    attention = values["attention"].options
    n_heads = getattr(attention, "n_heads", None)
    if not isinstance(n_heads, int) or n_heads <= 0:
        raise bad("attention.n_heads", f"{n_heads!r} must be a positive integer")
    if values["d_model"] % n_heads:
        raise bad("attention.n_heads", f"d_model {values['d_model']} is not divisible by {n_heads} heads")
    n_kv = getattr(attention, "n_kv_heads", None)
    if n_kv is not None and (n_kv <= 0 or n_heads % n_kv):
        raise bad("attention.n_kv_heads", f"{n_kv} does not divide n_heads {n_heads}")
    if values["family"] == "encoder-decoder":
        if values.get("n_decoder_layers", 0) <= 0:
            raise bad("n_decoder_layers", "an encoder-decoder needs a positive number of decoder layers")
        if "cross_attention" not in values:
            raise bad("cross_attention", "an encoder-decoder needs a cross-attention component, e.g. 'cross'")
    for fname in ("bos_token_id", "eos_token_id", "pad_token_id"):
        token = values.get(fname)
        if token is not None and not 0 <= token < values["vocab_size"]:
            raise bad(fname, f"{token} is outside the vocabulary of {values['vocab_size']}")


def _check_components(spec: ModelSpec, where: str) -> None:
    """Each component class's own ``check_spec`` (e.g. rotary needs an even head size)."""
    registry = get_registry()
    for fname in COMPONENT_FIELDS:
        component = getattr(spec, fname)
        if component is None:
            continue
        check = getattr(registry.get(COMPONENT_KIND.get(fname, fname), component.type), "check_spec", None)
        problem = check(spec, component.options) if check is not None else None
        if problem:
            raise SpecError(f"{where}.{fname}: {problem}")


def load_spec(name_or_path: str | os.PathLike | ModelSpec, overrides: dict[str, Any] | None = None) -> ModelSpec:
    """Load a spec by catalog name or YAML path, applying ``overrides`` (dotted paths).

    >>> load_spec("gpt2", {"positional": "rotary", "attention.n_kv_heads": 4})
    """
    if isinstance(name_or_path, ModelSpec):
        if not overrides:
            return name_or_path
        body, where, name = name_or_path.to_dict(), f"models.{name_or_path.name}", name_or_path.name
        models = catalog_entries()
    else:
        key = str(name_or_path)
        models = catalog_entries()
        if key in models:
            body, _ = models[key]
            where, name = f"models.{key}", key
        elif key.endswith((".yaml", ".yml")) or os.path.sep in key or Path(key).exists():
            path = Path(key)
            if path.is_dir():
                path = path / "spec.yaml"
            body, where = single_model(read_yaml(path), path)
            name = str(body.get("name") or path.stem)
        else:
            raise SpecError(f"unknown model {key!r}; choose one of: {', '.join(models)}, or give a spec file path")
        body = resolve_extends(body, where, (name,), models, merge)
    if overrides:
        body = merge(body, overrides_to_dict(overrides))
    return parse_spec(body, where, name)
