"""The settings of a training run (``zoo train``'s options), saved as ``train.json``.

Kept apart from :mod:`zoo.translation.training` so the command line can show these defaults
without importing torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from zoo.core.files import TRAIN_CONFIG, atomic_file, read_json
from zoo.errors import DataError


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved as ``train.json`` in the run directory."""

    model: str = "transformer-en-it-small"
    data: str = ""
    overrides: dict = field(default_factory=dict)  # --set PATH=VALUE on the spec
    # vocabulary
    vocab_size: int = 8000
    tokenizer: str = "bpe"  # bpe | unigram
    vocabulary: str = "shared"  # shared | per-language
    # split
    validation_fraction: float = 0.01
    test_fraction: float = 0.02
    split_seed: int = 0
    skip_bad_lines: bool = False
    # optimisation
    # measured on the 2-core CPU (see the README): small batches learn fastest per second
    batch_tokens: int = 1024  # padded tokens per batch and process, longest side
    lr: float = 1e-3  # peak, reached after warmup_steps
    warmup_steps: int = 400
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    amp: str = "auto"  # auto (CUDA; CPUs with native bf16) | off | bf16 | fp16
    seed: int = 0
    # budget: the first limit reached stops training
    max_minutes: float | None = None
    max_steps: int | None = None
    epochs: int = 30
    # bookkeeping
    # training snapshots (the field names are those train.json has always had)
    checkpoint_every: int | str = "5m"  # steps ("200") or minutes/seconds ("5m", "90s")
    keep_checkpoints: int = 2  # snapshots kept
    # checkpoint averaging (zoo.translation.averaging): the published weights are the mean
    # of the last ``average_last`` weight points, one every ``average_every`` (1: no averaging)
    average_last: int = 5
    average_every: int | str = "1m"
    eval_every: int | str = "5m"
    eval_sentences: int = 200
    eval_pairs: int = 2000
    log_every: int = 20
    device: str | None = None  # None: CUDA when available

    def save(self, run_dir: Path) -> None:
        with atomic_file(Path(run_dir) / TRAIN_CONFIG) as f:
            f.write((json.dumps(dataclasses.asdict(self), indent=2) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, run_dir: Path) -> "TrainConfig":
        path = Path(run_dir) / TRAIN_CONFIG
        if not path.is_file():
            raise DataError(f"{run_dir}: no {TRAIN_CONFIG}; is it a run directory made by 'zoo train'?")
        return cls(**read_json(path, DataError))


def parse_interval(value: int | str) -> tuple[str, float]:
    """``200`` or ``"200"`` → ("steps", 200); ``"5m"`` → ("seconds", 300); ``"90s"`` → ("seconds", 90)."""
    text = str(value).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], 0)
    try:
        amount = float(text[:-1]) if scale else int(text)
    except ValueError:
        amount = -1
    if amount <= 0:
        raise DataError(f"interval {value!r}: give a number of steps (200) or a time (90s, 5m, 1h)")
    return ("seconds", amount * scale) if scale else ("steps", amount)
