"""Export through a registered exporter plugin into a directory written atomically."""

from __future__ import annotations

import os

from torch import nn

from zoo.errors import ExportError
from zoo.core.files import atomic_directory
from zoo.core.registry import get_registry
from zoo.core.spec import ModelSpec


def export_model(model: nn.Module, spec: ModelSpec, out_dir: str | os.PathLike, fmt: str,
                 overwrite: bool = False, **options) -> dict:
    """Run exporter ``fmt`` (see ``zoo plugins``) into a temporary directory, then rename
    it to ``out_dir``; a failed or interrupted export leaves nothing behind."""
    registry = get_registry()
    if fmt not in registry.names("exporter"):
        choices = ", ".join(registry.names("exporter")) or "none registered"
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {choices}")
    exporter = registry.get("exporter", fmt)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        return exporter(model, spec, tmp, **options)


def export(model: nn.Module, out_dir: str | os.PathLike, fmt: str = "onnx", *, overwrite: bool = False,
           **options) -> dict:
    """``zoo export`` for a model in hand: :func:`export_model` with the model's own spec.

    ``options`` are the exporter's (``kv_cache=True``, ``dtype="fp16"``, ...); returns the manifest.
    """
    return export_model(model, model.spec, out_dir, fmt, overwrite=overwrite, **options)
