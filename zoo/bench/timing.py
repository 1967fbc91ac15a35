"""Timing for ``zoo bench``: warm-up runs, then the median, min and max of several runs.

A figure is a plain dictionary ``{"median", "min", "max", "runs", "unit"}`` so that it
goes into the JSON report unchanged. A rate derived from a time (FLOP/s, tokens/s)
keeps the same runs: its min comes from the slowest run and its max from the fastest.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable


def figure(samples: list[float], unit: str) -> dict:
    """Median, min and max of ``samples`` in ``unit``."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "runs": len(samples), "unit": unit}


def time_call(fn: Callable[[], object], warmup: int, repeats: int,
              sync: Callable[[], None] = lambda: None) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls.

    ``sync`` waits for queued device work (``torch.cuda.synchronize``) so that a run's
    time covers its kernels and not only their launch.
    """
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return samples


def rate(seconds: list[float], amount: float, unit: str) -> dict:
    """``amount / seconds`` per run as a figure (e.g. FLOP per run → FLOP/s)."""
    return figure([amount / s for s in seconds], unit)


def scaled(fig: dict, factor: float, unit: str) -> dict:
    """A figure multiplied by a positive constant (e.g. seconds → milliseconds)."""
    return {**fig, "median": fig["median"] * factor, "min": fig["min"] * factor,
            "max": fig["max"] * factor, "unit": unit}
