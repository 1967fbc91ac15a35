"""English-Italian parallel data: reading pairs, the leak-free split, token-count batches.

Sources are a TSV file (``English<TAB>Italian``, any line ending), a JSONL file (``en``
and ``it`` fields, or ``translation: {en, it}``), or the Hugging Face ``opus_books``
en-it dataset when it is already in the local cache. The split is decided by a hash of
the English sentence, so every translation of one English sentence lands in the same
split and the split never depends on file order.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from zoo.errors import DataError

SPLITS = ("train", "validation", "test")
OPUS_BOOKS = ("opus_books", "Helsinki-NLP/opus_books")


@dataclass(frozen=True)
class SentencePair:
    en: str
    it: str


# --------------------------------------------------------------------------- reading


def read_pairs(source: str | os.PathLike, skip_bad_lines: bool = False,
               warn: Callable[[str], None] | None = None) -> list[SentencePair]:
    """Read sentence pairs from a TSV or JSONL file, or ``opus_books`` from the HF cache.

    A malformed line is an error naming its line number, or with ``skip_bad_lines`` it
    is skipped and counted in one warning passed to ``warn``. Blank lines are ignored.
    """
    path = Path(source)
    if not path.exists() and str(source) in OPUS_BOOKS:
        return read_opus_books()
    if not path.is_file():
        raise DataError(f"{path}: no such data file; give a TSV (English<TAB>Italian) or JSONL (en/it) file, or 'opus_books'")
    parse = _parse_jsonl_line if path.suffix.lower() in (".jsonl", ".json") else _parse_tsv_line
    pairs: list[SentencePair] = []
    bad: list[int] = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for number, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                pair, problem = parse(line)
                if problem is None:
                    pairs.append(pair)
                elif skip_bad_lines:
                    bad.append(number)
                else:
                    raise DataError(f"{path}:{number}: {problem}; fix the line or pass --skip-bad-lines to skip such lines")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {exc.start}); convert it to UTF-8") from None
    if bad and warn is not None:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        warn(f"skipped {len(bad)} malformed line{'s' if len(bad) > 1 else ''} in {path} (line {shown})")
    if not pairs:
        raise DataError(f"{path}: no sentence pairs found; expected lines of 'English<TAB>Italian' or JSON with en/it")
    return pairs


def _parse_tsv_line(line: str) -> tuple[SentencePair | None, str | None]:
    fields = line.split("\t")
    if len(fields) < 2:
        return None, "malformed line: expected 'English<TAB>Italian', found no tab"
    en, it = fields[0].strip(), fields[1].strip()
    if not en or not it:
        return None, f"malformed line: the {'English' if not en else 'Italian'} side is empty"
    return SentencePair(en, it), None


def _parse_jsonl_line(line: str) -> tuple[SentencePair | None, str | None]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"malformed line: invalid JSON ({exc.msg})"
    if isinstance(record, dict) and isinstance(record.get("translation"), dict):
        record = record["translation"]
    if not isinstance(record, dict):
        return None, "malformed line: expected a JSON object with 'en' and 'it' fields"
    en, it = record.get("en"), record.get("it")
    if not isinstance(en, str) or not isinstance(it, str) or not en.strip() or not it.strip():
        return None, "malformed line: expected non-empty string fields 'en' and 'it'"
    return SentencePair(en.strip(), it.strip()), None


def hf_cache_dirs() -> list[Path]:
    """Where Hugging Face keeps downloaded hub files and prepared datasets."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    datasets = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets"))
    return [hub, datasets]


def read_opus_books() -> list[SentencePair]:
    """The ``opus_books`` en-it pairs from the local Hugging Face cache (no download).

    Reads the hub snapshot's parquet files (``datasets--Helsinki-NLP--opus_books``) or the
    ``datasets`` library's prepared Arrow files, whichever is there.
    """
    hub, prepared = hf_cache_dirs()
    parquet = sorted(hub.glob("datasets--*opus_books/snapshots/*/en-it/*.parquet"))
    arrow = sorted(prepared.glob("*opus_books/en-it/*/*/*.arrow"))
    if not parquet and not arrow:
        raise DataError(f"opus_books en-it is not in the local Hugging Face cache ({hub} or {prepared}); "
                        "download it once with the datasets library or give a TSV/JSONL file")
    try:
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise DataError("reading opus_books from the cache needs pyarrow: pip install 'zoo[opus]' (or pyarrow)") from None
    pairs = []
    for file in parquet or arrow:
        if file.suffix == ".parquet":
            table = pyarrow.parquet.read_table(file, columns=["translation"])
        else:
            with pyarrow.memory_map(str(file)) as stream:
                table = pyarrow.ipc.open_stream(stream).read_all()
        for row in table.column("translation").to_pylist():
            if row and row.get("en", "").strip() and row.get("it", "").strip():
                pairs.append(SentencePair(row["en"].strip(), row["it"].strip()))
    if not pairs:
        raise DataError(f"{(parquet or arrow)[0].parent}: the cached opus_books files hold no en-it pairs")
    return pairs


# --------------------------------------------------------------------------- split


def split_key(english: str) -> str:
    """The grouping key: case and spacing variants of one English sentence stay together."""
    return " ".join(english.casefold().split())


