"""Language modelling as a training task: a decoder learns to predict the next token of a text.

From scratch (``zoo train baby-gpt --data input.txt``) or from a checkpoint
(``--weights hf``). The text is split as nanoGPT splits it (the first 90% trains, the last
10% validates), tokenised once, and read in random windows of ``seq_len + 1`` tokens; the
loss is the mean cross-entropy of every next token. Validation scores the validation
split deterministically (:mod:`zoo.lm.evaluate`): a spread-out part of it during training,
all of it at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from zoo.core.files import SPEC, TOKENIZER
from zoo.core.model_dir import write_model_files
from zoo.core.spec import ModelSpec, load_spec
from zoo.errors import DataError
from zoo.lm.config import LMConfig
from zoo.lm.evaluate import score_tokens, scored_stream
from zoo.lm.text import read_documents, split_documents
from zoo.lm.tokenizers import EncodedText, encode_documents, save_tokenizer, train_tokenizer, vocabulary_size
from zoo.training.weights import check_lora
from zoo.training.loss import smoothed_cross_entropy
from zoo.training.task import Task

TRAINED = ("char", "byte", "bpe")  # tokenizers a run trains on its own text


class Windows:
    """Random windows of ``seq_len + 1`` tokens of a token stream, ``batch`` per process and step.

    The start offsets of an epoch depend only on (seed, epoch): a resumed run reads the same
    windows. The global batch is ``world × batch`` windows; process ``rank`` takes its slice,
    so one process with ``world × batch`` windows a step sees what ``world`` processes see.
    """

    def __init__(self, ids: np.ndarray, seq_len: int, batch: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.ids, self.seq_len, self.batch, self.seed, self.rank, self.world = ids, seq_len, batch, seed, rank, world
        self.steps = max(1, (len(ids) - 1) // (seq_len * batch * world))  # one epoch: about every token once
        self._plan: tuple[int, np.ndarray] | None = None

    def plan(self, epoch: int) -> np.ndarray:
        """(steps, world × batch) window starts of ``epoch``."""
        if self._plan is None or self._plan[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            starts = rng.integers(0, len(self.ids) - self.seq_len, size=(self.steps, self.world * self.batch))
            self._plan = (epoch, starts)
        return self._plan[1]

    def __call__(self, epoch: int, index: int) -> torch.Tensor:
        """This process's windows of step ``index``: (batch, seq_len + 1) token ids."""
        starts = self.plan(epoch)[index, self.rank * self.batch : (self.rank + 1) * self.batch]
        return torch.from_numpy(self.ids[starts[:, None] + np.arange(self.seq_len + 1)].astype(np.int64))


def decoder_spec(config: LMConfig) -> ModelSpec:
    spec = load_spec(config.model, config.overrides or None)
    if spec.is_encoder_decoder:
        raise DataError(f"{config.model} is an encoder-decoder model; language modelling trains decoders "
                        "(train it on sentence pairs: zoo train MODEL --data pairs.tsv)")
    return spec


def tokenizer_kind(config: LMConfig, spec: ModelSpec) -> str:
    """What tokenizer the run uses: char, byte, bpe (trained on the text), or "model" (the spec's or checkpoint's)."""
    kind = config.tokenizer
    if kind not in ("model",) + TRAINED:
        raise DataError(f"--tokenizer {kind} is not one a decoder trains with; choose model, char, byte or bpe")
    if kind == "model" and spec.tokenizer in TRAINED and not config.weights:
        kind = spec.tokenizer  # a recipe that says "char" (baby-gpt)
    if kind in TRAINED and config.weights:
        raise DataError(f"--tokenizer {kind} trains a new vocabulary, but the checkpoint's (--weights "
                        f"{config.weights}) is fixed; leave --tokenizer out to keep the checkpoint's")
    if kind == "bpe" and not config.vocab_size:
        raise DataError("--tokenizer bpe needs --vocab-size N (e.g. 4096)")
    if kind != "bpe" and config.vocab_size:
        raise DataError(f"--vocab-size sets bpe's vocabulary; --tokenizer {kind} decides its own")
    return kind


