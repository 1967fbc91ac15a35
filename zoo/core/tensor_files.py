"""Reading a safetensors file tensor by tensor, each in memory of its own and cast as it arrives:
what loading a model in a smaller dtype than it is stored in, or restoring a few of its tensors,
needs without the whole file resident (a mapped file's pages count as resident memory)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from zoo.errors import WeightsError, first_line

READ_CHUNK = 64 << 20  # bytes: a larger tensor is read in slices of its first dimension


def read_tensor(path: Path, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One tensor of a safetensors file in memory of its own, cast to ``dtype`` (if floating).

    The file is mapped only while a slice of at most :data:`READ_CHUNK` bytes is read, and each
    slice is cast as it arrives, so reading a model tensor by tensor never holds the file, or
    one large tensor (an embedding) in its stored dtype, resident beside what it is cast to."""
    try:
        with safe_open(str(path), framework="pt") as f:
            part = f.get_slice(name)
            shape = part.get_shape()
            rows = max(1, READ_CHUNK // max(1, math.prod(shape[1:]) * 4)) if shape else 0
            if not shape or shape[0] <= rows:
                tensor = f.get_tensor(name)
                cast = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
                return cast.clone() if cast is tensor else cast  # nothing left pointing into the mapping
        out = None
        for start in range(0, shape[0], rows):
            with safe_open(str(path), framework="pt") as f:
                chunk = f.get_slice(name)[start:start + rows]
            if out is None:
                out = torch.empty(shape, dtype=dtype if dtype is not None and chunk.is_floating_point() else chunk.dtype)
            out[start:start + rows] = chunk
        return out
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path}: cannot read {name} ({first_line(exc)}); the file may be truncated") from None


def read_tensors(path: Path, dtype=None) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, read one at a time by :func:`read_tensor`: the peak is
    the tensors read so far plus one slice as stored. ``dtype``: a dtype for every floating
    tensor, or ``dtype(name, shape)`` choosing one per tensor (None: as stored)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path}: cannot read safetensors file ({first_line(exc)}); it may be truncated") from None
    choose = dtype if callable(dtype) else (lambda name, shape: dtype)
    return {name: read_tensor(path, name, choose(name, shape)) for name, shape in shapes.items()}