def split_of(english: str, validation: float = 0.01, test: float = 0.02, seed: int = 0) -> str:
    """``train``, ``validation`` or ``test`` for an English sentence, from a stable hash."""
    digest = hashlib.blake2b(f"{seed}:{split_key(english)}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
    if u < test:
        return "test"
    return "validation" if u < test + validation else "train"


def split_pairs(pairs: Sequence[SentencePair], validation: float = 0.01, test: float = 0.02,
                seed: int = 0) -> dict[str, list[SentencePair]]:
    """Split pairs deterministically, keeping all translations of one English sentence together."""
    if not (0 <= validation < 1 and 0 <= test < 1 and validation + test < 1):
        raise DataError(f"split fractions validation={validation}, test={test} must be in [0, 1) and sum below 1")
    out: dict[str, list[SentencePair]] = {name: [] for name in SPLITS}
    cache: dict[str, str] = {}
    for pair in pairs:
        name = cache.get(pair.en)
        if name is None:
            name = cache[pair.en] = split_of(pair.en, validation, test, seed)
        out[name].append(pair)
    return out


def group_references(pairs: Sequence[SentencePair]) -> tuple[list[str], list[list[str]]]:
    """Unique English sources in first-seen order, each with all its Italian references."""
    refs: dict[str, list[str]] = {}
    for pair in pairs:
        refs.setdefault(pair.en, []).append(pair.it)
    return list(refs), list(refs.values())


def sample_sources(sources: Sequence[str], references: Sequence[Sequence[str]], limit: int,
                   seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """``limit`` sources (with their references) drawn at random, seeded, from the whole list,
    kept in the list's order: a fair sample of a split sorted by length, not its shortest end."""
    if limit >= len(sources):
        return list(sources), [list(refs) for refs in references]
    chosen = sorted(random.Random(seed).sample(range(len(sources)), limit))
    return [sources[i] for i in chosen], [list(references[i]) for i in chosen]


# --------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """One training batch, right-padded with ``pad_id``."""

    src: torch.Tensor  # (B, S) source tokens ending in </s>
    tgt_in: torch.Tensor  # (B, T) <s> y
    tgt_out: torch.Tensor  # (B, T) y </s>
    n_src_tokens: int
    n_tgt_tokens: int

    def to(self, device) -> "Batch":
        return Batch(self.src.to(device), self.tgt_in.to(device), self.tgt_out.to(device),
                     self.n_src_tokens, self.n_tgt_tokens)


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Right-pad integer sequences into a (B, max_len) long tensor."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), pad_id, dtype=torch.long)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


class TokenBatches:
    """Length-bucketed batches of at most ``max_tokens`` padded tokens, in a fixed order per epoch.

    Pairs are sorted by length (ties broken by a seeded shuffle), cut greedily into
    batches whose padded size ``rows × longest side`` stays under ``max_tokens``, and the
    batches are shuffled. The plan depends only on (seed, epoch), so a resumed run sees the
    same batches. With ``world`` processes, rank ``r`` takes every ``world``-th batch.
    """

    def __init__(self, src: Sequence[np.ndarray], tgt: Sequence[np.ndarray], max_tokens: int, pad_id: int,
                 seed: int = 0, rank: int = 0, world: int = 1) -> None:
        self.src, self.tgt = src, tgt
        self.max_tokens, self.pad_id, self.seed = max_tokens, pad_id, seed
        self.rank, self.world = rank, world
        self.src_len = np.fromiter((len(s) for s in src), dtype=np.int64, count=len(src))
        self.tgt_len = np.fromiter((len(t) - 1 for t in tgt), dtype=np.int64, count=len(tgt))  # tgt_in length
        longest = int(np.maximum(self.src_len, self.tgt_len).max())
        if longest > max_tokens:
            raise DataError(f"--batch-tokens {max_tokens} is smaller than the longest pair ({longest} tokens); raise it")
        self._plans: dict[int, list[np.ndarray]] = {}

    def plan(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches (arrays of pair indices) for ``epoch``."""
        if epoch not in self._plans:
            rng = np.random.default_rng([self.seed, epoch])
            tiebreak = rng.permutation(len(self.src))
            order = np.lexsort((tiebreak, self.tgt_len, self.src_len))
            width = np.maximum(self.src_len, self.tgt_len)[order]
            batches, start, longest = [], 0, 0
            for i, w in enumerate(width):
                longest = max(longest, int(w))
                if (i - start + 1) * longest > self.max_tokens:
                    batches.append(order[start:i])
                    start, longest = i, int(w)
            batches.append(order[start:])
            batches = [batches[i] for i in rng.permutation(len(batches))]
            if len(batches) < self.world:
                raise DataError(f"{len(batches)} batches cannot feed {self.world} processes; use more data or fewer --batch-tokens")
            usable = len(batches) - len(batches) % self.world
            self._plans = {epoch: batches[self.rank : usable : self.world]}
        return self._plans[epoch]

    def __len__(self) -> int:
        return len(self.plan(0))

    def collate(self, index: np.ndarray) -> Batch:
        src = [self.src[i] for i in index]
        tgt = [self.tgt[i] for i in index]
        return Batch(
            src=pad_sequences(src, self.pad_id),
            tgt_in=pad_sequences([t[:-1] for t in tgt], self.pad_id),
            tgt_out=pad_sequences([t[1:] for t in tgt], self.pad_id),
            n_src_tokens=int(sum(len(s) for s in src)),
            n_tgt_tokens=int(sum(len(t) - 1 for t in tgt)),
        )

    def iterate(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches of ``epoch`` from position ``start`` on (to resume mid-epoch)."""
        for index in self.plan(epoch)[start:]:
            yield self.collate(index)
