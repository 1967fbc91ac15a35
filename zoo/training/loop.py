"""The training loop every task shares: ``zoo train`` for translation and language modelling.

A task (:class:`zoo.training.task.Task`) supplies data, loss and evaluation; this module
does the rest: AdamW with warm-up and a schedule (cosine to a tenth of the peak over the
budget, or the 2017 paper's inverse square root), gradient clipping, mixed precision
(bf16 or fp16 on GPU, bf16 on CPUs that have it), training snapshots written atomically
and resumable, checkpoint averaging, DistributedDataParallel when launched by
``torchrun``, model FLOP utilisation on screen. A run directory holds::

    spec.yaml model.safetensors manifest.json   the published weights, a zoo model directory
    tokenizer.json (...)                        the task's tokenizer
    train.json                                  the run's settings (zoo.training.config)
    checkpoints/step-N/                         training snapshots to resume from (zoo.training.snapshots)
    averaging/step-N.safetensors                weight points whose mean may be published (zoo.training.averaging)
    metrics.jsonl curves.png                    loss, tokens/s, MFU, validation figures
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from zoo.core.files import TRAIN_CONFIG, atomic_directory
from zoo.core.limits import cpu_has_bf16
from zoo.errors import DataError, ZooError
from zoo.training.averaging import average, point_step, points, save_point
from zoo.training.config import TrainConfig, parse_interval
from zoo.training.distributed import Distributed
from zoo.training.run_log import RunLog
from zoo.training.weights import FullWeights, LoRAWeights
from zoo.training.snapshots import Progress, random_state, set_random_state, snapshots
from zoo.training.task import Task


class Every:
    """Whether a step- or time-based interval has come round; time intervals count training seconds."""

    def __init__(self, value: int | str, seconds: float) -> None:
        self.unit, self.amount = parse_interval(value)
        self.last_seconds = seconds

    def due(self, step: int, seconds: float) -> bool:
        if self.unit == "steps":
            return step % self.amount == 0
        if seconds - self.last_seconds >= self.amount:
            self.last_seconds = seconds
            return True
        return False


def learning_rate(step: int, config: TrainConfig, progress: float = 0.0) -> float:
    """The learning rate of optimizer step ``step`` (from 1), ``progress`` (0..1) through the budget.

    Linear warm-up to ``config.lr`` over ``warmup_steps``, then ``inverse-sqrt``: decay as
    1/√step (with ``lr = d_model^-0.5 · warmup^-0.5`` the 2017 paper's schedule);
    ``cosine``: half a cosine from the peak to a tenth of it at the end of the budget
    (nanoGPT's and GPT-3's); ``constant``: the peak.
    """
    step = max(step, 1)
    warm = min(1.0, step / config.warmup_steps)
    if config.schedule == "inverse-sqrt":
        return config.lr * min(warm, math.sqrt(config.warmup_steps / step))
    if warm < 1.0 or config.schedule == "constant":
        return config.lr * warm
    floor = config.lr / 10
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def autocast_for(config: TrainConfig, device: torch.device) -> tuple[contextlib.AbstractContextManager, bool]:
    """The mixed-precision context for ``config.amp`` and whether fp16 gradient scaling is needed
    (the context's ``fast_dtype`` is the dtype matmuls run in; float32 without autocast)."""
    mode = config.amp
    if mode == "auto" and device.type == "cuda":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    elif mode == "auto":  # bf16 only where the CPU computes it natively (AVX512-BF16, AMX): 1.5x faster here
        mode = "bf16" if cpu_has_bf16() else "off"
    if mode == "off":
        return contextlib.nullcontext(), False
    if mode not in ("bf16", "fp16"):
        raise DataError(f"--amp {mode}: choose auto, off, bf16 or fp16")
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), mode == "fp16" and device.type == "cuda"


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of every trained parameter's bytes: equal digests mean bit-identical replicas."""
    digest = hashlib.sha256()
    for param in model.parameters():
        if not param.requires_grad:
            continue  # frozen: read from the same file by every process
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- one step


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (β1 0.9, the config's β2 and ε), no weight decay on biases, norms and other vectors;
    the fused kernel (1.18x a whole translation step over the for-loop, README)."""
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.dim() >= 2]
    no_decay = [p for p in trained if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=config.lr, betas=(0.9, config.beta2), eps=config.eps, fused=True)


def attention_kernel(device: torch.device) -> contextlib.AbstractContextManager:
    """scaled_dot_product_attention's plain ("math") kernel on a CPU: the flash kernel's backward
    pass is several times slower on sentences of 5-20 tokens (README); CUDA picks its own."""
    if device.type == "cpu":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])
    return contextlib.nullcontext()


def train_step(net: nn.Module, model: nn.Module, task: Task, batch, optimizer: torch.optim.Optimizer, scaler,
               autocast, config: TrainConfig, lr: float) -> tuple[torch.Tensor, int]:
    """One optimizer step on ``batch``; returns the task's summed loss (a detached tensor, read
    back once per log line) and its term count."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with attention_kernel(next(model.parameters()).device):  # the backward pass too (activation checkpointing)
        with autocast:
            loss_sum, count = task.loss(net, batch)
        scaler.scale(loss_sum / count).backward()
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm, foreach=True)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum.detach(), count


