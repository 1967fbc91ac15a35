"""Weights that wait on disk while other work needs the memory.

    with weights_on_disk(model, out_dir) as paged:
        ...   # model's parameters are empty here; ONNX Runtime has the memory
    # the same Parameter objects hold their values again, in fresh memory

An ONNX export holds the model and, while ONNX Runtime verifies or quantizes the export, a
second copy of the weights in another layout. PyTorch's side of verification runs first
(:mod:`zoo.exporters.onnx.verification`), so the model's own weights sit idle for the rest;
paging them out keeps the peak near one copy (gpt2-xl: 1.16x the weights, not 2.17x; README,
the ONNX export's "Memory" paragraph).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator

from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

DISK_MARGIN = 1.05  # free space wanted beyond the file: the rest of the work writes files too


def pageable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that can wait on disk: each one once, on the CPU, and sharing its
    memory with no other parameter (a tied weight is one Parameter object, which is fine)."""
    params = list({id(p): p for p in model.parameters()}.values())
    storages = [p.untyped_storage().data_ptr() for p in params]
    if len(set(storages)) != len(storages):  # distinct parameters viewing one buffer: restoring would untie them
        return []
    return [p for p in params if p.device.type == "cpu" and p.numel()]


@contextlib.contextmanager
def weights_on_disk(model: nn.Module, directory: str | Path,
                    notice: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Write ``model``'s parameters to a safetensors file in ``directory`` and empty them for
    the block; read them back into fresh memory when it ends, on error too, and delete the
    file. Yields whether the weights went to disk: not when there are none to page, or the
    disk lacks the room (then the block runs with them in memory, and ``notice`` is told why in
    one line).

    The memory is freed only where nothing else holds the tensors (a caller's own state dict
    keeps them alive; see :func:`zoo.exporters.onnx.exporter.release_weights` for ONNX's
    in-memory graphs), and nothing may read the model inside the block."""
    params = pageable(model)
    size = sum(p.numel() * p.element_size() for p in params)
    directory = Path(directory)
    free = shutil.disk_usage(directory).free
    if not params or free < DISK_MARGIN * size:
        if params and notice is not None:
            from zoo.core.limits import format_bytes

            notice(f"note: {directory} has {format_bytes(free)} free, too little to page out the model's "
                   f"{format_bytes(size)} of weights while the export is checked; they stay in memory, for a "
                   "peak of about twice the weights")
        yield False
        return
    path = directory / f".weights-on-disk-{uuid.uuid4().hex}.safetensors"
    try:
        save_file({str(i): p.detach().contiguous() for i, p in enumerate(params)}, str(path))
        for p in params:
            p.data = p.data.new_empty(0)
        gc.collect()  # reference cycles may still reach the old tensors
        return_free_memory()
        yield True
    finally:
        try:
            read_back(params, path)
        finally:
            path.unlink(missing_ok=True)


def return_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``): tensors
    smaller than glibc's moving mmap threshold live in the heap, whose freed memory otherwise
    stays resident. A no-op elsewhere."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def read_back(params: list[nn.Parameter], path: Path) -> None:
    """Restore the parameters :func:`weights_on_disk` emptied (those still empty), one at a
    time: each file mapping is closed before the next, so the peak is the weights plus one
    tensor, and the weights own their memory (no mapping of the deleted file holds the disk)."""
    if not path.exists():
        return  # never written, so nothing was emptied
    for i, p in enumerate(params):
        if p.numel():
            continue
        with safe_open(str(path), "pt") as f:
            p.data = f.get_tensor(str(i)).clone()
