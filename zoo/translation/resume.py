"""Which settings a training run keeps and which a resumed run may change.

A run's trajectory (batch size, learning-rate schedule, vocabulary, seed, ...) is fixed once
it starts; a resumed run may only move its budget: when to stop, checkpoint and validate.
Torch-free, like :mod:`zoo.translation.train_config`, so the command line stays light.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from zoo.errors import ZooError
from zoo.translation.train_config import TrainConfig

# Settings that decide the run's trajectory: fixed once a run starts.
TRAJECTORY = ("batch_tokens", "lr", "warmup_steps", "label_smoothing", "clip_norm", "weight_decay", "vocab_size",
              "tokenizer", "vocabulary", "amp", "seed")
# ... and those a resumed run may change: when to stop, checkpoint and validate.
ADJUSTABLE = ("max_minutes", "max_steps", "epochs", "checkpoint_every", "eval_every", "eval_sentences",
              "average_last", "average_every")


def data_source(data: str) -> str:
    """A data file as an absolute path (a run may resume from another directory); a dataset name as is."""
    path = Path(data)
    return str(path.resolve()) if path.is_file() else data


def run_config(model: str | None, data: str | None, overrides: dict, options: dict[str, Any], given: set[str],
               resume: Path | None = None) -> TrainConfig:
    """The settings of a new run, or of run directory ``resume`` continued.

    ``options`` are the training settings by :class:`TrainConfig` field name; ``given`` names
    those the user set explicitly (the rest are defaults, which a resumed run ignores). A
    resumed run reads ``model`` and ``data`` from the run when they are None; a new run needs both.
    """
    if resume is None:
        if model is None or data is None:
            raise ZooError("a new run needs MODEL and --data; to continue a run give --resume RUN_DIR")
        return TrainConfig(model=model, data=data_source(data), overrides=dict(overrides), **options)
    config = TrainConfig.load(resume)
    if model is not None and config.model != model:
        raise ZooError(f"{resume} trains {config.model}, not {model}; name the same model to resume it")
    data = config.data if data is None else data_source(data)
    if config.data != data:
        raise ZooError(f"{resume} was trained on {config.data}, not {data}; resume it with the same --data")
    changed = [name for name in TRAJECTORY if name in given and options[name] != getattr(config, name)]
    if changed or (overrides and dict(overrides) != config.overrides):
        what = f"--{changed[0].replace('_', '-')}" if changed else "--set"
        raise ZooError(f"{what} differs from the run's setting; a resumed run keeps its settings (see {resume}/train.json)")
    return dataclasses.replace(config, **{name: options[name] for name in ADJUSTABLE if name in given})
