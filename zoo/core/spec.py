"""Typed model specs: YAML → validated :class:`ModelSpec`, checked once at load.

A spec names its components (positional scheme, attention, block layout, norm, MLP)
by the name they are registered under; each name is checked against the component
registry (:mod:`zoo.core.registry`) and each component's
options against that component's ``Options`` dataclass when the spec loads, so a
mistake is reported with its field path before anything is built.

The models with names (``zoo list``) are the *model catalog*: ``registry.yaml`` plus
any files named in ``ZOO_CATALOG``. Reading the catalog needs no plugins (no torch);
only :func:`validate` consults the component registry.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zoo.errors import SpecError
from zoo.core.registry import get_registry

COMPONENT_FIELDS = ("positional", "attention", "cross_attention", "block", "norm", "mlp")
COMPONENT_KIND = {"cross_attention": "attention"}
FAMILIES = ("decoder", "encoder-decoder")
INIT_SCHEMES = ("gpt2", "xavier")
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1  # torch's shapes and positions are int64


@dataclass(frozen=True)
class Component:
    """A component choice: its registered name and validated options."""

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


# --------------------------------------------------------------------------- typing


@dataclass(frozen=True)
class Range:
    """A bound on a numeric option, declared with ``typing.Annotated`` and checked when a spec
    is loaded, with the option's field path in the message::

        d_ff: Annotated[int, Range(min=1)] | None = None
        dropout: Annotated[float, Range(min=0, max=1, max_open=True)] = 0.0
    """

    min: float | None = None
    max: float | None = None
    min_open: bool = False  # the minimum itself is not allowed
    max_open: bool = False

    def check(self, value: Any, path: str) -> None:
        if self.min is not None and (value < self.min or (self.min_open and value == self.min)):
            raise SpecError(f"{path}: {value!r} is too small; {self.describe()}")
        if self.max is not None and (value > self.max or (self.max_open and value == self.max)):
            raise SpecError(f"{path}: {value!r} is too large; {self.describe()}")

    def describe(self) -> str:
        low = "" if self.min is None else f"{'above' if self.min_open else 'at least'} {self.min:g}"
        high = "" if self.max is None else f"{'below' if self.max_open else 'at most'} {self.max:g}"
        return "it must be " + " and ".join(part for part in (low, high) if part)


def _base(tp: Any) -> Any:
    """``Annotated[int, Range(1)]`` -> ``int``."""
    return typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp


def _type_name(tp: Any) -> str:
    tp = _base(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp`` (int, float, bool, str, dict, Optional, Literal)."""
    if isinstance(tp, str):
        tp = eval(tp, {"typing": typing}, {})  # annotations are strings under `from __future__`
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(tp)
        value = coerce(value, base, path)
        for extra in extras:
            if isinstance(extra, Range) and value is not None:
                extra.check(value, path)
        return value
    if origin in (typing.Union, types.UnionType):
        specific = None  # the error of the arm of the value's own type (an int out of range) says more
        for arg in typing.get_args(tp):
            try:
                return coerce(value, arg, path)
            except SpecError as exc:
                specific = exc if _base(arg) is type(value) or (_base(arg) is float and type(value) is int) else specific
        raise specific or SpecError(f"{path}: {value!r} is not a {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise SpecError(f"{path}: {value!r} is not one of {', '.join(map(str, typing.get_args(tp)))}")
        return value
    if tp is type(None):
        if value is not None:
            raise SpecError(f"{path}: expected null, got {value!r}")
        return None
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{path}: {value!r} is not a bool (true or false)")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{path}: {value!r} is not an integer")
        if not INT64_MIN <= value <= INT64_MAX:
            bound = f"largest is 2**63 - 1 = {INT64_MAX}" if value > 0 else f"smallest is -2**63 = {INT64_MIN}"
            raise SpecError(f"{path}: {value} does not fit in 64 bits, as tensor sizes and positions must; the {bound}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{path}: {value!r} is not a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(f"{path}: {value!r} is not a string")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise SpecError(f"{path}: {value!r} is not a mapping")
        return dict(value)
    return value


def build_dataclass(cls: type, data: dict, path: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, naming the field path of any error."""
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)  # keeps Annotated's Range
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpecError(
            f"{path}.{unknown[0]}: unknown field; valid fields are {', '.join(sorted(fields)) or 'none'}"
        )
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = coerce(data[name], hints[name], f"{path}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(f"{path}.{name}: required field is missing")
    try:
        return cls(**values)
    except SpecError:
        raise
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------- YAML


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{where}: invalid YAML: {problem}") from None


CATALOG_VARIABLES = ("ZOO_CATALOG", "ZOO_REGISTRY")  # the second, the old spelling, is still read


def catalog_files() -> list[Path]:
    """The model catalog's files: the zoo's own ``registry.yaml``, then any in ``ZOO_CATALOG``
    (or its old spelling ``ZOO_REGISTRY``: "registry" is the component registry's word)."""
    files = [Path(__file__).parents[1] / "registry.yaml"]  # zoo/registry.yaml, a link to the top-level file
    for variable in CATALOG_VARIABLES:
        files += [Path(p) for p in os.environ.get(variable, "").split(os.pathsep) if p]
    return files


def catalog_entries() -> dict[str, tuple[dict, str]]:
    """Every model in the catalog files, unvalidated: name → (raw mapping, source file)."""
    models: dict[str, tuple[dict, str]] = {}
    for path in catalog_files():
        data = _read_yaml(path)
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise SpecError(f"{path}: a model catalog file needs a top-level 'models:' mapping")
        for name, body in data["models"].items():
            if not isinstance(body, dict):
                raise SpecError(f"{path}: models.{name}: expected a mapping of spec fields")
            models[str(name)] = (body, str(path))
    return models


def list_models() -> list[str]:
    """Names of every model in the catalog."""
    return list(catalog_entries())


@dataclass(frozen=True)
class CatalogEntry:
    """A catalog model as ``zoo list`` shows it: read from YAML, ``extends:`` resolved, not validated."""

    name: str
    family: str
    description: str


def catalog() -> list[CatalogEntry]:
    """The catalog's models with family and description, without loading any plugin."""
    models = catalog_entries()

    def inherited(body: dict, key: str) -> str:
        seen: set[str] = set()
        while key not in body and isinstance(body.get("extends"), str) and body["extends"] not in seen:
            parent = body["extends"]
            seen.add(parent)
            if parent in models:
                body = models[parent][0]
            elif parent.endswith((".yaml", ".yml")):
                body = _single_model(_read_yaml(Path(parent)), Path(parent))[0]
            else:
                break
        return str(body.get(key) or "")

    return [CatalogEntry(name, inherited(body, "family"), inherited(body, "description"))
            for name, (body, _) in models.items()]


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


def _resolve_extends(body: dict, where: str, seen: tuple[str, ...], models: dict) -> dict:
    parent = body.get("extends")
    if parent is None:
        return dict(body)
    if not isinstance(parent, str):
        raise SpecError(f"{where}.extends: {parent!r} is not a model name or spec path")
    if parent in seen:
        chain = " -> ".join((*seen, parent))
        raise SpecError(f"{where}.extends: cycle {chain}; remove one of the 'extends' links")
    if parent in models:
        parent_body, _ = models[parent]
        parent_where = f"models.{parent}"
    elif parent.endswith((".yaml", ".yml")):
        parent_body, parent_where = _single_model(_read_yaml(Path(parent)), Path(parent))
    else:
        raise SpecError(f"{where}.extends: unknown model {parent!r}; choose one of: {', '.join(models)}")
    resolved = _resolve_extends(parent_body, parent_where, (*seen, parent), models)
    child = {k: v for k, v in body.items() if k != "extends"}
    return merge(resolved, child)


def _single_model(data: Any, path: Path) -> tuple[dict, str]:
    if isinstance(data, dict) and isinstance(data.get("models"), dict):
        models = data["models"]
        if len(models) != 1:
            raise SpecError(f"{path}: holds {len(models)} models ({', '.join(models)}); add it with ZOO_CATALOG and name one")
        (name, body), = models.items()
        return {"name": name, **body}, f"{path}: models.{name}"
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec file must be a mapping of spec fields")
    return data, str(path)


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


# --------------------------------------------------------------------------- validation


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


def validate(raw: dict, where: str, name: str) -> ModelSpec:
    """Turn a resolved mapping into a :class:`ModelSpec`, or raise :class:`SpecError`."""
    raw = dict(raw)
    raw.pop("extends", None)
    raw.setdefault("name", name)
    unknown = sorted(set(raw) - set(_TOP_FIELDS))
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: unknown field; valid fields are {', '.join(sorted(_TOP_FIELDS))}")
    hints = typing.get_type_hints(ModelSpec)
    values: dict[str, Any] = {}
    for fname, f in _TOP_FIELDS.items():
        if fname in COMPONENT_FIELDS:
            continue
        if fname in raw:
            values[fname] = coerce(raw[fname], hints[fname], f"{where}.{fname}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(f"{where}.{fname}: required field is missing")
    for fname in ("positional", "attention", "block", "norm", "mlp"):
        if fname not in raw:
            raise SpecError(f"{where}.{fname}: required field is missing")
        values[fname] = _component(raw[fname], fname, where)
    if raw.get("cross_attention") is not None:
        values["cross_attention"] = _component(raw["cross_attention"], "cross_attention", where)

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
    spec = ModelSpec(**values)
    # component-specific shape checks (e.g. rotary needs an even head size)
    registry = get_registry()
    for fname in COMPONENT_FIELDS:
        component = getattr(spec, fname)
        if component is None:
            continue
        cls = registry.get(COMPONENT_KIND.get(fname, fname), component.type)
        check = getattr(cls, "check_spec", None)
        if check is not None:
            problem = check(spec, component.options)
            if problem:
                raise bad(fname, problem)
    return spec


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
            body, where = _single_model(_read_yaml(path), path)
            name = str(body.get("name") or path.stem)
        else:
            raise SpecError(f"unknown model {key!r}; choose one of: {', '.join(models)}, or give a spec file path")
        body = _resolve_extends(body, where, (name,), models)
    if overrides:
        body = merge(body, overrides_to_dict(overrides))
    return validate(body, where, name)
