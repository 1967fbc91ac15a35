"""Subword vocabularies for translation, trained with the Hugging Face ``tokenizers`` library.

A :class:`Vocabulary` maps English sources and Italian targets to the ids of one model
embedding table. ``shared`` trains one BPE or unigram model on both languages and
saves it as ``tokenizer.json``; ``per-language`` trains one per language, saves the
Italian one as ``tokenizer.target.json``, and shifts target ids past the English ones
so the two never share an embedding row. Both layouts start with the special tokens
``<pad>``=0, ``<s>``=1, ``</s>``=2, ``<unk>``=3. Sources are encoded as tokens + ``</s>``;
targets as ``<s>`` + tokens + ``</s>``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from zoo.core.files import TARGET_TOKENIZER, TOKENIZER, atomic_path
from zoo.errors import DataError

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
ALGORITHMS = ("bpe", "unigram")
LAYOUTS = ("shared", "per-language")


def train_tokenizer(texts: Iterable[str], vocab_size: int, algorithm: str = "bpe") -> Tokenizer:
    """Train a subword tokenizer (BPE or unigram) whose first ids are :data:`SPECIAL_TOKENS`.

    Text is NFKC-normalised and split at spaces (kept as ``▁``, as SentencePiece does),
    punctuation and digits before the subword model runs, so decoding restores spacing.
    """
    if algorithm == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      min_frequency=2, show_progress=False)
    elif algorithm == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                          unk_token="<unk>", show_progress=False)
    else:
        raise DataError(f"unknown tokenizer algorithm {algorithm!r}; choose one of: {', '.join(ALGORITHMS)}")
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True),
    ])
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(texts, trainer)
    check_special_tokens(tokenizer, "trained tokenizer")
    return tokenizer


def check_special_tokens(tokenizer: Tokenizer, where: str) -> None:
    """Refuse a tokenizer whose special tokens are not ``<pad>``=0, ``<s>``=1, ``</s>``=2, ``<unk>``=3."""
    for expected, token in enumerate(SPECIAL_TOKENS):
        found = tokenizer.token_to_id(token)
        if found != expected:
            raise DataError(f"{where}: special token {token} has id {found}, expected {expected}; "
                            "train the tokenizer with zoo train")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a ``tokenizers`` JSON file and check its special tokens."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no tokenizer file; a run directory made by 'zoo train' has one")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a plain Exception for any parse error
        raise DataError(f"{path}: not a valid tokenizers JSON file ({exc})") from None
    check_special_tokens(tokenizer, str(path))
    return tokenizer


class Vocabulary:
    """English source and Italian target tokenizers laid out in one embedding table."""

    def __init__(self, source: Tokenizer, target: Tokenizer | None = None) -> None:
        self.source = source
        self.target = target if target is not None else source
        self.shared = target is None
        # per-language: target ids above the specials come after every source id
        self.target_offset = 0 if self.shared else source.get_vocab_size() - len(SPECIAL_TOKENS)

    @property
    def layout(self) -> str:
        return "shared" if self.shared else "per-language"

    @property
    def size(self) -> int:
        """Rows the model's embedding needs."""
        if self.shared:
            return self.source.get_vocab_size()
        return self.source.get_vocab_size() + self.target.get_vocab_size() - len(SPECIAL_TOKENS)

    @classmethod
    def train(cls, english: Sequence[str], italian: Sequence[str], vocab_size: int, algorithm: str = "bpe",
              layout: str = "shared") -> "Vocabulary":
        """Train on the training split; ``vocab_size`` is the total for both languages."""
        if layout == "shared":
            return cls(train_tokenizer([*english, *italian], vocab_size, algorithm))
        if layout == "per-language":
            half = vocab_size // 2 + len(SPECIAL_TOKENS) // 2
            return cls(train_tokenizer(english, half, algorithm), train_tokenizer(italian, half, algorithm))
        raise DataError(f"unknown vocabulary layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` (and ``tokenizer.target.json`` when per-language)."""
        directory = Path(directory)
        with atomic_path(directory / TOKENIZER) as tmp:
            self.source.save(str(tmp))
        if not self.shared:
            with atomic_path(directory / TARGET_TOKENIZER) as tmp:
                self.target.save(str(tmp))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Vocabulary":
        """Load the vocabulary saved in a run (or exported) directory."""
        directory = Path(directory)
        source = load_tokenizer(directory / TOKENIZER)
        target = load_tokenizer(directory / TARGET_TOKENIZER) if (directory / TARGET_TOKENIZER).is_file() else None
        return cls(source, target)

    def encode_source(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids + ``</s>`` for each English sentence."""
        return [enc.ids + [EOS_ID] for enc in self.source.encode_batch(list(texts), add_special_tokens=False)]

    def encode_target(self, texts: Sequence[str]) -> list[list[int]]:
        """``<s>`` + token ids + ``</s>`` for each Italian sentence."""
        out = []
        for enc in self.target.encode_batch(list(texts), add_special_tokens=False):
            ids = [i + self.target_offset if i >= len(SPECIAL_TOKENS) else i for i in enc.ids]
            out.append([BOS_ID, *ids, EOS_ID])
        return out

    def decode_target(self, sequences: Sequence[Sequence[int]]) -> list[str]:
        """Italian text for each id sequence; special tokens are dropped."""
        special, offset = len(SPECIAL_TOKENS), self.target_offset
        # per-language: an English-only id produced on the target side has no Italian piece
        local = [[i if i < special else i - offset for i in seq if i < special or i >= special + offset]
                 for seq in sequences]
        return self.target.decode_batch(local, skip_special_tokens=True)
