"""The settings of a language-modelling run (``zoo train`` on a decoder), saved as ``train.json``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from zoo.training.config import TrainConfig

TOKENIZERS = ("model", "char", "byte", "bpe")  # model: the spec's own (GPT-2 BPE, char, ...) or the checkpoint's

# Fine-tuning a checkpoint (--weights) starts from these unless the command line says otherwise:
# a small peak with a short warm-up (large steps would wreck what the checkpoint knows), no
# weight decay pulling it towards zero, and short batches a CPU can take (nanoGPT's
# Shakespeare fine-tuning uses 3e-5 with 32 x 1024 tokens a step; ours are 4 x 256).
FINE_TUNING = {"lr": 1e-4, "warmup_steps": 20, "weight_decay": 0.0, "batch_size": 4, "seq_len": 256}
# ... and a LoRA adapter (--lora) from these: B starts at zero and is scaled by alpha / rank (2 by
# default), so it takes larger steps than the full weights; Hu et al. (2021) fine-tuned GPT-2 with
# lr 2e-4 at a scale of 8, about the same step in the weights as 1e-3 at our 2.
LORA_TUNING = {**FINE_TUNING, "lr": 1e-3}


@dataclass
class LMConfig(TrainConfig):
    """The shared settings with language modelling's defaults (nanoGPT's), plus text, tokenizer and batches."""

    task: str = "language-modelling"
    tokenizer: str = "model"  # model | char | byte | bpe
    vocab_size: int | None = None  # bpe's vocabulary size
    val_fraction: float = 0.1  # the end of the text validates, as nanoGPT splits it
    weights: str | None = None  # fine-tune from these (hf, a hub id, a directory); None: from scratch
    seq_len: int | None = None  # None: the spec's context length
    batch_size: int = 12  # sequences per step and process
    eval_every: int | str = "1m"
    eval_tokens: int = 32768  # validation tokens scored during training; the end of a run scores the whole split
    # LoRA (zoo.training.weights): train a rank-r adapter on the frozen --weights instead of every weight
    lora_rank: int | None = None
    lora_alpha: float | None = None  # the update is scaled by alpha / rank; None: 2 x rank
    lora_dropout: float = 0.0
    lora_targets: str = "attention,mlp"  # roles (attention, mlp) or linear layers by name (c_attn, attn.c_proj)
    lora_base: str = "float32"  # float32 | bfloat16: the frozen projections' dtype (bfloat16 needs --amp bf16)
    merge: bool = True  # publish the merged weights (False: base/ + adapter/, merged when loaded)

    TRAJECTORY: ClassVar[tuple[str, ...]] = TrainConfig.TRAJECTORY + (
        "tokenizer", "vocab_size", "val_fraction", "weights", "seq_len", "batch_size",
        "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "lora_base")
    ADJUSTABLE: ClassVar[tuple[str, ...]] = TrainConfig.ADJUSTABLE + ("eval_tokens", "merge")