@dataclass
class Utilisation:
    """Model FLOP utilisation: the model's FLOPs per second over the device's matmul ceiling."""

    flops_per_token: float  # one training pass, per counted token, at the data's mean lengths
    ceiling: float | None  # FLOP/s of a large matmul in the dtype training computes in
    dtype: str

    def of(self, tokens_per_second: float) -> float | None:
        """The fraction of the ceiling ``tokens_per_second`` uses."""
        return tokens_per_second * self.flops_per_token / self.ceiling if self.ceiling else None

    def to_dict(self) -> dict:
        return {"flops_per_token": round(self.flops_per_token), "matmul_ceiling_flop_per_s": self.ceiling,
                "dtype": self.dtype}


def measure_utilisation(flops_per_token: float, device: torch.device, dtype: torch.dtype) -> Utilisation:
    """Time the device's matmul ceiling in ``dtype`` (as ``zoo bench`` does, briefly: about a second)."""
    from zoo.bench.ceilings import matmul_ceiling, matmul_size

    ceiling = matmul_ceiling(dtype, str(device), matmul_size(device), warmup=1, repeats=10)
    best = ceiling["flop_per_s"]["max"] if "flop_per_s" in ceiling else None
    return Utilisation(flops_per_token, best, str(dtype).removeprefix("torch."))


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _glibc(call) -> bool:
    """``call(libc)`` on the C library, if it is glibc; whether it took effect."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return bool(name and call(ctypes.CDLL(name)))
    except (OSError, AttributeError):
        return False


def return_freed_memory(threshold: int = 128 * 1024) -> bool:
    """Ask glibc to serve every allocation above ``threshold`` bytes with its own mapping, given
    back to the system when freed. By default glibc raises that threshold after each large free,
    so later tensors come from its heap and their memory stays with the process: 2.7 GB of 6.3
    per FSDP process of gpt2-medium, 1.8 of 9.2 per DDP process (measured). The price is page
    faults on reallocation: 13% of DDP's tokens/s there, and half of a LoRA run's (whose frozen
    weights autocast casts afresh every step). FSDP runs, chosen for memory, pay it; the others
    keep glibc's default. Returns whether it took effect (glibc only)."""
    return _glibc(lambda libc: libc.mallopt(M_MMAP_THRESHOLD, threshold))


def trim_freed_memory() -> bool:
    """Hand the memory glibc keeps from freed allocations back to the system (``malloc_trim``):
    a new fine-tuning run has just read a whole checkpoint to write itself, and the tensors it
    freed would otherwise stay in the process beside the weights it trains. Returns whether it
    took effect (glibc only)."""
    return _glibc(lambda libc: libc.malloc_trim(0))


