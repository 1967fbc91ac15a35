"""What a training task gives the shared loop (:func:`zoo.training.loop.fit`): its data, loss and evaluation.

The loop owns everything else (optimizer, schedule, mixed precision, snapshots and resume,
checkpoint averaging, distributed set-up, MFU, progress bar, metrics and curves). Two tasks
exist: :class:`zoo.translation.task.TranslationTask` (encoder-decoder models on sentence
pairs) and :class:`zoo.lm.task.LanguageModelling` (decoders on text).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from zoo.core.spec import ModelSpec
from zoo.training.config import TrainConfig


class Task:
    """A training task's side of the loop; every method is called by :func:`zoo.training.loop.fit`."""

    #: the validation record's field drawn beside the loss in curves.png, and the panel's title
    metric: tuple[str, str] | None = None

    def __init__(self, config: TrainConfig, warn: Callable[[str], None]) -> None:
        self.config = config
        self.warn = warn

    def create(self, directory: Path, dtype: torch.dtype = torch.float32) -> None:
        """Write a new run's own files into ``directory`` (the loop writes the settings): its
        tokenizer, its spec and its initial weights (a zoo model directory at step 0), a
        checkpoint's (``--weights``) stored in ``dtype`` (a LoRA run's bfloat16 base)."""
        raise NotImplementedError

    def open(self, run_dir: Path, rank: int, world: int) -> ModelSpec:
        """Read the run's tokenizer, prepare the data and plan the batches for process ``rank``
        of ``world``; return the run's spec."""
        raise NotImplementedError

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the training data (per process)."""
        raise NotImplementedError

    def batch(self, epoch: int, index: int, device: torch.device) -> Any:
        """Batch ``index`` of ``epoch`` for this process, on ``device``; the same for the same
        arguments, so a resumed run sees the batches the uninterrupted one would have."""
        raise NotImplementedError

    def loss(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """The summed training loss of ``batch`` and the number of terms it sums (the step
        minimises their mean); :func:`zoo.training.loss.smoothed_cross_entropy` computes it."""
        raise NotImplementedError

    def tokens(self, batch: Any) -> int:
        """The tokens ``batch`` trains on, as tokens/s counts them."""
        raise NotImplementedError

    def flops_per_token(self, spec: ModelSpec) -> float:
        """Training FLOPs per counted token (forward and backward), for MFU."""
        raise NotImplementedError

    def validate(self, model: nn.Module, device: torch.device, autocast: contextlib.AbstractContextManager,
                 final: bool) -> dict:
        """Validation figures of ``model`` (in eval mode): ``loss`` (per token, lower is better)
        and the task's own. ``final``: the end of the run, where a task may score more."""
        raise NotImplementedError

    def describe(self, result: dict) -> str:
        """One line for a :meth:`validate` result, printed under the progress bar."""
        return f"validation loss {result['loss']:.4f}"

    def start_record(self) -> dict:
        """What metrics.jsonl's start record says about the data (sizes, vocabulary)."""
        return {}

    def planned(self) -> tuple[ModelSpec, int, int]:
        """The model's spec and a step's shape, sequence length and sequences per process, for the
        memory plan (:mod:`zoo.training.plan`): known before the run directory is written."""
        raise NotImplementedError
