"""Running one training script on several processes: torchrun's environment → a process group.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1) the process joins a group with NCCL on
GPUs or gloo on CPUs; launched plainly it is a group of one and every collective is a
no-op, so the training loop reads the same either way.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    alone_in_group: bool = False  # a group of one, made for FSDP

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, device: str | None = None, group: bool = False) -> "Distributed":
        """Join the torchrun job if there is one; ``device`` None picks CUDA when available.
        ``group``: alone, still form a process group (of one), as FSDP needs one."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
        if world == 1:
            where = torch.device(device or ("cuda" if use_cuda else "cpu"))
            made = group and not dist.is_initialized()
            if made:
                dist.init_process_group("nccl" if use_cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1)
            return cls(0, 1, where, made)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        where = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        return cls(dist.get_rank(), dist.get_world_size(), where)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (a one-item list when alone)."""
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def stop(self) -> None:
        """Leave the group. A sharded model lives on in reference cycles after its trainer is done
        (FSDP's modules and hooks refer to each other): collected here, it goes while the group it
        holds still exists, not at interpreter exit after it, where gloo's threads can abort the
        process (pytorch/pytorch#179291)."""
        if (self.world > 1 or self.alone_in_group) and dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()
