"""The settings of a translation run (``zoo train`` on an encoder-decoder), saved as ``train.json``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from zoo.training.config import TrainConfig


@dataclass
class TranslationConfig(TrainConfig):
    """The shared settings with translation's defaults, plus its vocabulary, split and batches."""

    task: str = "translation"
    model: str = "transformer-en-it-small"
    # vocabulary
    vocab_size: int = 8000
    tokenizer: str = "bpe"  # bpe | unigram
    vocabulary: str = "shared"  # shared | per-language
    # split
    validation_fraction: float = 0.01
    test_fraction: float = 0.02
    split_seed: int = 0
    skip_bad_lines: bool = False
    # optimisation: the 2017 paper's AdamW and schedule (warm-up, then 1/sqrt(step))
    # measured on the 2-core CPU (see the README): small batches learn fastest per second
    batch_tokens: int = 1024  # padded tokens per batch and process, longest side
    lr: float = 1e-3
    warmup_steps: int = 400
    schedule: str = "inverse-sqrt"
    beta2: float = 0.98
    eps: float = 1e-9
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    # checkpoint averaging: the mean of 5 points a minute apart, from the run's last quarter
    average_last: int = 5
    eval_sentences: int = 200
    eval_pairs: int = 2000

    TRAJECTORY: ClassVar[tuple[str, ...]] = TrainConfig.TRAJECTORY + (
        "batch_tokens", "label_smoothing", "vocab_size", "tokenizer", "vocabulary")
    ADJUSTABLE: ClassVar[tuple[str, ...]] = TrainConfig.ADJUSTABLE + ("eval_sentences",)

