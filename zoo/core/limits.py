"""Limits before work: a model this machine cannot hold is refused in one line, up front.

Sizes come from shapes, not from allocations: the model is assembled on the meta device
with one and two layers (and one and two decoder layers) and every count is extrapolated
linearly, so a spec asking for 10^9 layers is answered in milliseconds, and a third-party
plugin's own parameters and buffers are counted like the built-ins'.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Hashable

import torch
from torch import nn

from zoo.core.meta import ParameterRow, assemble, parameter_table
from zoo.core.spec import ModelSpec, load_spec
from zoo.errors import SpecError

EXACT_LAYERS = 256  # up to this many layers in all, the parameter table assembles the whole model


@dataclasses.dataclass(frozen=True)
class ModelSize:
    parameters: int
    bytes: int  # parameters and buffers, in the dtype the model is built in


def _layer_fields(spec: ModelSpec) -> dict[str, int]:
    layers = {"n_layers": spec.n_layers}
    if spec.is_encoder_decoder:
        layers["n_decoder_layers"] = spec.n_decoder_layers
    return layers


def assemble_checked(spec: ModelSpec, described: ModelSpec | None = None) -> nn.Module:
    """:func:`zoo.core.meta.assemble`, with a tensor too large to describe as a one-line error
    (naming ``described``, the spec asked for, when ``spec`` is a few-layer version of it)."""

    try:
        return assemble(spec)
    except RuntimeError as exc:
        if "overflow" not in str(exc).lower():
            raise
        raise SpecError(f"{spec_label(described or spec)} has a tensor too large for any machine "
                        f"({str(exc).splitlines()[0]}); make the model smaller") from None


def extrapolate(spec: ModelSpec, measure: Callable[[nn.Module], dict[Hashable, int]]) -> dict[Hashable, int]:
    """``measure`` of the model ``spec`` describes, from assemblies with one and two layers:
    ``f(L, D) = f(1, 1) + (L - 1)·(f(2, 1) - f(1, 1)) + (D - 1)·(f(1, 2) - f(1, 1))``."""
    layers = _layer_fields(spec)
    one = dataclasses.replace(spec, **{name: 1 for name in layers})
    base = measure(assemble_checked(one, spec), one)
    total = dict(base)
    for name, count in layers.items():
        if count == 1:
            continue
        two_spec = dataclasses.replace(one, **{name: 2})
        two = measure(assemble_checked(two_spec, spec), two_spec)
        for key in (*base, *(k for k in two if k not in base)):
            total[key] = total.get(key, 0) + (count - 1) * (two.get(key, 0) - base.get(key, 0))
    return total


def model_size(spec: ModelSpec, dtype: torch.dtype = torch.float32) -> ModelSize:
    """Parameters and bytes of the model ``spec`` describes, built in ``dtype``."""
    def measure(model: nn.Module, _spec: ModelSpec) -> dict[str, int]:
        params = list(model.parameters())  # shared parameters come once
        tensors = params + list(model.buffers())
        nbytes = sum(t.numel() * (dtype.itemsize if t.is_floating_point() else t.element_size()) for t in tensors)
        return {"parameters": sum(p.numel() for p in params), "bytes": nbytes}

    size = extrapolate(spec, measure)
    return ModelSize(size["parameters"], size["bytes"])


def parameter_rows(spec: ModelSpec) -> tuple[list, bool]:
    """:func:`zoo.core.meta.parameter_table` and whether it is exact: the whole model is
    assembled up to :data:`EXACT_LAYERS` layers, beyond that each row is extrapolated."""

    if sum(_layer_fields(spec).values()) <= EXACT_LAYERS:
        return parameter_table(spec, assemble_checked(spec)), True
    counts = extrapolate(spec, lambda model, s: {(r.part, r.plugin): r.count for r in parameter_table(s, model)})
    return [ParameterRow(part, plugin, count) for (part, plugin), count in counts.items()], False


# --------------------------------------------------------------------------- memory


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def host_memory_available() -> int | None:
    """Bytes this process could still allocate: MemAvailable, capped by a cgroup limit."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        available = min(available, max(limit - used, 0))
    return available


def memory_available(device: str | torch.device = "cpu") -> tuple[int | None, str]:
    """Bytes free on ``device`` (None when unknown) and how to name them in a message."""
    device = torch.device(device)
    if device.type == "cpu":
        return host_memory_available(), "this machine has {} of memory available"
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"{device} has {{}} of memory free"
    return None, ""


def check_fits(spec: ModelSpec, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ModelSize:
    """Refuse, in one line, a model whose weights cannot fit in ``device``'s free memory."""
    size = model_size(spec, dtype)
    available, where = memory_available(device)
    if available is not None and size.bytes > available:
        dtype_name = str(dtype).removeprefix("torch.")
        raise SpecError(f"{spec_label(spec)} needs {format_bytes(size.bytes)} of {dtype_name} weights "
                        f"({size.parameters:.3g} parameters); {where.format(format_bytes(available))}; "
                        "make the model smaller or build it where it fits")
    return size


# --------------------------------------------------------------------------- wording


def cpu_has_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels for this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def format_bytes(n: int) -> str:
    """``30064771072`` → ``28.0 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB"):
        if n < 1024 or unit == "ZiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _flat(data: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def spec_label(spec: ModelSpec) -> str:
    """``gpt2 with n_layers=1000000000``: the name and the fields that differ from the catalog's model."""
    try:
        base = _flat(load_spec(spec.name).to_dict())
    except SpecError:
        return spec.name
    changed = [f"{k}={v}" for k, v in _flat(spec.to_dict()).items() if base.get(k) != v]
    return f"{spec.name} with {', '.join(changed)}" if changed else spec.name
