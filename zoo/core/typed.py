"""Typed values from YAML: a value checked against its annotation, with the field path in every error.

:func:`build_dataclass` makes a component's ``Options`` (or any dataclass) from a mapping;
:class:`Range` bounds a numeric field declared ``Annotated[int, Range(min=1)]``. Annotations
are resolved with ``typing.get_type_hints`` (never evaluated from strings here).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from zoo.errors import SpecError

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1  # torch's shapes and positions are int64


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
    """Check ``value`` against annotation ``tp`` (int, float, bool, str, dict, Optional, Literal),
    a resolved annotation (``typing.get_type_hints``, ``include_extras=True`` to keep ranges)."""
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
