"""Checkpoint averaging (Vaswani et al., 2017, section 6.1): publish the mean of the last weights.

Late in training the weights wander around a minimum with the noise of each batch;
their mean over the last few minutes sits closer to it than any one of them. While
training, the loop writes a *weight point* (``averaging/step-NNNNNNNN.safetensors``, the
model's weights only, written atomically) every ``average_every``, keeping the newest
``average_last``; at the end, the run directory's published ``model.safetensors`` is the
mean of those points. Training snapshots keep the weights as trained, so a resumed run
continues from them, not from the mean.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zoo.core.files import AVERAGING, atomic_path


def save_point(run_dir: Path, weights: dict[str, torch.Tensor], step: int, keep: int) -> Path:
    """Write the model's ``weights`` as the point of ``step`` and delete all but the newest ``keep``."""
    target = Path(run_dir) / AVERAGING / f"step-{step:08d}.safetensors"
    with atomic_path(target) as tmp:
        save_file(weights, str(tmp))
    for old in points(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return target


def points(run_dir: Path) -> list[Path]:
    """The run's weight points, oldest first."""
    folder = Path(run_dir) / AVERAGING
    found = folder.glob("step-*.safetensors") if folder.is_dir() else []
    return sorted(found, key=point_step)


def point_step(path: Path) -> int:
    """The training step a weight point was taken at (from its name)."""
    return int(Path(path).stem.split("-")[1])


def average(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the weights in ``paths`` (summed in float64, returned in each tensor's dtype)."""
    if not paths:
        raise ValueError("no weight points to average")
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for path in paths:
        for name, tensor in load_file(str(path)).items():
            dtypes.setdefault(name, tensor.dtype)
            total[name] = total[name] + tensor.double() if name in total else tensor.double()
    return {name: (value / len(paths)).to(dtypes[name]) for name, value in total.items()}
