"""Tokenizers for language-model training, and the token stream of a list of documents.

Three kinds are trained here with the Hugging Face ``tokenizers`` library, so a run directory
keeps its tokenizer as a standard ``tokenizer.json``: ``char`` (one token per character, as
nanoGPT's Shakespeare), ``byte`` (one token per UTF-8 byte) and ``bpe`` (GPT-2's byte-level
BPE, trained on the text). In each, :data:`END_OF_TEXT` is the special token with id 0: it
separates documents and is the model's end-of-text and padding token.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from zoo.core.files import TOKENIZER, atomic_path
from zoo.errors import DataError

END_OF_TEXT = "<|endoftext|>"
KINDS = ("char", "byte", "bpe")


def _byte_symbols() -> tuple[str, ...]:
    """GPT-2's printable stand-ins for the 256 bytes (ByteLevel's alphabet), in byte order: a
    printable byte stands for itself, the others for 256, 257, ... in turn."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    others = iter(range(256, 512))
    return tuple(chr(b) if b in printable else chr(next(others)) for b in range(256))


BYTE_SYMBOLS = _byte_symbols()
# Where a document may be cut into pieces that encode to the ids of the whole: after a newline
# between two non-space characters. GPT-2's pre-tokenizer regex (byte, bpe, GPT-2) makes such a
# newline a pre-token of its own and starts the next one after it, cut or not (Python's \s
# covers every space the regex's \s does); char and byte have no merges, so any cut would do.
# A cut has a character on each side, so it never falls at the end of a document.
PIECE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
PIECE_CHARACTERS = 1 << 12  # small enough for encode_batch to share the work among threads


@dataclass
class EncodedText:
    ids: np.ndarray  # (N,) int32 token ids
    characters: int  # characters of text the ids encode


def train_tokenizer(kind: str, documents: list[str], vocab_size: int | None = None) -> Tokenizer:
    """A ``char``, ``byte`` or ``bpe`` tokenizer for ``documents``; only ``bpe`` takes a ``vocab_size``
    (the 256 bytes, :data:`END_OF_TEXT` and at least one merge)."""
    if kind not in KINDS:
        raise DataError(f"unknown tokenizer kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if kind != "bpe" and vocab_size is not None:
        raise DataError(f"a {kind} tokenizer's vocabulary is fixed by its kind and the text; "
                        "give a vocabulary size only with bpe")
    if kind == "char":
        characters = sorted(set().union(*map(set, documents)))
        if not characters:
            raise DataError("no text to make a char vocabulary from; give training text")
        # a BPE without merges: every character is a token; one not in the vocabulary is dropped
        tokenizer = Tokenizer(models.BPE({END_OF_TEXT: 0, **{c: i for i, c in enumerate(characters, 1)}}, []))
        tokenizer.decoder = decoders.Fuse()
    elif kind == "byte":
        tokenizer = _byte_level(models.BPE({END_OF_TEXT: 0, **{s: b for b, s in enumerate(BYTE_SYMBOLS, 1)}}, []))
    else:
        if vocab_size is None or vocab_size < len(BYTE_SYMBOLS) + 2:
            raise DataError(f"a bpe tokenizer needs a vocabulary size of at least {len(BYTE_SYMBOLS) + 2} "
                            f"(the 256 bytes, {END_OF_TEXT} and one merge)"
                            + (f", not {vocab_size}" if vocab_size is not None else ""))
        tokenizer = _byte_level(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT],
                                      initial_alphabet=list(BYTE_SYMBOLS), show_progress=False)
        tokenizer.train_from_iterator(documents, trainer)
    tokenizer.add_special_tokens([END_OF_TEXT])
    assert tokenizer.token_to_id(END_OF_TEXT) == 0
    return tokenizer


def _byte_level(model: models.BPE) -> Tokenizer:
    """``model`` behind GPT-2's pre-tokenizer (bytes as printable symbols, split by GPT-2's regex)."""
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def encode_documents(tokenizer: Tokenizer, documents: list[str], eos_id: int | None,
                     warn: Callable[[str], None] | None = None) -> EncodedText:
    """The token ids of ``documents`` in order, ``eos_id`` (when not None) between consecutive ones.

    Each document encodes as if whole, without special tokens. Characters the tokenizer has no
    token for (only a ``char`` vocabulary lacks any) are left out, with one warning to ``warn``.
    """
    documents = _drop_unknown_characters(tokenizer, documents, warn)
    pieces, ends = [], []  # ends[i]: the number of pieces up to the end of document i
    for document in documents:
        start = 0
        while (cut := PIECE_CUT.search(document, start + PIECE_CHARACTERS)) is not None:
            pieces.append(document[start:cut.start()])
            start = cut.start()
        pieces.append(document[start:])
        ends.append(len(pieces))
    encodings = tokenizer.encode_batch_fast(pieces, add_special_tokens=False)
    parts, start = [], 0
    for end in ends:
        if parts and eos_id is not None:
            parts.append([eos_id])
        parts.extend(encoding.ids for encoding in encodings[start:end])
        start = end
    ids = np.fromiter(itertools.chain.from_iterable(parts), dtype=np.int32)
    return EncodedText(ids, sum(map(len, documents)))


def _drop_unknown_characters(tokenizer: Tokenizer, documents: list[str],
                             warn: Callable[[str], None] | None) -> list[str]:
    """``documents`` without the characters that encode to no token on their own."""
    distinct = sorted(set().union(*map(set, documents)))
    encodings = tokenizer.encode_batch_fast(distinct, add_special_tokens=False)
    unknown = [c for c, encoding in zip(distinct, encodings) if not encoding.ids]
    if not unknown:
        return documents
    before = sum(map(len, documents))
    documents = [document.translate(dict.fromkeys(map(ord, unknown))) for document in documents]
    if warn is not None:
        left_out = before - sum(map(len, documents))
        shown = ", ".join(map(repr, unknown[:10])) + (", ..." if len(unknown) > 10 else "")
        warn(f"characters not in the tokenizer's vocabulary are left out: {left_out} in the text, "
             f"{len(unknown)} distinct ({shown}); the score covers the rest")
    return documents


def save_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike) -> None:
    """Write ``directory/tokenizer.json`` (``PreTrainedTokenizerFast(tokenizer_file=...)`` reads it)."""
    with atomic_path(Path(directory) / TOKENIZER) as tmp:
        tokenizer.save(str(tmp))


def vocabulary_size(tokenizer: Tokenizer) -> int:
    """Rows the model's embedding needs: every token, special ones included."""
    return tokenizer.get_vocab_size(with_added_tokens=True)
