"""The settings of a language-modelling run (``zoo train`` on a decoder), saved as ``train.json``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from zoo.training.config import TrainConfig

TOKENIZERS = ("model", "char", "byte", "bpe")  # model: the spec's own (GPT-2 BPE, char, ...) or the checkpoint's

# Fine-tuning a checkpoint (--weights) with the shared defaults (zoo.training.config.TrainConfig)
# and short batches a CPU can take (nanoGPT's Shakespeare fine-tuning uses 3e-5 with 32 x 1024
# tokens a step; ours are 4 x 256).
FINE_TUNING = {**TrainConfig.FINE_TUNING, "batch_size": 4, "seq_len": 256}
LORA_TUNING = {**TrainConfig.LORA_TUNING, "batch_size": 4, "seq_len": 256}


@dataclass
class LMConfig(TrainConfig):
    """The shared settings with language modelling's defaults (nanoGPT's), plus text, tokenizer and batches."""

    task: str = "language-modelling"
    tokenizer: str = "model"  # model | char | byte | bpe
    vocab_size: int | None = None  # bpe's vocabulary size
    val_fraction: float = 0.1  # the end of the text validates, as nanoGPT splits it
    weights: str | None = None  # fine-tune from these (hf, a hub id, a Hugging Face or zoo directory); None: from scratch
    seq_len: int | None = None  # None: the spec's context length
    batch_size: int = 12  # sequences per step and process
    eval_every: int | str = "1m"
    eval_tokens: int = 32768  # validation tokens scored during training; the end of a run scores the whole split

    TRAJECTORY: ClassVar[tuple[str, ...]] = TrainConfig.TRAJECTORY + (
        "tokenizer", "vocab_size", "val_fraction", "seq_len", "batch_size")
    ADJUSTABLE: ClassVar[tuple[str, ...]] = TrainConfig.ADJUSTABLE + ("eval_tokens",)
    FINE_TUNING: ClassVar[dict] = FINE_TUNING
    LORA_TUNING: ClassVar[dict] = LORA_TUNING
