"""Training snapshots: weights, optimizer state, data-loader position and random state.

A snapshot is a directory ``checkpoints/step-NNNNNNNN/`` written atomically (it
appears complete or not at all) holding ``model.safetensors``, ``optimizer.safetensors``
(AdamW moments and every rank's random-number state) and ``state.json`` (step, epoch,
position in the epoch's batch plan, training seconds so far). Resuming from it replays
the same batches with the same dropout masks, so the run ends where it would have.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from zoo.core.files import OPTIMIZER_STATE, SNAPSHOT_STATE, SNAPSHOTS, WEIGHTS, atomic_directory
from zoo.core.model_dir import check_fit
from zoo.errors import WeightsError, first_line


@dataclass
class Progress:
    """Where training stands; saved in every snapshot."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # index of the next batch in this epoch's plan
    seconds: float = 0.0  # training wall time over all sessions
    tokens: int = 0  # source + target tokens seen, all ranks


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The optimizer's per-parameter state as flat named tensors, and its param groups."""
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"state.{index}.{key}"] = value.contiguous() if torch.is_tensor(value) else torch.tensor(value)
    return tensors, state["param_groups"]


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("state."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def random_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random-number state (dropout masks come from it)."""
    out = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_random_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def random_tensors(random_states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Every rank's random-number state as flat named tensors (``rng.RANK.KIND``), for a safetensors file."""
    return {f"rng.{rank}.{kind}": value.cpu() for rank, states in enumerate(random_states)
            for kind, value in states.items()}


def random_states(tensors: dict[str, torch.Tensor], world: int) -> list[dict[str, torch.Tensor]]:
    """The ranks' random-number states among ``tensors`` (the inverse of :func:`random_tensors`)."""
    states: list[dict[str, torch.Tensor]] = [{} for _ in range(world)]
    for name, value in tensors.items():
        if name.startswith("rng."):
            _, rank, kind = name.split(".", 2)
            states[int(rank)][kind] = value
    return states


def save_snapshot(run_dir: Path, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                  progress: Progress, random_states: list[dict[str, torch.Tensor]], scaler: dict | None = None,
                  keep: int = 2, strategy: str = "ddp") -> Path:
    """Write ``checkpoints/step-N`` atomically and delete all but the newest ``keep``; ``weights``
    are the trained tensors (the whole model's state, or a LoRA run's adapter)."""
    target = Path(run_dir) / SNAPSHOTS / f"step-{progress.step:08d}"
    tensors, groups = optimizer_tensors(optimizer)
    tensors.update(random_tensors(random_states))
    with atomic_directory(target, overwrite=True) as tmp:
        save_file(weights, str(tmp / WEIGHTS))
        save_file(tensors, str(tmp / OPTIMIZER_STATE))
        state = {"progress": asdict(progress), "param_groups": groups, "scaler": scaler, "world": len(random_states),
                 "strategy": strategy}
        (tmp / SNAPSHOT_STATE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    for old in snapshots(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def snapshots(run_dir: Path) -> list[Path]:
    """Complete training snapshots of a run, oldest first."""
    folder = Path(run_dir) / SNAPSHOTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step-*") if (p / SNAPSHOT_STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def copy_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``weights`` into the model's existing tensors, so an optimizer built on them stays valid."""
    check_fit(model, weights, source)
    target = model.state_dict()
    with torch.no_grad():
        for name, value in weights.items():
            target[name].copy_(value)


@dataclass
class Restored:
    weights: dict[str, torch.Tensor]  # for the run's model to take (zoo.training.weights)
    progress: Progress
    random_states: list[dict[str, torch.Tensor]]
    scaler: dict | None


def snapshot_state(path: Path, strategy: str) -> dict:
    """A snapshot's ``state.json``, refused unless ``strategy`` (ddp: whole models, fsdp: shards) wrote it."""
    try:
        state = json.loads((path / SNAPSHOT_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: unreadable training snapshot ({first_line(exc)}); delete it to resume from the one before") from None
    written = state.get("strategy", "ddp")
    if written != strategy:
        raise WeightsError(f"{path} was written by --strategy {written}, this run resumes with --strategy {strategy}; "
                           f"resume with --strategy {written}")
    return state


def load_snapshot(path: Path, optimizer: torch.optim.Optimizer | None = None,
                  device: torch.device = torch.device("cpu"), strategy: str = "ddp") -> Restored:
    """Read a training snapshot directory: its weights are returned, its state goes into ``optimizer``."""
    snapshot_state(path, strategy)
    try:
        weights = load_file(str(path / WEIGHTS), device=str(device))
        tensors = load_file(str(path / OPTIMIZER_STATE))
        state = json.loads((path / SNAPSHOT_STATE).read_text(encoding="utf-8"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: unreadable training snapshot ({first_line(exc)}); delete it to resume from the one before") from None
    if optimizer is not None:
        restore_optimizer(optimizer, tensors, state["param_groups"])
    return Restored(weights, Progress(**state["progress"]), random_states(tensors, state["world"]), state.get("scaler"))
