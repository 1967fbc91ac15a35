"""``zoo.train``: start or continue a training run, whatever the model's family.

The model's family decides the task (a decoder learns text, an encoder-decoder translates);
the settings are the task's (:mod:`zoo.training.config`), with a resumed run keeping its
trajectory (:mod:`zoo.training.resume`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

from zoo.training.config import TrainConfig, task_class, task_config, task_of_family
from zoo.training.resume import run_config


def settings_for(model: str | None, data: str | None, overrides: dict | None = None, settings: dict | None = None,
                 given: set[str] | None = None, resume: str | os.PathLike | None = None) -> TrainConfig:
    """The settings of a new run of ``model`` on ``data`` (or of run ``resume`` continued).

    ``settings`` are training settings by field name (None: the task's default); ``given``
    names those the user chose (all non-None ones if not said). Fine-tuning a checkpoint
    (``weights``) takes the task's :attr:`TrainConfig.FINE_TUNING` (with ``lora_rank``, its
    ``LORA_TUNING``) for the settings not given.
    """
    settings = {name: value for name, value in (settings or {}).items() if value is not None}
    given = set(settings) if given is None else given & set(settings)
    overrides = dict(overrides or {})
    if resume is not None:
        config_class = type(TrainConfig.load(Path(resume)))
    else:
        from zoo.core.spec import load_spec

        if model is None:
            raise ValueError("a new run needs a model")
        config_class = task_config(task_of_family(load_spec(model, overrides or None).family))
        if settings.get("weights"):
            settings = {**(config_class.LORA_TUNING if settings.get("lora_rank") else config_class.FINE_TUNING),
                        **settings}
    return run_config(config_class, model, data, overrides, settings, given, Path(resume) if resume else None)


def train(model: str | None = None, data: str | None = None, output: str | os.PathLike | None = None, *,
          resume: str | os.PathLike | None = None, overrides: dict | None = None, force: bool = False,
          progress: bool = True, warn: Callable[[str], None] | None = None, given: set[str] | None = None,
          **settings: Any) -> dict:
    """Train ``model`` on ``data`` into the new run directory ``output``, or continue run ``resume``.

    ``settings`` are the task's (``lr=3e-4``, ``seq_len=256``, ``weights="hf"``, ``tokenizer="char"``,
    ``max_minutes=5``, ...). Returns the run's summary.
    """
    if (output is None) == (resume is None):
        raise ValueError("give output to start a run or resume to continue one")
    config = settings_for(model, data, overrides, settings, given, resume)
    return train_run(config, output or resume, resume=resume is not None, force=force, progress=progress, warn=warn)


def train_run(config: TrainConfig, run_dir: str | os.PathLike, resume: bool = False, force: bool = False,
              progress: bool = True, warn: Callable[[str], None] | None = None,
              on_step: Callable[[int], None] | None = None) -> dict:
    """Train with the settings ``config`` (its task's) into ``run_dir``: a new run, or ``resume`` it."""
    from zoo.training.loop import fit

    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
    task = task_class(config.task)(config, warn)
    return fit(task, Path(run_dir), resume=resume, force=force, progress=progress, on_step=on_step)


def check_trained(run_dir: str | os.PathLike) -> None:
    """Refuse a training run whose published weights are still its random start (step 0, not
    a fine-tuned checkpoint's): generating from those says nothing about the run."""
    from zoo.core.files import MANIFEST, TRAIN_CONFIG, read_json
    from zoo.errors import DataError

    run_dir = Path(run_dir)
    if not (run_dir / TRAIN_CONFIG).is_file():
        return  # not a training run
    training = read_json(run_dir / MANIFEST, DataError).get("training", {})
    if training.get("step", 0) == 0 and not training.get("weights"):
        raise DataError(f"{run_dir} has no trained weights yet (step 0: a random start); "
                        f"train it first, e.g. zoo train --resume {run_dir}")