def weights_for(config, compute_dtype: torch.dtype, dist) -> FullWeights:
    """The weights strategy of ``config``: LoRA, FSDP shards, or every weight in every process."""
    if getattr(config, "lora_rank", None):
        return LoRAWeights(config, compute_dtype)
    if config.strategy == "fsdp":
        from zoo.training.fsdp import ShardedWeights

        return ShardedWeights(config, compute_dtype, dist)
    if config.strategy != "ddp":
        raise DataError(f"--strategy {config.strategy}: choose ddp or fsdp")
    return FullWeights()


LATE = 0.75  # checkpoint averaging takes weight points from the last quarter of the run's steps only


# --------------------------------------------------------------------------- the loop


def fit(task: Task, run_dir: str | os.PathLike, resume: bool = False, force: bool = False, progress: bool = True,
        on_step: Callable[[int], None] | None = None) -> dict:
    """Train ``task`` into ``run_dir`` (new, or continued from its newest training snapshot with ``resume``).

    Returns a summary (steps, tokens, seconds, tokens/s, MFU, the last validation). ``on_step``
    is called with the step number after every optimizer step.
    """
    run_dir = Path(run_dir)
    dist = Distributed.start(task.config.device, group=task.config.strategy == "fsdp")
    try:
        summary = Trainer(task, run_dir, dist, progress, on_step).run(resume, force)
        dist.barrier()  # no rank tears the group down while a peer may still be in its last collective
        return summary
    finally:
        dist.stop()


