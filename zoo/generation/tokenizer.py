"""The GPT-2 byte-level BPE tokenizer (OpenAI's vocabulary, shipped in ``zoo/assets/gpt2``)."""

from __future__ import annotations

import os
from pathlib import Path

from zoo.core.files import GPT2_MERGES, GPT2_VOCAB, TOKENIZER
from zoo.errors import DataError

ASSETS = Path(__file__).parents[1] / "assets" / "gpt2"


def gpt2_tokenizer(path: str | os.PathLike | None = None):
    """A ``GPT2TokenizerFast`` from ``path`` (a directory with vocab.json + merges.txt, or a
    tokenizer.json), or from the copy shipped with the zoo.

    Padding is on the left with ``<|endoftext|>``, as batched generation needs.
    """
    from transformers import GPT2TokenizerFast

    directory = Path(path).expanduser() if path is not None else ASSETS
    if not directory.is_dir():
        raise DataError(f"{directory}: no such tokenizer directory; give one holding {GPT2_VOCAB} and {GPT2_MERGES}")
    has_bpe = (directory / GPT2_VOCAB).is_file() and (directory / GPT2_MERGES).is_file()
    if not has_bpe and not (directory / TOKENIZER).is_file():
        raise DataError(f"{directory}: no {GPT2_VOCAB} + {GPT2_MERGES} (or {TOKENIZER}); is it a GPT-2 tokenizer directory?")
    try:
        if has_bpe:  # vocab_file=/merges_file= would silently give an empty tokenizer in transformers 5
            tokenizer = GPT2TokenizerFast(vocab=str(directory / GPT2_VOCAB), merges=str(directory / GPT2_MERGES))
        else:
            tokenizer = GPT2TokenizerFast(tokenizer_file=str(directory / TOKENIZER))
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"{directory}: cannot read the tokenizer ({exc})") from None
    if len(tokenizer) <= 1:
        raise DataError(f"{directory}: the tokenizer came out empty; check {GPT2_VOCAB} and {GPT2_MERGES}")
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


class TextStream:
    """A :func:`zoo.generation.sampling.generate` ``stream`` callback that writes the text of one
    sequence as its tokens arrive; characters split across tokens wait for their last byte."""

    def __init__(self, tokenizer, write) -> None:
        self.tokenizer = tokenizer
        self.write = write
        self.ids: list[int] = []
        self.shown = ""

    def __call__(self, tokens) -> None:
        self.ids.append(int(tokens[0]))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence
            return
        self.write(text[len(self.shown):])
        self.shown = text
