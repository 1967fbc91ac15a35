"""Turn a failed ONNX export into one line that names the component to blame.

``torch.export`` fails inside the Python code of a component (a data-dependent branch,
an unsupported call): the traceback's frames hold the module. The ONNX translation
fails on a graph node (an operator with no ONNX form): the node's ``nn_module_stack``
says which module produced it. Either way the innermost module that is a registered
component is reported with its kind and plugin name.
"""

from __future__ import annotations

import re

from torch import nn

from zoo.errors import ANSI_COLOUR, ExportError, first_line
from zoo.core.registry import get_registry

_NODE = re.compile(r"%(\w+) : ")
_TARGET = re.compile(r"target=torch\.ops\.([\w.]+)")


def registered_component(cls: type) -> tuple[str, str] | None:
    """``(kind, plugin name)`` of component class ``cls``, or None if it is not registered."""
    entries = [e for e in get_registry().entries() if e.kind != "exporter"]
    for entry in entries:
        if entry.component is cls:
            return entry.kind, entry.name
    for entry in entries:  # an unregistered subclass of a registered component
        if isinstance(entry.component, type) and issubclass(cls, entry.component):
            return entry.kind, entry.name
    return None


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def module_in_traceback(exc: BaseException, root: nn.Module) -> nn.Module | None:
    """The innermost component of ``root`` whose code is on the failing call stack."""
    owned = {id(m) for m in root.modules()}
    for error in _chain(exc):
        found = None
        tb = error.__traceback__
        while tb is not None:
            module = tb.tb_frame.f_locals.get("self")
            if isinstance(module, nn.Module) and id(module) in owned and registered_component(type(module)):
                found = module
            tb = tb.tb_next
        if found is not None:
            return found
    return None


def module_in_program(exc: BaseException, program, root: nn.Module) -> nn.Module | None:
    """The component that produced the graph node the ONNX translation failed on."""
    if program is None:
        return None
    text = " ".join(ANSI_COLOUR.sub("", str(e)) for e in _chain(exc))
    names = set(_NODE.findall(text))
    targets = set(_TARGET.findall(text))
    for node in program.graph.nodes:
        if node.name not in names and str(node.target) not in targets:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        for path, _ in reversed(list(stack.values())):
            try:
                module = root.get_submodule(path)
            except AttributeError:
                continue
            if registered_component(type(module)):
                return module
    return None


def describe_component(cls: type, path: str | None = None) -> str:
    kind, name = registered_component(cls) or ("component", cls.__name__)
    where = f" at {path}" if path else ""
    return f"{kind} plugin {name!r} ({cls.__module__}.{cls.__qualname__}{where})"


def export_failure(exc: BaseException, graph: nn.Module, program=None) -> ExportError:
    """An :class:`ExportError` for ``exc``, raised while exporting ``graph``."""
    component = getattr(exc, "component_class", None)
    path = None
    if component is None:
        module = module_in_traceback(exc, graph) or module_in_program(exc, program, graph)
        if module is not None:
            component = type(module)
            path = next(name for name, m in graph.named_modules() if m is module).removeprefix("model.")
    reason = first_line(exc)
    if any("DataDependent" in type(e).__name__ for e in _chain(exc)):
        reason = f"its Python code branches on tensor values, which a graph cannot hold ({reason})"
    if component is not None:
        return ExportError(f"cannot export {describe_component(component, path)} to ONNX: {reason}; "
                           "change the plugin's code or choose another component")
    return ExportError(f"cannot export the {graph.name} graph of {graph.spec.name} to ONNX: {reason}")
