"""Translation as a training task: sentence pairs, label-smoothed cross-entropy, BLEU.

The shared loop (:mod:`zoo.training.loop`) does the training; this module gives it the
split and its length-bucketed batches, the loss and validation (NLL per target token and
greedy BLEU on a seeded sample of the validation sources).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from zoo.core.files import SPEC
from zoo.core.model_dir import write_model_files
from zoo.core.spec import ModelSpec, load_spec
from zoo.errors import DataError
from zoo.training.loss import smoothed_cross_entropy
from zoo.training.task import Task
from zoo.training.weights import check_lora
from zoo.translation.data import Batch, TokenBatches, group_references, read_pairs, sample_sources, split_pairs
from zoo.translation.train_config import TranslationConfig
from zoo.translation.vocabulary import PAD_ID, Vocabulary


def translation_loss(model: nn.Module, batch: Batch, smoothing: float) -> torch.Tensor:
    """Summed label-smoothed cross-entropy over the non-padding target tokens (:mod:`zoo.training.loss`)."""
    logits = model(batch.src, batch.tgt_in, (batch.src != PAD_ID).long())  # (B, T, V)
    return smoothed_cross_entropy(logits, batch.tgt_out, smoothing, PAD_ID)


@dataclass
class Corpus:
    """The split, tokenised; what the loop and validation need."""

    splits: dict
    batches: TokenBatches
    val_src: list[np.ndarray]
    val_tgt: list[np.ndarray]
    dropped: int


def read_split(config: TranslationConfig, warn: Callable[[str], None]) -> dict:
    pairs = read_pairs(config.data, config.skip_bad_lines, warn)
    return split_pairs(pairs, config.validation_fraction, config.test_fraction, config.split_seed)


def tokenize_corpus(splits: dict, vocabulary: Vocabulary, config: TranslationConfig, spec: ModelSpec,
                    rank: int = 0, world: int = 1) -> Corpus:
    """Encode the training and validation splits and plan the training batches."""
    limit = spec.context_length

    def encode(pairs):
        src = vocabulary.encode_source([p.en for p in pairs])
        tgt = vocabulary.encode_target([p.it for p in pairs])
        keep = [i for i in range(len(pairs)) if len(src[i]) <= limit and len(tgt[i]) - 1 <= limit]
        arrays = ([np.asarray(src[i], dtype=np.int32) for i in keep], [np.asarray(tgt[i], dtype=np.int32) for i in keep])
        return arrays, len(pairs) - len(keep)

    (train_src, train_tgt), dropped = encode(splits["train"])
    if not train_src:
        raise DataError(f"{config.data}: the training split is empty; use a larger file")
    (val_src, val_tgt), _ = encode(splits["validation"][: config.eval_pairs])
    batches = TokenBatches(train_src, train_tgt, config.batch_tokens, PAD_ID, seed=config.seed, rank=rank, world=world)
    return Corpus(splits, batches, val_src, val_tgt, dropped)


def translator_checkpoint(source: str) -> Path:
    """The directory a translator fine-tunes from: a zoo model directory with the vocabulary its
    embeddings were trained with (a translation run, or its export)."""
    from zoo.core.files import MANIFEST, TOKENIZER, WEIGHTS

    path = Path(source).expanduser()
    if not path.is_dir() or not ((path / WEIGHTS).is_file() or (path / MANIFEST).is_file()):
        raise DataError(f"--weights {source}: not a zoo model directory; a translator fine-tunes a translation run "
                        "directory (zoo train transformer-en-it-small --data PAIRS -o RUN)")
    if not (path / TOKENIZER).is_file():
        raise DataError(f"--weights {source}: no {TOKENIZER} beside the weights; a translator fine-tunes with the "
                        "vocabulary it was trained with, so give a translation run directory")
    return path


class TranslationTask(Task):
    """An encoder-decoder model learning English → Italian from sentence pairs."""

    metric = ("bleu", "validation BLEU (greedy, single reference)")
    config: TranslationConfig

    def __init__(self, config: TranslationConfig, warn: Callable[[str], None]) -> None:
        super().__init__(config, warn)
        spec = load_spec(config.model, config.overrides or None)
        if not spec.is_encoder_decoder:
            raise DataError(f"{config.model} is a {spec.family} model; translation trains encoder-decoder models")
        check_lora(config, spec)
        self.splits: dict | None = None

    def read(self) -> dict:
        if self.splits is None:
            self.splits = read_split(self.config, self.warn)
        return self.splits

    def create(self, directory: Path, dtype: torch.dtype = torch.float32) -> None:
        """Train the vocabulary on the training split (or take the checkpoint's, with ``weights``);
        write it, the spec and the initial weights."""
        config, train_pairs = self.config, self.read()["train"]
        if config.weights:
            source = translator_checkpoint(config.weights)
            vocabulary = Vocabulary.load(source)
        else:
            vocabulary = Vocabulary.train([p.en for p in train_pairs], [p.it for p in train_pairs],
                                          config.vocab_size, config.tokenizer, config.vocabulary)
        spec = load_spec(config.model, {**config.overrides, "vocab_size": vocabulary.size})
        if config.weights:
            from zoo.core.model_dir import load_model_for_spec

            model = load_model_for_spec(spec, source, dtype=dtype)  # refused unless its architecture is spec's
        else:
            from zoo.core.builder import build

            model = build(spec, seed=config.seed)
        vocabulary.save(directory)
        write_model_files(model, spec, directory, {"training": {"step": 0, "weights": config.weights}})

    def planned(self) -> tuple[ModelSpec, int, int]:
        """A batch of ``batch_tokens`` as sentences of 32 tokens (about the corpus's longest)."""
        spec = load_spec(self.config.model, self.config.overrides or None)
        return spec, 32, max(1, self.config.batch_tokens // 32)

    def open(self, run_dir: Path, rank: int, world: int) -> ModelSpec:
        # the other processes read the data without repeating its warnings
        splits = self.read() if rank == 0 else read_split(self.config, lambda _: None)
        self.vocabulary = Vocabulary.load(run_dir)
        spec = load_spec(run_dir / SPEC)
        self.corpus = tokenize_corpus(splits, self.vocabulary, self.config, spec, rank, world)
        if self.corpus.dropped and rank == 0:
            self.warn(f"left out {self.corpus.dropped} training pairs longer than the context length "
                      f"({spec.context_length} tokens)")
        return spec

    def steps_per_epoch(self) -> int:
        return len(self.corpus.batches)

    def batch(self, epoch: int, index: int, device: torch.device) -> Batch:
        batches = self.corpus.batches
        return batches.collate(batches.plan(epoch)[index]).to(device)

    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        return translation_loss(net, batch, self.config.label_smoothing), batch.n_tgt_tokens

    def tokens(self, batch: Batch) -> int:
        return batch.n_src_tokens + batch.n_tgt_tokens

    def flops_per_token(self, spec: ModelSpec) -> float:
        """At the training pairs' mean source and target lengths."""
        from zoo.core.flops import training_flops_per_token

        batches = self.corpus.batches
        source, target = max(1, round(float(batches.src_len.mean()))), max(1, round(float(batches.tgt_len.mean())))
        return training_flops_per_token(spec, target, source)

    def validate(self, model: nn.Module, device: torch.device, autocast, final: bool) -> dict:
        """NLL per target token and greedy single-reference BLEU on a seeded sample of the sources."""
        from zoo.translation.evaluate import score
        from zoo.translation.search import Translator

        config, corpus = self.config, self.corpus
        loss_sum, tokens = 0.0, 0
        val = TokenBatches(corpus.val_src, corpus.val_tgt, config.batch_tokens, PAD_ID) if corpus.val_src else None
        for batch in (val.iterate(0) if val else []):
            batch = batch.to(device)
            with autocast:
                loss_sum += translation_loss(model, batch, 0.0).item()
            tokens += batch.n_tgt_tokens
        sources, references = group_references(corpus.splits["validation"])
        sources, references = sample_sources(sources, references, config.eval_sentences)  # across the split
        bleu = None
        if sources:
            with autocast:
                hypotheses = Translator(model, self.vocabulary, device).translate(sources, beam=1, batch_size=100)
            bleu = score(hypotheses, references).single_reference.bleu
        return {"loss": loss_sum / max(tokens, 1), "bleu": bleu, "sentences": len(sources)}

    def describe(self, result: dict) -> str:
        return (f"validation loss {result['loss']:.3f}, BLEU {result['bleu'] or 0:.2f} "
                f"({result['sentences']} sentences, greedy)")

    def start_record(self) -> dict:
        splits = self.corpus.splits
        return {"pairs": {k: len(v) for k, v in splits.items()},
                "train_pairs_used": sum(len(b) for b in self.corpus.batches.plan(0)) * self.corpus.batches.world,
                "vocab_size": self.vocabulary.size}