class Trainer:
    """One session of a run: the state the steps, logs, snapshots and validations share."""

    def __init__(self, task: Task, run_dir: Path, dist: Distributed, progress: bool,
                 on_step: Callable[[int], None] | None) -> None:
        self.task, self.config, self.run_dir, self.dist = task, task.config, run_dir, dist
        self.show_progress, self.on_step = progress, on_step
        self.device = dist.device
        self.autocast, self.needs_scaling = autocast_for(self.config, self.device)
        self.compute_dtype = getattr(self.autocast, "fast_dtype", torch.float32)
        self.weights = weights_for(self.config, self.compute_dtype, dist)
        if self.weights.sharded:
            self.autocast = contextlib.nullcontext()  # FSDP's mixed-precision policy casts instead
        if self.weights.sharded:
            return_freed_memory()
        self.last_validation: dict = {}
        self.totals = {"tokens": 0, "seconds": 0.0}  # this session's training steps, for the summary

    # ------------------------------------------------------------------ setting up

    def start_run(self, resume: bool, force: bool) -> None:
        """Check the run directory and, for a new run, write it (on the main process)."""
        run_dir, config = self.run_dir, self.config
        if not resume and run_dir.exists() and any(run_dir.iterdir()) and not force:
            raise ZooError(f"{run_dir} already exists; continue it with --resume {run_dir} or replace it with --force")
        if resume and not (run_dir / TRAIN_CONFIG).is_file():
            raise DataError(f"{run_dir}: no training run to resume (no {TRAIN_CONFIG}); start one with -o {run_dir}")
        self.dist.barrier()  # every process has looked at the directory before the main one writes it
        if not resume and self.dist.is_main:
            with atomic_directory(run_dir, overwrite=force) as tmp:
                self.task.create(tmp, self.weights.start_dtype)
                self.weights.create(tmp)
                config.save(tmp)
            trim_freed_memory()  # the checkpoint read to write the run: not resident while it trains
        self.dist.barrier()

    def set_up(self, resume: bool) -> None:
        config, device = self.config, self.device
        self.spec = self.task.open(self.run_dir, self.dist.rank, self.dist.world)
        self.model = self.weights.model(self.run_dir, device)
        if config.checkpoint_activations:
            from zoo.core.model import Stack

            for module in self.model.modules():
                if isinstance(module, Stack):
                    module.checkpointing = True
        self.optimizer = make_optimizer(self.model, config)
        # a frozen weight needs no gradient of its own: a LoRA step is the forward and the input gradients, 4 of 6
        flops = self.task.flops_per_token(self.spec) * (4 / 6 if self.weights.lora else 1)
        self.utilisation = measure_utilisation(flops, device, self.compute_dtype)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.needs_scaling)
        torch.manual_seed(config.seed * 1000 + self.dist.rank)  # dropout
        self.p = Progress()
        found = snapshots(self.run_dir) if resume else []
        if found:
            restored = self.weights.restore(found[-1], self.model, self.optimizer, device)
            self.p = restored.progress
            if len(restored.random_states) == self.dist.world:
                set_random_state(restored.random_states[self.dist.rank], device)
            if restored.scaler:
                self.scaler.load_state_dict(restored.scaler)
        self.log = RunLog(self.run_dir, resume_step=self.p.step, metric=self.task.metric) if self.dist.is_main else None
        self.net = self.model
        if self.dist.world > 1 and not self.weights.sharded:
            ids = [device.index] if device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.steps_per_epoch = self.task.steps_per_epoch()
        self.total_steps = min(config.max_steps or math.inf, config.epochs * self.steps_per_epoch)
        self.budget = config.max_minutes * 60 if config.max_minutes is not None else math.inf

    def progress_fraction(self) -> float:
        """How far through its budget (steps or time, whichever is nearer its end) the run is."""
        p = self.p
        return max(p.step / self.total_steps, p.seconds / self.budget)

    # ------------------------------------------------------------------ the run

    def run(self, resume: bool, force: bool) -> dict:
        from tqdm import tqdm

        from zoo.training.plan import check_training_fits

        check_training_fits(self.task, self.dist.world, self.device, self.compute_dtype)  # before anything is written
        self.start_run(resume, force)
        self.set_up(resume)
        p, dist, config = self.p, self.dist, self.config
        timed = self.budget < math.inf
        trainable = sum(t.numel() for t in self.model.parameters() if t.requires_grad)
        frozen = sum(t.numel() for t in self.model.parameters() if not t.requires_grad)
        if dist.is_main and p.step == 0:
            self.log.append({"event": "start", "step": 0, "task": config.task, "steps_per_epoch": self.steps_per_epoch,
                             "world": dist.world, "device": str(self.device), "threads": torch.get_num_threads(),
                             "parameters": trainable + frozen, "trainable_parameters": trainable,
                             **self.task.start_record(), **self.utilisation.to_dict()})
        self.bar = tqdm(total=int(self.budget) if timed else int(self.total_steps) if self.total_steps < math.inf else None,
                        initial=int(p.seconds) if timed else p.step, unit="s" if timed else "step",
                        desc=f"training {trainable / (trainable + frozen):.2%} of {(trainable + frozen) / 1e6:,.1f}M "
                             "parameters (LoRA)" if frozen else "training", file=sys.stderr, dynamic_ncols=True,
                        disable=not (self.show_progress and dist.is_main))
        self.window = self.new_window()
        evaluation_due = Every(config.eval_every, p.seconds)
        snapshot_due = Every(config.checkpoint_every, p.seconds)
        point_due = Every(config.average_every, p.seconds)
        self.session_start, self.seconds_before = time.perf_counter(), p.seconds
        try:
            stop = p.step >= self.total_steps or p.seconds >= self.budget
            while not stop:
                lr = self.step()
                if p.step % config.log_every == 0:
                    self.flush_window(lr)
                self.bar.update(int(p.seconds) - self.bar.n if timed else 1)
                stop = p.step >= self.total_steps or p.seconds >= self.budget
                evaluate, save = evaluation_due.due(p.step, p.seconds), snapshot_due.due(p.step, p.seconds)
                point = point_due.due(p.step, p.seconds) and config.average_last > 1
                stop, evaluate, save, point = dist.broadcast((stop, evaluate, save, point))  # rank 0's clock decides
                if point and not stop:
                    self.save_point()
                if evaluate and not stop:
                    self.validate()
                if save and not stop:
                    self.snapshot()
                if self.on_step is not None:
                    self.on_step(p.step)
            if self.window["seconds"]:
                self.flush_window(learning_rate(p.step, config, self.progress_fraction()))
            last = self.validate(final=True)
            self.snapshot(final=True)
            if config.average_last > 1:
                self.average_weights(last)
        finally:
            self.bar.close()
        return self.summary()

    def step(self) -> float:
        """One optimizer step on the next batch; returns its learning rate."""
        p = self.p
        batch = self.task.batch(p.epoch, p.batch, self.device)
        tick = time.perf_counter()
        lr = learning_rate(p.step + 1, self.config, self.progress_fraction())
        loss_sum, terms = train_step(self.net, self.model, self.task, batch, self.optimizer, self.scaler,
                                     self.autocast, self.config, lr)
        self.window["loss"] += loss_sum
        self.window["terms"] += terms
        self.window["tokens"] += self.task.tokens(batch)
        self.window["seconds"] += time.perf_counter() - tick
        p.step += 1
        p.batch += 1
        if p.batch >= self.steps_per_epoch:
            p.epoch, p.batch = p.epoch + 1, 0
        p.seconds = self.seconds_before + time.perf_counter() - self.session_start
        return lr

    def new_window(self) -> dict:
        """The steps since the last log record: summed loss (kept on the device), its terms, tokens, seconds."""
        return {"loss": torch.zeros((), device=self.device), "terms": 0, "tokens": 0, "seconds": 0.0}

    def flush_window(self, lr: float) -> None:
        """Log the loss and throughput of the steps since the last record."""
        dist, p, window = self.dist, self.p, self.window
        tokens = int(dist.sum(window["tokens"]))
        loss = dist.sum(float(window["loss"])) / max(dist.sum(window["terms"]), 1)
        rate = tokens / max(window["seconds"], 1e-9)
        mfu = self.utilisation.of(rate / dist.world)  # each process has its own device and ceiling
        p.tokens += tokens
        self.totals["tokens"] += tokens
        self.totals["seconds"] += window["seconds"]
        if dist.is_main:
            self.log.append({"event": "train", "step": p.step,
                             "epoch": round(p.epoch + p.batch / self.steps_per_epoch, 4), "loss": round(loss, 4),
                             "lr": lr, "tokens_per_second": round(rate, 1),
                             "mfu": None if mfu is None else round(mfu, 4), "seconds": round(p.seconds, 1),
                             "tokens": p.tokens})
        self.bar.set_postfix(step=p.step, loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}",
                             mfu="n/a" if mfu is None else f"{mfu:.1%}", lr=f"{lr:.2e}", refresh=False)
        self.window = self.new_window()

    def training_record(self) -> dict:
        p = self.p
        return {"step": p.step, "tokens": p.tokens, "seconds": round(p.seconds, 1)}

    def snapshot(self, final: bool = False) -> None:
        """Write a training snapshot and publish the current weights (on the main process).
        ``final``: the session's last; the optimizer state, saved, is let go before publishing
        (under FSDP publishing gathers the whole model on the main process)."""
        dist, p = self.dist, self.p
        randoms = dist.gather(random_state(self.device))
        digests = [] if self.weights.sharded else dist.gather(parameter_digest(self.model))  # shards differ by design
        self.weights.snapshot(self.run_dir, self.model, self.optimizer, p, randoms,
                              self.scaler.state_dict() if self.needs_scaling else None, self.config.keep_checkpoints, dist)
        if final:
            self.optimizer.state.clear()
        self.weights.publish(self.run_dir, self.model, self.spec, {"training": {
            **self.training_record(), "validation": self.last_validation.get("loss")}}, dist)
        if dist.is_main:
            # "checkpoint": the event's name in metrics.jsonl, kept for existing runs and their readers
            record = {"event": "checkpoint", "step": p.step, "strategy": self.weights.strategy}
            if digests:
                record.update(replica_digests=digests, replicas_identical=len(set(digests)) == 1)
            self.log.append(record)
            if len(set(digests)) > 1:
                self.task.warn(f"step {p.step}: the {dist.world} replicas' weights differ")
        dist.barrier()

    def validate(self, final: bool = False, averaged: list[int] | None = None) -> dict:
        """Validate the current weights on the main process and log the result (returned there)."""
        result: dict = {}
        if self.dist.is_main or self.weights.sharded:  # a sharded model computes with every process
            self.model.eval()
            with torch.no_grad():
                result = self.task.validate(self.model, self.device, self.autocast, final)
            self.model.train()
        if self.dist.is_main:
            record = {"event": "validation", **self.training_record(), **result}
            if averaged:
                record["averaged_steps"] = averaged
            self.log.append(record)
            self.log.plot()
            what = f", mean of the weights at steps {averaged[0]:,}-{averaged[-1]:,} ({len(averaged)})" if averaged else ""
            self.bar.write(f"step {self.p.step}: {self.task.describe(result)}{what}", file=sys.stderr)
            if not averaged:
                self.last_validation = record
        self.dist.barrier()
        return result

    def save_point(self) -> None:
        """Write the current weights as a weight point for averaging (on the main process)."""
        if self.dist.is_main or self.weights.sharded:
            tensors = self.weights.full_state(self.model)  # FSDP: gathered by every process
            if self.dist.is_main:
                save_point(self.run_dir, tensors, self.p.step, self.config.average_last)

    def average_weights(self, last: dict) -> None:
        """Publish the mean of the late weight points if it validates better than the last weights.

        Points from the steep part of the curve would drag the mean back, so only those from
        the last quarter of the run's steps count; and a mean that validates worse than the
        last weights (on the same final validation) is never published.
        """
        dist, p, sharded = self.dist, self.p, self.weights.sharded
        chosen: list[Path] = []
        self.save_point()
        if dist.is_main:
            chosen = [path for path in points(self.run_dir)[-self.config.average_last:]
                      if point_step(path) >= LATE * p.step]
        if dist.broadcast(len(chosen)) < 2:  # one point is the last weights, published already
            return
        if not dist.is_main and not sharded:
            dist.barrier()  # the main process's validation
            return
        trained = self.weights.full_state(self.model)
        self.weights.load_full(self.model, average(chosen) if dist.is_main else {},
                               f"the mean of {len(chosen)} weight points")
        steps = [point_step(path) for path in chosen]
        mean = self.validate(final=True, averaged=steps)
        better = dist.is_main and mean["loss"] < last["loss"]
        if sharded:
            better = dist.broadcast(better)  # every process follows the main one's validation
        if better:
            self.weights.publish(self.run_dir, self.model, self.spec, {"training": {
                **self.training_record(), "validation": mean.get("loss"), "averaged_steps": steps}}, dist)
            self.last_validation = {**self.last_validation, **mean, "averaged_steps": steps}
        else:
            self.weights.load_full(self.model, trained, "the last weights")
            if dist.is_main:
                self.bar.write(f"kept the last weights: the mean of steps {steps[0]:,}-{steps[-1]:,} validates "
                               f"worse ({mean['loss']:.4f} against {last['loss']:.4f})", file=sys.stderr)

    def summary(self) -> dict:
        p, totals = self.p, self.totals
        rate = totals["tokens"] / totals["seconds"] if totals["seconds"] else None
        validation = {k: v for k, v in self.last_validation.items() if k not in ("event", "step", "tokens", "seconds")}
        return {"run_dir": str(self.run_dir), "steps": p.step, "epochs": round(p.epoch + p.batch / self.steps_per_epoch, 3),
                "tokens": p.tokens, "seconds": round(p.seconds, 1),
                "session_seconds": round(time.perf_counter() - self.session_start, 1),
                "tokens_per_second": None if rate is None else round(rate, 1),
                "mfu": None if rate is None else self.utilisation.of(rate / self.dist.world),
                "averaged_steps": validation.pop("averaged_steps", None),
                "validation": validation, "world": self.dist.world}
