"""Export through a registered exporter plugin into a directory written atomically."""

from __future__ import annotations

import os

from torch import nn

from zoo.core.components import ExportOption
from zoo.errors import ExportError
from zoo.core.files import atomic_directory
from zoo.core.registry import get_registry
from zoo.core.spec import ModelSpec


COMMON_OPTIONS = ("verify", "tokenizer_dir")  # what zoo passes every exporter


def exporter_for(fmt: str):
    registry = get_registry()
    if fmt not in registry.names("exporter"):
        choices = ", ".join(registry.names("exporter")) or "none registered"
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {choices}")
    return registry.get("exporter", fmt)


def declared_options(exporter) -> tuple | None:
    """The :class:`zoo.ExportOption` s an exporter declares, or None for a plain function."""
    return getattr(exporter, "options", None)


def owners(name: str) -> list[str]:
    """The registered formats that declare option ``name``."""
    registry = get_registry()
    return [fmt for fmt in registry.names("exporter")
            if any(o.name == name for o in declared_options(registry.get("exporter", fmt)) or ())]


def export_options(fmt: str, spec: ModelSpec, options: dict) -> dict:
    """``options`` for exporter ``fmt`` with its declared defaults filled in, checked by the
    exporter before any work; one option it does not take is refused in one line."""
    exporter = exporter_for(fmt)
    declared = declared_options(exporter)
    if declared is None:  # a plain function: it takes what it takes
        return dict(options)
    names = {o.name for o in declared}
    for name in options:
        if name not in names and name not in COMMON_OPTIONS:
            flag = ExportOption(name, "").flag
            hint = getattr(exporter, "hints", {}).get(name)
            elsewhere = [f for f in owners(name) if f != fmt]
            raise ExportError(f"{flag} is not an option of --format {fmt}: " + (
                hint or (f"it belongs to --format {', '.join(elsewhere)}" if elsewhere else
                         f"--format {fmt} takes {', '.join(o.flag for o in declared) or 'no options'}")))
    for option in declared:
        value = options.get(option.name)
        if isinstance(option.type, tuple) and value is not None and value not in option.type:
            raise ExportError(f"{option.flag} {value!r} is not supported by --format {fmt}; choose one of: "
                              f"{', '.join(option.type)}")
    values = {o.name: o.default for o in declared}
    values.update({k: v for k, v in options.items() if k in names})
    exporter.check(spec, **values)
    return {**values, **{k: v for k, v in options.items() if k in COMMON_OPTIONS}}


def export_model(model: nn.Module, spec: ModelSpec, out_dir: str | os.PathLike, fmt: str,
                 overwrite: bool = False, **options) -> dict:
    """Run exporter ``fmt`` (see ``zoo plugins``) with ``options`` (its declared ones, see
    :func:`export_options`, and ``verify``/``tokenizer_dir``) into a temporary directory,
    then rename it to ``out_dir``; a failed or interrupted export leaves nothing behind."""
    exporter = exporter_for(fmt)
    if "validate" in options:  # the former name of ``verify``, still accepted
        options.setdefault("verify", options.pop("validate"))
    options = export_options(fmt, spec, options)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        return exporter(model, spec, tmp, **options)


def export(model: nn.Module, out_dir: str | os.PathLike, fmt: str = "onnx", *, overwrite: bool = False,
           **options) -> dict:
    """``zoo export`` for a model in hand: :func:`export_model` with the model's own spec.

    ``options`` are the exporter's (``kv_cache=True``, ``dtype="fp16"``, ...); returns the manifest.
    """
    return export_model(model, model.spec, out_dir, fmt, overwrite=overwrite, **options)
