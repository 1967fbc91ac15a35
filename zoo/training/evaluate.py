"""``zoo.evaluate(RUN_DIR)``: score a training run of any family, as ``zoo evaluate`` does.

A decoder's run is scored by its loss, perplexity and bits per character over a split of
its text (:func:`zoo.lm.evaluate.evaluate_run`); a translator's by translating a split of
its pairs and scoring BLEU, chrF, CER and WER (:func:`zoo.translation.evaluate.evaluate_run`).
"""

from __future__ import annotations

import os
from pathlib import Path

from zoo.errors import ZooError

TRANSLATION_ONLY = ("beam", "alpha", "limit", "seed", "skip_bad_lines", "onnx_dir")
FLAGS = {"alpha": "length-penalty", "onnx_dir": "onnx"}


def evaluate(run_dir: str | os.PathLike, *, split: str | None = None, data: str | os.PathLike | None = None,
             device: str = "cpu", batch_size: int | None = None, progress: bool = True, **translation):
    """Score run ``run_dir`` on ``split`` of its data (default: a translator's test split, a
    decoder's validation split) or on all of ``data``; the result is also written under
    ``run_dir/eval``. Translation runs take ``beam``, ``alpha``, ``limit``, ``seed``,
    ``skip_bad_lines`` and ``onnx_dir`` (see :func:`zoo.translation.evaluate.evaluate_run`)
    and return a :class:`~zoo.translation.evaluate.RunEvaluation`; a decoder's run returns a
    dict with ``loss``, ``perplexity``, ``bits_per_character``, ``where`` and ``path``."""
    from zoo.training.config import TrainConfig

    config = TrainConfig.load(Path(run_dir))
    if data is not None and split is not None:
        raise ZooError("--split chooses a split of the run's data; --data FILE scores all of FILE: give one")
    unknown = sorted(set(translation) - set(TRANSLATION_ONLY))
    if unknown:
        raise TypeError(f"evaluate() got an unexpected keyword argument {unknown[0]!r}")
    if config.task == "translation":
        from zoo.translation.evaluate import evaluate_run

        return evaluate_run(run_dir, split=split or "test", data=data, device=device, batch_size=batch_size or 64,
                            progress=progress, **translation)
    if translation:
        name = sorted(translation)[0]
        raise ZooError(f"--{FLAGS.get(name, name.replace('_', '-'))} is for translation runs; {run_dir} is a "
                       f"{config.task} run")
    from zoo.lm.evaluate import evaluate_run

    return evaluate_run(run_dir, data=data, split=split or "validation", device=device, batch_size=batch_size,
                        progress=progress)
