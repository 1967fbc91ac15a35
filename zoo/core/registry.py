"""Component registry, filled by pluggy plugins on first use.

The plugin manager is built in :func:`plugin_manager`: built-ins from an explicit
tuple, then the ``zoo`` entry-point group, then local plugins named on the command
line or in ``ZOO_PLUGINS``; nothing happens at import time.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

import pluggy

from zoo.core import hookspecs
from zoo.errors import PluginError, RegistryError

KINDS = ("positional", "attention", "block", "norm", "mlp", "exporter", "runtime", "checkpoint_format")

BUILTIN_PLUGINS = (
    "zoo.plugins.positional",
    "zoo.plugins.attention",
    "zoo.plugins.blocks",
    "zoo.plugins.norms",
    "zoo.plugins.mlp",
    "zoo.plugins.pictures",
    "zoo.exporters",
    "zoo.plugins.checkpoints",
)


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    component: Any
    origin: str


class Registry:
    """Named components by kind; the object every registration hook receives."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.origin = "unknown"

    def add(self, kind: str, name: str, component: Any) -> None:
        """Register ``component`` as ``name`` of ``kind``; a taken name is an error."""
        if kind not in self._entries:
            raise PluginError(f"{self.origin}: unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        taken = self._entries[kind].get(name)
        if taken is not None:
            raise RegistryError(
                f"{kind} {name!r} is registered twice: by {taken.origin} and by {self.origin}; "
                "uninstall or rename one of them"
            )
        self._entries[kind][name] = Entry(kind, name, component, self.origin)

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str | None = None) -> list[Entry]:
        kinds = KINDS if kind is None else (kind,)
        return [self._entries[k][n] for k in kinds for n in sorted(self._entries[k])]

    def entry(self, kind: str, name: str) -> Entry:
        try:
            return self._entries[kind][name]
        except KeyError:
            choices = ", ".join(self.names(kind)) or "none registered"
            raise RegistryError(f"unknown {kind} {name!r}; choose one of: {choices}") from None

    def get(self, kind: str, name_or_component: Any) -> Any:
        """Look a component up by name; a class or partial passes through unchanged."""
        if isinstance(name_or_component, str):
            return self.entry(kind, name_or_component).component
        return name_or_component

    def name_of(self, kind: str, component: Any) -> str | None:
        for entry in self._entries[kind].values():
            if entry.component is component:
                return entry.name
        return None


def _local_plugin_names() -> tuple[str, ...]:
    raw = os.environ.get("ZOO_PLUGINS", "")
    return tuple(p for p in raw.replace(os.pathsep, ",").split(",") if p.strip())


def _import_local(spec: str) -> ModuleType:
    """Import a plugin named by file path or dotted module name."""
    path = Path(spec)
    try:
        if spec.endswith(".py") or path.exists():
            if not path.is_file():
                raise PluginError(f"plugin file {spec} does not exist; check the --plugin / ZOO_PLUGINS value")
            name = f"zoo_local_plugin_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
            return module
        return importlib.import_module(spec)
    except PluginError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and spec.startswith(exc.name):
            raise PluginError(f"plugin module {spec!r} not found; give a file path or an importable module") from None
        raise PluginError(f"plugin {spec} failed to import: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # a broken plugin must not crash the CLI with a traceback
        raise PluginError(f"plugin {spec} failed to import: {type(exc).__name__}: {exc}") from None


def plugin_manager(local_plugins: Iterable[str] = ()) -> pluggy.PluginManager:
    """Build the plugin manager: built-ins, then entry points, then local plugins."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    try:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT_NAME)
    except Exception as exc:
        raise PluginError(f"an installed zoo plugin failed to load: {type(exc).__name__}: {exc}") from None
    for spec in (*_local_plugin_names(), *local_plugins):
        module = _import_local(spec)
        if pm.is_registered(module):
            continue
        pm.register(module, name=f"local:{spec}")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from None
    return pm


def _origin(pm: pluggy.PluginManager, plugin_name: str, plugin: object) -> str:
    if plugin_name in BUILTIN_PLUGINS:
        return f"built-in ({plugin_name})"
    if plugin_name.startswith("local:"):
        spec = plugin_name[len("local:"):]
        kind = "local file" if spec.endswith(".py") or os.path.exists(spec) else "local module"
        return f"{kind} {spec}"
    for dist_plugin, dist in pm.list_plugin_distinfo():
        if dist_plugin is plugin:
            return f"package {dist.project_name} {dist.version}"
    return f"plugin {plugin_name}"


def collect(pm: pluggy.PluginManager) -> Registry:
    """Run every registration hook, recording which plugin added what."""
    registry = Registry()
    for hook in (pm.hook.zoo_register_components, pm.hook.zoo_register_exporters,
                 pm.hook.zoo_register_checkpoint_formats):
        # Called one implementation at a time (in registration order) so that each
        # entry knows its origin and a duplicate can name both plugins.
        for impl in hook.get_hookimpls():
            registry.origin = _origin(pm, impl.plugin_name, impl.plugin)
            try:
                impl.function(registry=registry)
            except (PluginError, RegistryError):
                raise
            except Exception as exc:
                raise PluginError(f"{registry.origin} failed while registering: {type(exc).__name__}: {exc}") from None
    registry.origin = "unknown"
    return registry


_local: tuple[str, ...] = ()


def use_local_plugins(specs: Iterable[str]) -> None:
    """Name local plugins (``--plugin``) for every later :func:`get_registry` call."""
    global _local
    _local = tuple(specs)


@functools.lru_cache(maxsize=None)
def _cached(local: tuple[str, ...], env: tuple[str, ...]) -> tuple[pluggy.PluginManager, Registry]:
    pm = plugin_manager(local)
    return pm, collect(pm)


def get_registry() -> Registry:
    """The registry for the current plugin set, built on first use."""
    return _cached(_local, _local_plugin_names())[1]


def get_plugin_manager() -> pluggy.PluginManager:
    return _cached(_local, _local_plugin_names())[0]


def reset() -> None:
    """Forget cached registries (tests that install plugins call this)."""
    _cached.cache_clear()