class LanguageModelling(Task):
    """A decoder learning a text, from scratch or from a checkpoint."""

    metric = ("bits_per_character", "validation bits per character")
    config: LMConfig

    def __init__(self, config: LMConfig, warn: Callable[[str], None]) -> None:
        super().__init__(config, warn)
        spec = decoder_spec(config)
        self.kind = tokenizer_kind(config, spec)
        check_lora(config, spec)
        self.texts: tuple[EncodedText, EncodedText] | None = None

    def planned(self) -> tuple[ModelSpec, int, int]:
        spec = decoder_spec(self.config)
        return spec, self.config.seq_len or spec.context_length, self.config.batch_size

    # ------------------------------------------------------------------ a new run

    def create(self, directory: Path, dtype: torch.dtype = torch.float32) -> None:
        """Choose or train the tokenizer, check the text against the model, write spec and initial weights."""
        config, spec = self.config, decoder_spec(self.config)
        train_docs, val_docs = self.documents()
        if self.kind in TRAINED:
            tokenizer = train_tokenizer(self.kind, train_docs, config.vocab_size)
            spec = load_spec(config.model, {**config.overrides, "vocab_size": vocabulary_size(tokenizer),
                                            "tokenizer": self.kind, "bos_token_id": 0, "eos_token_id": 0})
        else:
            tokenizer = self.model_tokenizer(spec)
            if vocabulary_size(tokenizer) > spec.vocab_size:
                raise DataError(f"the tokenizer has {vocabulary_size(tokenizer):,} tokens but {spec.name} only "
                                f"{spec.vocab_size:,} embedding rows; give a matching tokenizer or --tokenizer char|byte|bpe")
        seq_len = config.seq_len or spec.context_length
        if seq_len > spec.context_length:
            raise DataError(f"--seq-len {seq_len} is above {spec.name}'s context length ({spec.context_length}); "
                            f"lower it or raise context_length with --set")
        self.texts = self.encode(tokenizer, spec, train_docs, val_docs, seq_len)
        if config.weights:
            from zoo.hf.checkpoint import load_weights

            model = load_weights(spec, config.weights, dtype=dtype)  # cast tensor by tensor as it is read
        else:
            from zoo.core.builder import build

            model = build(spec, seed=config.seed)
        save_tokenizer(tokenizer, directory)
        write_model_files(model, spec, directory, {"training": {"step": 0, "weights": config.weights}})

    def documents(self) -> tuple[list[str], list[str]]:
        return split_documents(read_documents(self.config.data), self.config.val_fraction)

    def model_tokenizer(self, spec: ModelSpec):
        """The checkpoint's tokenizer (``--weights``), else the spec's (GPT-2's BPE for the gpt2 family)."""
        from zoo.hf.tokenizer import weights_tokenizer

        if not self.config.weights and spec.tokenizer is None:
            raise DataError(f"{spec.name} names no tokenizer; train one on the text with --tokenizer char, byte "
                            "or bpe --vocab-size N")
        return weights_tokenizer(spec, None, self.config.weights).backend_tokenizer

    def encode(self, tokenizer, spec: ModelSpec, train_docs: list[str], val_docs: list[str],
               seq_len: int) -> tuple[EncodedText, EncodedText]:
        """Both splits as token streams, refused if too short to train or validate on."""
        eos = spec.eos_token_id
        train = encode_documents(tokenizer, train_docs, eos, self.warn)
        if len(train.ids) < seq_len + 2:
            raise DataError(f"{self.config.data}: the training text is {len(train.ids):,} tokens, shorter than one "
                            f"sequence of {seq_len} + 1; use more text or a smaller --seq-len")
        val = encode_documents(tokenizer, val_docs, eos, lambda message: self.warn(f"validation text: {message}"))
        val = scored_stream(val, eos)
        if len(val.ids) < 2:
            raise DataError(f"{self.config.data}: the validation split (--val-fraction {self.config.val_fraction}) "
                            "has no tokens to score; raise --val-fraction or use more text")
        return train, val

    # ------------------------------------------------------------------ the run

    def open(self, run_dir: Path, rank: int, world: int) -> ModelSpec:
        from tokenizers import Tokenizer

        config = self.config
        spec = load_spec(run_dir / SPEC)
        self.seq_len = config.seq_len or spec.context_length
        self.tokenizer_name = self.kind if self.kind in TRAINED else spec.tokenizer or "checkpoint"
        if self.texts is None:  # a resumed run, or a process other than the one that created it
            tokenizer = Tokenizer.from_file(str(run_dir / TOKENIZER))
            if rank:
                self.warn = lambda _: None  # the main process reports the data's problems once
            self.texts = self.encode(tokenizer, spec, *self.documents(), self.seq_len)
        self.windows = Windows(self.texts[0].ids, self.seq_len, config.batch_size, config.seed, rank, world)
        return spec

    def steps_per_epoch(self) -> int:
        return self.windows.steps

    def batch(self, epoch: int, index: int, device: torch.device) -> torch.Tensor:
        return self.windows(epoch, index).to(device)

    def loss(self, net: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, int]:
        logits = net(batch[:, :-1])  # (B, T, V)
        target = batch[:, 1:]
        return smoothed_cross_entropy(logits, target, 0.0, -100), target.numel()

    def tokens(self, batch: torch.Tensor) -> int:
        return batch.shape[0] * (batch.shape[1] - 1)

    def flops_per_token(self, spec: ModelSpec) -> float:
        from zoo.core.flops import training_flops_per_token

        return training_flops_per_token(spec, self.seq_len)

    def validate(self, model: nn.Module, device: torch.device, autocast, final: bool) -> dict:
        val = self.texts[1]
        score = score_tokens(model, val.ids, val.characters, self.seq_len, device, autocast,
                             limit=None if final else self.config.eval_tokens)
        return {**score.to_dict(), "whole_split": final or score.scored_tokens == len(val.ids) - 1}

    def describe(self, result: dict) -> str:
        return (f"validation loss {result['loss']:.4f}, perplexity {result['perplexity']:.2f}, "
                f"{result['bits_per_character']:.3f} bits per character "
                f"({result['scored_tokens']:,} tokens{', the whole split' if result['whole_split'] else ''})")

    def start_record(self) -> dict:
        train, val = self.texts
        return {"tokenizer": self.tokenizer_name, "seq_len": self.seq_len, "batch_size": self.config.batch_size,
                "train_tokens": int(len(train.ids)), "train_characters": train.characters,
                "validation_tokens": int(len(val.ids)), "validation_characters": val.characters}
