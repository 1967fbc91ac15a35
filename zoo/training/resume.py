"""Which settings a training run keeps and which a resumed run may change.

A run's trajectory (batch size, learning-rate schedule, tokenizer, seed, ...) is fixed once
it starts; a resumed run may only move its budget: when to stop, checkpoint and validate.
Torch-free, like :mod:`zoo.training.config`, so the command line stays light.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from zoo.errors import ZooError
from zoo.training.config import TrainConfig


def data_source(data: str) -> str:
    """A data file or folder as an absolute path (a run may resume from another directory); a dataset name as is."""
    path = Path(data)
    return str(path.resolve()) if path.exists() else data


def run_config(config_class: type[TrainConfig], model: str | None, data: str | None, overrides: dict,
               options: dict[str, Any], given: set[str], resume: Path | None = None) -> TrainConfig:
    """The settings of a new run (of ``config_class``), or of run directory ``resume`` continued.

    ``options`` are the training settings by field name; ``given`` names those the user set
    explicitly (the rest are defaults, which a resumed run ignores). A resumed run reads
    ``model`` and ``data`` from the run when they are None; a new run needs both.
    """
    if resume is None:
        if model is None or data is None:
            raise ZooError("a new run needs MODEL and --data; to continue a run give --resume RUN_DIR")
        known = {f.name for f in dataclasses.fields(config_class)}
        return config_class(model=model, data=data_source(data), overrides=dict(overrides),
                            **{name: value for name, value in options.items() if name in known})
    config = TrainConfig.load(resume)
    if model is not None and config.model != model:
        raise ZooError(f"{resume} trains {config.model}, not {model}; name the same model to resume it")
    data = config.data if data is None else data_source(data)
    if config.data != data:
        raise ZooError(f"{resume} was trained on {config.data}, not {data}; resume it with the same --data")
    changed = [name for name in type(config).TRAJECTORY if name in given and options[name] != getattr(config, name)]
    if changed or (overrides and dict(overrides) != config.overrides):
        what = f"--{changed[0].replace('_', '-')}" if changed else "--set"
        raise ZooError(f"{what} differs from the run's setting; a resumed run keeps its settings (see {resume}/train.json)")
    return dataclasses.replace(config, **{name: options[name] for name in type(config).ADJUSTABLE if name in given})
