"""A small, learnable English-Italian corpus for the translation tests."""

from __future__ import annotations

import itertools
from pathlib import Path

SUBJECTS = [("Tom", "Tom"), ("Mary", "Mary"), ("He", "Lui"), ("She", "Lei")]
VERBS = [("sees", "vede"), ("has", "ha"), ("buys", "compra"), ("wants", "vuole"), ("finds", "trova")]
ADJECTIVES = [("red", "rosso"), ("big", "grande"), ("old", "vecchio"), ("new", "nuovo")]
NOUNS = [("cat", "gatto"), ("book", "libro"), ("dog", "cane"), ("hat", "cappello"), ("bed", "letto")]


def synthetic_pairs() -> list[tuple[str, str]]:
    """400 English sentences; those with a pronoun subject get a second Italian variant."""
    pairs = []
    for (s, si), (v, vi), (a, ai), (n, ni) in itertools.product(SUBJECTS, VERBS, ADJECTIVES, NOUNS):
        pairs.append((f"{s} {v} the {a} {n}.", f"{si} {vi} il {ni} {ai}."))
        if si in ("Lui", "Lei"):
            pairs.append((f"{s} {v} the {a} {n}.", f"{vi.capitalize()} il {ni} {ai}."))
    return pairs


def write_tsv(path: Path, pairs=None, crlf: bool = True) -> Path:
    end = "\r\n" if crlf else "\n"
    path.write_bytes("".join(f"{en}\t{it}{end}" for en, it in (pairs or synthetic_pairs())).encode("utf-8"))
    return path


TINY_MODEL = ("--set", "d_model=32", "--set", "n_layers=1", "--set", "n_decoder_layers=1",
              "--set", "attention.n_heads=2", "--set", "mlp.d_ff=64", "--set", "dropout=0.0")
TINY_OVERRIDES = {"d_model": 32, "n_layers": 1, "n_decoder_layers": 1, "attention.n_heads": 2,
                  "mlp.d_ff": 64, "dropout": 0.0}


def one_thread():
    """Run a test on one intra-op thread: tiny models lose badly to thread wake-ups on a busy CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
