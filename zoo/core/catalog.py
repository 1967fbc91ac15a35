"""The model catalog: the named models ``zoo list`` shows, read from YAML with no plugins (no torch).

The catalog is ``registry.yaml`` plus any files named in ``ZOO_CATALOG``; a model may
``extends:`` another (by name or spec file). :mod:`zoo.core.spec` turns a model into a checked
:class:`~zoo.core.spec.ModelSpec`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from zoo.errors import SpecError


def read_yaml(path: Path) -> Any:
    """A YAML file, or a one-line SpecError with the file, line and column of the problem."""
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
    """Every model in the catalog files, unchecked: name → (raw mapping, source file)."""
    models: dict[str, tuple[dict, str]] = {}
    for path in catalog_files():
        data = read_yaml(path)
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
    """A catalog model as ``zoo list`` shows it: read from YAML, ``extends:`` resolved, not checked."""

    name: str
    family: str
    description: str


def catalog() -> list[CatalogEntry]:
    """The catalog's models with family and description, without loading any plugin (the
    ``extends:`` chain is laid field over field, not merged component by component)."""
    models = catalog_entries()
    out = []
    for name, (body, _) in models.items():
        try:
            body = resolve_extends(body, f"models.{name}", (name,), models, lambda base, child: {**base, **child})
        except SpecError:
            pass  # zoo list shows what it can; loading the model reports the problem
        out.append(CatalogEntry(name, str(body.get("family") or ""), str(body.get("description") or "")))
    return out


def resolve_extends(body: dict, where: str, seen: tuple[str, ...], models: dict,
                    combine: Callable[[dict, dict], dict]) -> dict:
    """``body`` with its ``extends:`` chain (catalog names or spec files) resolved, each child
    laid over its parent with ``combine``; a cycle or an unknown parent is a SpecError."""
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
        parent_body, parent_where = single_model(read_yaml(Path(parent)), Path(parent))
    else:
        raise SpecError(f"{where}.extends: unknown model {parent!r}; choose one of: {', '.join(models)}")
    resolved = resolve_extends(parent_body, parent_where, (*seen, parent), models, combine)
    child = {k: v for k, v in body.items() if k != "extends"}
    return combine(resolved, child)


def single_model(data: Any, path: Path) -> tuple[dict, str]:
    """The one model of spec file ``path`` (a spec mapping, or a catalog file holding one model)."""
    if isinstance(data, dict) and isinstance(data.get("models"), dict):
        models = data["models"]
        if len(models) != 1:
            raise SpecError(f"{path}: holds {len(models)} models ({', '.join(models)}); add it with ZOO_CATALOG and name one")
        (name, body), = models.items()
        return {"name": name, **body}, f"{path}: models.{name}"
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec file must be a mapping of spec fields")
    return data, str(path)
