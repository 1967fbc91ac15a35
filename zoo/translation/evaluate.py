"""Translation quality: sacrebleu BLEU and chrF, character and word error rates, sample files.

Each unique English source of a split is translated once. Scores are given two ways:
against *all* Italian translations of that source in the split (multi-reference BLEU and
chrF; CER/WER against the closest reference), and *per pair*, where every line of the
split is a hypothesis-reference pair with one reference, as a line-by-line scorer sees it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from sacrebleu.metrics import BLEU, CHRF

from zoo.core.files import atomic_file


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


@dataclass
class Scores:
    """Corpus scores in percent (BLEU, chrF, CER, WER)."""

    bleu: float
    chrf: float
    cer: float
    wer: float

    def line(self) -> str:
        return f"BLEU {self.bleu:5.2f}  chrF {self.chrf:5.2f}  CER {self.cer:5.2f}%  WER {self.wer:5.2f}%"


def score(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[Scores, Scores]:
    """Scores of one hypothesis per source against that source's references.

    Returns ``(all_references, per_pair)``; see the module docstring for the two views.
    """
    width = max(len(refs) for refs in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    multi_bleu = BLEU().corpus_score(list(hypotheses), streams).score
    multi_chrf = CHRF().corpus_score(list(hypotheses), streams).score
    pair_hyps = [h for h, refs in zip(hypotheses, references) for _ in refs]
    pair_refs = [r for refs in references for r in refs]
    pair_bleu = BLEU().corpus_score(pair_hyps, [pair_refs]).score
    pair_chrf = CHRF().corpus_score(pair_hyps, [pair_refs]).score
    errors = {"char": [0, 0, 0, 0], "word": [0, 0, 0, 0]}  # closest edits, closest length, pair edits, pair length
    for hyp, refs in zip(hypotheses, references):
        for unit, split in (("char", list), ("word", str.split)):
            h = split(hyp)
            distances = [(edit_distance(h, split(r)), len(split(r))) for r in refs]
            closest = min(distances, key=lambda d: d[0] / max(d[1], 1))
            totals = errors[unit]
            totals[0] += closest[0]
            totals[1] += closest[1]
            totals[2] += sum(d for d, _ in distances)
            totals[3] += sum(n for _, n in distances)

    def rate(edits: int, length: int) -> float:
        return 100.0 * edits / max(length, 1)

    c, w = errors["char"], errors["word"]
    return (Scores(multi_bleu, multi_chrf, rate(c[0], c[1]), rate(w[0], w[1])),
            Scores(pair_bleu, pair_chrf, rate(c[2], c[3]), rate(w[2], w[3])))


@dataclass
class Evaluation:
    """The outcome of translating and scoring one split."""

    split: str
    decoding: str
    sources: int
    pairs: int
    all_references: Scores
    per_pair: Scores
    seconds: float
    sentences_per_second: float

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(translator, sources: Sequence[str], references: Sequence[Sequence[str]], split: str,
             beam: int = 1, alpha: float = 0.6, batch_size: int = 64,
             progress: bool = False) -> tuple[Evaluation, list[str]]:
    """Translate ``sources`` and score them; returns the evaluation and the hypotheses."""
    start = time.perf_counter()
    hypotheses = translator.translate(sources, beam=beam, alpha=alpha, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - start
    multi, pair = score(hypotheses, references)
    decoding = "greedy" if beam == 1 else f"beam{beam}"
    result = Evaluation(split, decoding, len(sources), sum(len(r) for r in references), multi, pair,
                        round(seconds, 2), round(len(sources) / max(seconds, 1e-9), 2))
    return result, hypotheses


def write_evaluation(out_dir: str | os.PathLike, result: Evaluation, sources: Sequence[str],
                     hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[Path, Path]:
    """Write ``{split}-{decoding}.tsv`` (source, hypothesis, references) and the scores as JSON."""
    out_dir = Path(out_dir)
    stem = f"{result.split}-{result.decoding}"
    samples, metrics = out_dir / f"{stem}.tsv", out_dir / f"{stem}.json"
    lines = ["source\thypothesis\treferences"]
    lines += ["\t".join([src, hyp, *refs]) for src, hyp, refs in zip(sources, hypotheses, references)]
    with atomic_file(samples) as f:
        f.write(("\n".join(lines) + "\n").encode("utf-8"))
    with atomic_file(metrics) as f:
        f.write((json.dumps(result.to_dict(), indent=2) + "\n").encode("utf-8"))
    return samples, metrics
