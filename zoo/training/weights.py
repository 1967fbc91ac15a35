"""The weights a run trains and how they are kept: all of them, a LoRA adapter, or shards.

The loop (:mod:`zoo.training.loop`) asks one of these for the model, for training
snapshots (write and restore), for the published weights and for whole-model states
(checkpoint averaging):

- :class:`FullWeights`: every parameter trains in every process (one process, or DDP);
  snapshots hold the whole model.
- :class:`LoRAWeights`: the checkpoint (``--weights``) stays frozen in ``RUN/base/`` and a
  PEFT LoRA adapter trains beside the chosen linear layers (:mod:`zoo.core.adapters`).
  Snapshots hold the adapter only (megabytes, not the model's gigabytes); every publish
  writes ``RUN/adapter/`` (PEFT's format) and, unless ``--no-merge``, the merged weights as
  the run's ``model.safetensors``, an ordinary model directory. The merge happens in place
  and the base comes back bit for bit from ``base/`` afterwards, so publishing needs no
  second copy of the model.
- :class:`zoo.training.fsdp.ShardedWeights`: FSDP2, each process holding a shard.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from zoo.core.files import ADAPTER, BASE, MANIFEST, SPEC, WEIGHTS, read_json, write_manifest
from zoo.core.model_dir import load_model, state_dict_for_saving, write_model_files
from zoo.core.spec import ModelSpec
from zoo.errors import DataError
from zoo.training.snapshots import Progress, Restored, copy_weights, load_snapshot, save_snapshot

BASE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def replace_files(source: Path, run_dir: Path, names: tuple[str, ...]) -> None:
    """Move each of ``names`` from ``source`` into ``run_dir``, each replacing its old copy atomically."""
    for name in names:
        if (source / name).exists():
            os.replace(source / name, run_dir / name)


def read_model(directory: Path, device: torch.device, dtype=None) -> nn.Module:
    """A model directory's model read tensor by tensor into memory of its own, cast to ``dtype``
    on the way (see :func:`zoo.core.tensor_files.read_tensors`), so that the stored file is never
    resident whole and nothing stays mapped from it: what a model about to be cast or sharded needs."""
    from zoo.core.meta import assemble
    from zoo.core.model_dir import load_state
    from zoo.core.tensor_files import read_tensors
    from zoo.core.spec import load_spec

    model = assemble(load_spec(directory / SPEC))
    path = directory / WEIGHTS
    tensors = {name: t.to(device) for name, t in read_tensors(path, dtype).items()}
    return load_state(model, tensors, str(path))


class FullWeights:
    """Every parameter trains: the run's own ``model.safetensors`` is the start."""

    lora = False
    sharded = False
    strategy = "ddp"
    start_dtype = torch.float32  # a new run's weights are stored in this dtype

    def create(self, run_dir: Path) -> None:
        pass

    def model(self, run_dir: Path, device: torch.device) -> nn.Module:
        return load_model(run_dir, device=device).train()  # on the meta device until the weights arrive: one copy

    def state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return state_dict_for_saving(model)

    def load_state(self, model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
        copy_weights(model, tensors, source)

    def full_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The whole model's weights (on the main process; every process calls it)."""
        return self.state(model)

    def load_full(self, model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Put whole-model weights (given on the main process) into ``model``."""
        copy_weights(model, tensors, source)

    def snapshot(self, run_dir: Path, model, optimizer, progress: Progress, randoms: list, scaler: dict | None,
                 keep: int, dist) -> None:
        """Write a training snapshot (every process calls it)."""
        if dist.is_main:
            save_snapshot(run_dir, self.state(model), optimizer, progress, randoms, scaler, keep=keep,
                          strategy=self.strategy)

    def restore(self, path: Path, model, optimizer, device: torch.device) -> Restored:
        restored = load_snapshot(path, optimizer, device, strategy=self.strategy)
        self.load_state(model, restored.weights, str(path))
        return restored

    def publish(self, run_dir: Path, model: nn.Module, spec: ModelSpec, extra: dict, dist=None) -> None:
        """Replace the run directory's ``model.safetensors`` and ``manifest.json``, each atomically."""
        tensors = self.full_state(model)  # FSDP: gathered from the shards, by every process
        if dist is not None and not dist.is_main:
            return
        tmp = Path(tempfile.mkdtemp(prefix=".weights-", dir=run_dir))
        try:
            write_model_files(model, spec, tmp, extra, tensors=tensors)
            replace_files(tmp, run_dir, (WEIGHTS, SPEC, MANIFEST))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class LoRAWeights(FullWeights):
    """A LoRA adapter trains on the frozen checkpoint held in ``RUN/base/``."""

    lora = True

    def __init__(self, config, autocast_dtype: torch.dtype) -> None:
        self.config = config
        self.alpha = config.lora_alpha if config.lora_alpha is not None else 2.0 * config.lora_rank
        self.base_dtype = self.start_dtype = BASE_DTYPES[config.lora_base]  # base/ is stored as it is held
        if self.base_dtype != torch.float32 and autocast_dtype != self.base_dtype:
            raise DataError(f"--lora-base {config.lora_base} needs training to compute in {config.lora_base} "
                            "(--amp bf16, on a GPU or a CPU with native bf16); use --lora-base float32")

    def record(self, merged: bool) -> dict:
        c = self.config
        return {"base": BASE, "adapter": ADAPTER, "rank": c.lora_rank, "alpha": self.alpha, "dropout": c.lora_dropout,
                "targets": c.lora_targets, "base_dtype": c.lora_base, "merged": merged}

    def create(self, run_dir: Path) -> None:
        """Move a new run's weights into ``base/``; the run's own manifest names base and adapter."""
        base = run_dir / BASE
        base.mkdir()
        for name in (WEIGHTS, MANIFEST):
            os.replace(run_dir / name, base / name)
        shutil.copyfile(run_dir / SPEC, base / SPEC)
        manifest = read_json(base / MANIFEST)
        manifest["lora"] = self.record(merged=False)
        write_manifest(run_dir, manifest, files=False)

    def model(self, run_dir: Path, device: torch.device) -> nn.Module:
        from zoo.core.adapters import add_lora

        c = self.config
        if self.base_dtype == torch.float32:
            base = load_model(run_dir / BASE, device=device)  # mapped from the file: one copy, in the page cache
        else:
            base = self.cast_base(run_dir / BASE, device)
        for param in base.parameters():
            param.requires_grad_(False)
        return add_lora(base, c.lora_rank, self.alpha, c.lora_dropout, c.lora_targets, seed=c.seed).train()

    def cast_base(self, directory: Path, device: torch.device) -> nn.Module:
        """The frozen base with its matrices (projections, embeddings) in the base dtype and the
        rest (norms, biases) in float32, whichever dtype ``base/`` stores."""
        return read_model(directory, device, lambda name, shape: self.base_dtype if len(shape) >= 2 else torch.float32)

    def state(self, model) -> dict[str, torch.Tensor]:
        from zoo.core.adapters import adapter_state

        return adapter_state(model)

    def load_state(self, model, tensors: dict[str, torch.Tensor], source: str) -> None:
        from zoo.core.adapters import load_adapter_state

        load_adapter_state(model, tensors, source)

    def publish(self, run_dir: Path, model, spec: ModelSpec, extra: dict, dist=None) -> None:
        """Write ``adapter/`` and, with merging on, the merged weights as the run's ``model.safetensors``."""
        from zoo.core.adapters import merged, plain_state, save_adapter

        if dist is not None and not dist.is_main:
            return

        merge = self.config.merge
        extra = {**extra, "lora": self.record(merged=merge)}
        tmp = Path(tempfile.mkdtemp(prefix=".weights-", dir=run_dir))
        try:
            save_adapter(model, tmp / ADAPTER)
            if merge:
                with merged(model, run_dir / BASE / WEIGHTS):
                    tensors = plain_state(model)
                    if self.base_dtype != torch.float32:  # one dtype in a model directory: the base's
                        tensors = {n: t.to(self.base_dtype) if t.is_floating_point() else t for n, t in tensors.items()}
                    write_model_files(model, spec, tmp, extra, tensors=tensors)
            else:
                manifest = read_json(run_dir / MANIFEST)
                manifest.update(extra)
                write_manifest(tmp, manifest, files=False)
            old = run_dir / f".{ADAPTER}-old"
            shutil.rmtree(old, ignore_errors=True)
            if (run_dir / ADAPTER).exists():
                os.replace(run_dir / ADAPTER, old)
            os.replace(tmp / ADAPTER, run_dir / ADAPTER)
            shutil.rmtree(old, ignore_errors=True)
            if not merge and (run_dir / WEIGHTS).exists():
                os.remove(run_dir / WEIGHTS)  # merged weights of an earlier session: base + adapter stand for them now
            replace_files(tmp, run_dir, (WEIGHTS, MANIFEST))  # the manifest last: it names the step
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def check_lora(config, spec: ModelSpec) -> None:
    """Refuse LoRA settings that cannot work, before anything is written (targets checked on the meta device)."""
    from zoo.core.adapters import lora_targets
    from zoo.core.meta import assemble

    if config.lora_rank is None:
        return
    if config.lora_rank < 1:
        raise DataError(f"--lora {config.lora_rank}: the rank must be at least 1 (8 or 16 are usual)")
    if not config.weights:
        raise DataError("--lora trains an adapter on a checkpoint's frozen weights, and random weights are not worth "
                        "adapting; give --weights CHECKPOINT, or train every weight without --lora")
    if config.lora_base not in BASE_DTYPES:
        raise DataError(f"--lora-base {config.lora_base}: choose {' or '.join(BASE_DTYPES)}")
    if config.average_last > 1:
        raise DataError("--average-last averages whole models; a LoRA run trains an adapter: leave --average-last out")
    if config.strategy == "fsdp":
        raise DataError("--lora with --strategy fsdp is not supported: the adapter is small, so train it with ddp "
                        "(the default) and hold the frozen base in bfloat16 (--lora-base bfloat16) if memory is short")
    lora_targets(assemble(spec), config.lora_targets)
