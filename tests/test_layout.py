"""The shape of the house, checked from the source: rooms, arrows and names.

Every module under ``zoo/``, ``plugins/`` (installed as ``zoo.plugins``) and ``exporters/``
(``zoo.exporters``) is parsed with :mod:`ast`; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"zoo": "zoo", "plugins": "zoo.plugins", "exporters": "zoo.exporters"}  # folder -> package


def module_files() -> dict[str, Path]:
    """Every zoo module name -> its file."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = module_files()


def imported_modules(name: str, path: Path) -> set[str]:
    """The zoo modules ``name`` imports anywhere in its file (function-level imports too).

    ``from zoo.x import y`` is an import of ``zoo.x.y`` where that is a module, else of
    ``zoo.x``; a name that is no module of its own counts as its nearest enclosing module.
    """
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def room(module: str) -> str:
    """``zoo.core.spec`` -> ``zoo.core``; ``zoo.errors`` -> ``zoo.errors``."""
    return ".".join(module.split(".")[:2])


def test_the_layout_is_found():
    assert {"zoo", "zoo.errors", "zoo.core.spec", "zoo.hf.checkpoint", "zoo.plugins", "zoo.exporters.onnx.exporter"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if room(m) == "zoo.core"))
def test_the_core_imports_only_the_core(module):
    """Arrows point down: the core calls no room above it, no plugin and no exporter."""
    outside = sorted(m for m in GRAPH[module] if room(m) not in ("zoo.core", "zoo.errors"))
    assert not outside, f"{module} imports {', '.join(outside)}"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycles_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    """No module reaches itself through imports, counting those inside functions."""
    assert cycles(GRAPH) == []


def test_zoo_top_level_holds_rooms():
    """A file-name prefix is a folder not made yet: zoo/ holds __init__.py, errors.py and packages."""
    flat = sorted(p.name for p in (ROOT / "zoo").glob("*.py") if p.name not in ("__init__.py", "errors.py"))
    assert not flat, f"flat modules in zoo/: {', '.join(flat)}; give each a room (a package)"


def test_pyproject_installs_every_package():
    """A non-editable install takes only the packages pyproject.toml lists: each folder with an
    __init__.py must be there (zoo.training and zoo.lm once were not)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert packages - listed == set()


def test_the_cache_protocol_declares_what_zoo_calls():
    """LayerCache names every member the model, attention and beam search use; zoo's caches have them."""
    import torch

    from zoo.core.cache import KVCache
    from zoo.core.components import LayerCache
    from zoo.exporters.onnx.graphs import PastKeyValues

    declared = {"update", "advance", "reorder", "length", "memory"}
    assert declared <= set(vars(LayerCache)) | set(LayerCache.__annotations__)
    cache = KVCache(n_layers=1, batch=2, n_kv_heads=1, head_dim=4, capacity=3)
    assert all(hasattr(cache, name) for name in declared)
    past = PastKeyValues([torch.zeros(2, 1, 0, 4)], [torch.zeros(2, 1, 0, 4)])
    assert all(hasattr(past, name) for name in declared - {"reorder"})
