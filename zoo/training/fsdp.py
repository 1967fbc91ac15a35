"""FSDP2 (``--strategy fsdp``): parameters, gradients and AdamW state sharded across processes.

``torchrun --nproc-per-node N -m zoo.cli train ... --strategy fsdp``: each block of the
model is a ``fully_shard`` unit, then the root (embeddings, final norm, head), so a
process holds 1/N of every tensor and gathers one block's weights at a time while it
computes (PyTorch's FSDP2, as torchtitan and litgpt use it). Mixed precision is FSDP's
own policy (parameters gathered in bf16/fp16, gradients reduced in float32) instead of
autocast. One process works too (a group of one): the arithmetic of an unsharded run,
and the way to continue a sharded run on a single machine.

Training snapshots are ``torch.distributed.checkpoint`` (DCP) directories: every process
writes its own shards into ``checkpoints/.tmp-step-N/``, and the main process renames the
folder to ``step-N`` once all of them (and ``state.json``) are written, so a killed run
never leaves a snapshot that a resume would take. DCP reshards on loading: a run may
resume with another process count. The published weights are gathered from the shards
into an ordinary model directory.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)

from zoo.core.files import SNAPSHOT_STATE, SNAPSHOTS
from zoo.core.meta import tied_names
from zoo.errors import DataError
from zoo.training.snapshots import Progress, Restored, random_states, random_tensors, snapshot_state, snapshots
from zoo.training.weights import FullWeights, read_model

RANDOM = "random.safetensors"  # every process's random-number state, written by the main process


def shard(model: nn.Module, device: torch.device, world: int, mixed: torch.dtype | None) -> nn.Module:
    """``fully_shard`` each block of every stack, then the root, over all ``world`` processes."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from zoo.core.model import Stack

    mesh = init_device_mesh(device.type, (world,))
    policy = MixedPrecisionPolicy(param_dtype=mixed, reduce_dtype=torch.float32) if mixed else MixedPrecisionPolicy()
    for module in model.modules():
        if isinstance(module, Stack):
            for block in module.h:
                fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


class ShardedWeights(FullWeights):
    """FSDP2: every process holds a shard of the weights, gradients and optimizer state."""

    sharded = True
    strategy = "fsdp"

    def __init__(self, config, compute_dtype: torch.dtype, dist) -> None:
        if config.amp == "fp16":
            raise DataError("--strategy fsdp with --amp fp16 needs a sharded gradient scaler zoo does not have; "
                            "use --amp bf16")
        self.dist = dist
        self.mixed = compute_dtype if compute_dtype != torch.float32 else None

    def model(self, run_dir: Path, device: torch.device) -> nn.Module:
        # read into memory of its own, not mapped from the file: once sharded, the whole model is let go
        return shard(read_model(run_dir, device).train(), device, self.dist.world, self.mixed)

    def full_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        tensors = get_model_state_dict(model, options=options)  # a collective: every process takes part
        for name in tied_names(model):
            tensors.pop(name, None)  # a tied head: the embedding's, gathered twice
        return tensors if self.dist.is_main else {}

    def load_full(self, model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Scatter whole-model weights from the main process into every process's shards."""
        import torch.distributed as dist
        from torch.distributed.tensor import DTensor, distribute_tensor

        main = self.dist.is_main
        saved = set(model.state_dict())  # the same names in every process: unsaved buffers are left alone
        with torch.no_grad():
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                if name not in saved:
                    continue
                local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
                full = tensors[name].to(local.device, local.dtype) if main else torch.empty(
                    tensor.shape, dtype=local.dtype, device=local.device)
                if isinstance(tensor, DTensor):
                    tensor.copy_(distribute_tensor(full, tensor.device_mesh, tensor.placements, src_data_rank=0))
                else:
                    dist.broadcast(full, src=0)
                    tensor.copy_(full)

    def snapshot(self, run_dir: Path, model, optimizer, progress: Progress, randoms: list, scaler: dict | None,
                 keep: int, dist) -> None:
        folder = Path(run_dir) / SNAPSHOTS
        name = f"step-{progress.step:08d}"
        tmp = folder / f".tmp-{name}"
        if dist.is_main:
            for stale in folder.glob(".tmp-step-*"):  # a snapshot a killed run left half-written
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(tmp))
        dist.barrier()
        if dist.is_main:
            save_file(random_tensors(randoms), str(tmp / RANDOM))
            state = {"progress": asdict(progress), "scaler": scaler, "world": len(randoms), "strategy": self.strategy}
            (tmp / SNAPSHOT_STATE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
            shutil.rmtree(folder / name, ignore_errors=True)
            tmp.rename(folder / name)
            for old in snapshots(run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    def restore(self, path: Path, model, optimizer, device: torch.device) -> Restored:
        state = snapshot_state(path, self.strategy)
        model_state, optimizer_state = get_state_dict(model, optimizer)  # the optimizer's state made, to load into
        both = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(both, checkpoint_id=str(path))  # reshards: the snapshot may come from another process count
        set_state_dict(model, optimizer, model_state_dict=both["model"], optim_state_dict=both["optimizer"])
        randoms = random_states(load_file(str(path / RANDOM)), state["world"])
        return Restored({}, Progress(**state["progress"]), randoms, state.get("scaler"))
