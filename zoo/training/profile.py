"""``zoo train --profile``: where the current training step's time goes, for any family.

The run's settings start a throw-away run in a temporary directory (the same task, data,
batches, weights and optimizer a real run gets), a few steps warm it up (first calls
allocate and pick kernels), then ``steps`` steps run under PyTorch's profiler. The answer
is the step's throughput and MFU, and the profiler's operator table. How the speed of the
step was won over time is recorded in the README, not replayed here.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from zoo.training.config import TrainConfig

WARMUP_STEPS = 3
TABLE_ROWS = 15


def profile_training(config: TrainConfig, steps: int = 20, progress: bool = True,
                     warn: Callable[[str], None] | None = None) -> dict:
    """Time ``steps`` training steps of a fresh run with ``config`` under ``torch.profiler``;
    return the figures and the operator table (nothing is left on disk)."""
    from torch.profiler import ProfilerActivity, profile
    from tqdm import tqdm

    from zoo.training.distributed import Distributed
    from zoo.training.loop import Trainer
    from zoo.training.plan import check_training_fits
    from zoo.training.run import task_class

    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
    task = task_class(config.task)(config, warn)
    dist = Distributed.start(config.device, group=config.strategy == "fsdp")
    try:
        with tempfile.TemporaryDirectory(prefix="zoo-profile-") as scratch:
            trainer = Trainer(task, Path(scratch) / "run", dist, progress=False, on_step=None)
            check_training_fits(task, dist.world, trainer.device, trainer.compute_dtype)
            trainer.start_run(resume=False, force=False)
            trainer.set_up(resume=False)
            trainer.window = trainer.new_window()
            trainer.session_start, trainer.seconds_before = time.perf_counter(), 0.0
            trainer.total_steps, trainer.budget = float("inf"), float("inf")
            bar = tqdm(total=WARMUP_STEPS + steps, desc="profiling the training step", unit="step",
                       file=sys.stderr, disable=not progress)
            for _ in range(WARMUP_STEPS):
                trainer.step()
                bar.update()
            trainer.window = trainer.new_window()
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                for _ in range(steps):
                    trainer.step()
                    bar.update()
                if trainer.device.type == "cuda":
                    torch.cuda.synchronize()
            bar.close()
            window = trainer.window
            rate = window["tokens"] / max(window["seconds"], 1e-9)
            loss = float(window["loss"]) / max(window["terms"], 1)
            utilisation = trainer.utilisation
    finally:
        dist.stop()
    sort = "self_cuda_time_total" if "CUDA" in str(activities) else "self_cpu_time_total"
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1
    ranked = sorted(events, key=lambda e: -e.self_cpu_time_total)[:TABLE_ROWS]
    return {"model": trainer.spec.name, "task": config.task, "device": str(trainer.device),
            "threads": torch.get_num_threads(), "steps": steps, "warmup_steps": WARMUP_STEPS,
            "tokens_per_second": round(rate, 1), "mfu": utilisation.of(rate), "training_loss": round(loss, 4),
            **utilisation.to_dict(),
            "operators": [{"operator": e.key, "self_cpu_share": round(e.self_cpu_time_total / total, 4),
                           "self_cpu_ms": round(e.self_cpu_time_total / 1000, 3), "calls": e.count} for e in ranked],
            "table": events.table(sort_by=sort, row_limit=TABLE_ROWS)}


def report_lines(result: dict) -> list[str]:
    """The profile as ``zoo train --profile`` prints it: the figures, then PyTorch's table."""
    mfu = "n/a" if result["mfu"] is None else f"{result['mfu']:.1%}"
    ceiling = result["matmul_ceiling_flop_per_s"]
    return [f"training step profile: {result['model']} ({result['task']}) on {result['device']}, "
            f"{result['threads']} threads, {result['steps']} steps after {result['warmup_steps']} to warm up",
            f"  {result['tokens_per_second']:,.0f} tokens/s, MFU {mfu} of {result['dtype']} matmuls"
            + (f" (ceiling {ceiling / 1e12:.2f} TFLOP/s, {result['flops_per_token'] / 1e6:.1f} MFLOP per token)"
               if ceiling else "") + f", training loss {result['training_loss']:.3f}",
            "where the step's time goes (torch.profiler, largest self time first):",
            result["table"].rstrip()]
