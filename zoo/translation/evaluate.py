"""Translation quality: sacrebleu BLEU and chrF, character and word error rates, sample files.

Each unique English source of a split is translated once. Scores are given two ways:

- *single reference* (the headline): every pair of the split is a hypothesis-reference
  pair with one reference, as a line-by-line scorer and published single-reference
  figures see it (sacrebleu signature ``nrefs:1``);
- *multi-reference*: each source once, against *all* Italian translations of it in the
  split (``nrefs:var``; CER/WER against the closest reference). Higher, since a hypothesis
  may match any of the references; not comparable with single-reference figures.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple, Sequence

from sacrebleu.metrics import BLEU, CHRF

from zoo.core.files import atomic_file
from zoo.translation.decoding import DEFAULT_BEAM, DEFAULT_LENGTH_PENALTY


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
    """Corpus scores in percent (BLEU, chrF, CER, WER), with sacrebleu's signatures of the two
    sacrebleu metrics (what a published figure must match to be comparable)."""

    bleu: float
    chrf: float
    cer: float
    wer: float
    bleu_signature: str
    chrf_signature: str

    def line(self) -> str:
        return f"BLEU {self.bleu:5.2f}  chrF {self.chrf:5.2f}  CER {self.cer:5.2f}%  WER {self.wer:5.2f}%"


class ScoreViews(NamedTuple):
    """The two views of one set of hypotheses; see the module docstring.

    ``single_reference`` is the headline. The tuple order (multi first) is the one
    ``score(...)[0]`` callers have always read.
    """

    multi_reference: Scores
    single_reference: Scores


def _scores(hypotheses: list[str], streams: list[list[str | None]], cer: float, wer: float) -> Scores:
    """sacrebleu's corpus BLEU and chrF of ``hypotheses`` against reference ``streams``, with the error rates."""
    bleu, chrf = BLEU(), CHRF()
    return Scores(bleu.corpus_score(hypotheses, streams).score, chrf.corpus_score(hypotheses, streams).score, cer, wer,
                  str(bleu.get_signature()), str(chrf.get_signature()))


def score(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> ScoreViews:
    """Scores of one hypothesis per source against that source's references, both views."""
    width = max(len(refs) for refs in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    pair_hyps = [h for h, refs in zip(hypotheses, references) for _ in refs]
    pair_refs = [r for refs in references for r in refs]
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
    return ScoreViews(_scores(list(hypotheses), streams, rate(c[0], c[1]), rate(w[0], w[1])),
                      _scores(pair_hyps, [pair_refs], rate(c[2], c[3]), rate(w[2], w[3])))


@dataclass
class Evaluation:
    """The outcome of translating and scoring one set of sources (a split, or a user's file)."""

    name: str  # the split, or a data file's stem: names the output files
    data: str  # the pairs file (or dataset) read
    split: str | None  # None: all of the file's pairs
    limit: int | None  # --limit: sources sampled (seeded) from the whole split
    seed: int | None  # the sample's seed
    decoding: str
    sources: int
    pairs: int
    single_reference: Scores  # the headline: every pair on its own, one reference each
    multi_reference: Scores  # each source once, against all its references
    seconds: float
    sentences_per_second: float

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(translator, sources: Sequence[str], references: Sequence[Sequence[str]], name: str, *,
             data: str = "", split: str | None = None, limit: int | None = None, seed: int | None = None,
             beam: int = DEFAULT_BEAM, alpha: float = DEFAULT_LENGTH_PENALTY, batch_size: int = 64,
             progress: bool = False) -> tuple[Evaluation, list[str]]:
    """Translate ``sources`` and score them; returns the evaluation and the hypotheses."""
    start = time.perf_counter()
    hypotheses = translator.translate(sources, beam=beam, alpha=alpha, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - start
    views = score(hypotheses, references)
    decoding = "greedy" if beam == 1 else f"beam{beam}"
    result = Evaluation(name, data, split, limit, seed, decoding, len(sources), sum(len(r) for r in references),
                        views.single_reference, views.multi_reference,
                        round(seconds, 2), round(len(sources) / max(seconds, 1e-9), 2))
    return result, hypotheses


def report(result: Evaluation) -> list[str]:
    """The lines ``zoo evaluate`` prints: the single-reference headline with sacrebleu's
    signatures first, then the multi-reference view."""
    single, multi = result.single_reference, result.multi_reference
    nrefs = multi.bleu_signature.split("|")[0]
    return [f"  BLEU {single.bleu:5.2f}  {single.bleu_signature}",
            f"  chrF {single.chrf:5.2f}  {single.chrf_signature}",
            f"  CER  {single.cer:5.2f}%  WER {single.wer:5.2f}%  (every pair, one reference each)",
            f"  multi-reference ({nrefs}, each source against all its translations): {multi.line()}"]


def write_evaluation(out_dir: str | os.PathLike, result: Evaluation, sources: Sequence[str],
                     hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[Path, Path]:
    """Write ``{name}-{decoding}.tsv`` (source, hypothesis, references) and the scores as JSON."""
    out_dir = Path(out_dir)
    stem = f"{result.name}-{result.decoding}"
    samples, metrics = out_dir / f"{stem}.tsv", out_dir / f"{stem}.json"
    lines = ["source\thypothesis\treferences"]
    lines += ["\t".join([src, hyp, *refs]) for src, hyp, refs in zip(sources, hypotheses, references)]
    with atomic_file(samples) as f:
        f.write(("\n".join(lines) + "\n").encode("utf-8"))
    with atomic_file(metrics) as f:
        f.write((json.dumps(result.to_dict(), indent=2) + "\n").encode("utf-8"))
    return samples, metrics


@dataclass
class RunEvaluation:
    """What :func:`evaluate_run` scored and wrote: the scores, and every translation beside its references."""

    result: Evaluation
    where: str  # what was read, in words
    total: int  # English sources in the split or file (more than result.sources with a limit)
    sources: list[str]
    hypotheses: list[str]
    references: list[list[str]]
    path: Path  # the scores, as JSON
    tsv: Path  # the translations beside their references


def evaluate_run(run_dir: str | os.PathLike, *, split: str = "test", data: str | os.PathLike | None = None,
                 beam: int = DEFAULT_BEAM, alpha: float = DEFAULT_LENGTH_PENALTY, limit: int | None = None,
                 seed: int = 0, batch_size: int = 64, device: str = "cpu", skip_bad_lines: bool = False,
                 onnx_dir: str | os.PathLike | None = None, progress: bool = True,
                 warn=lambda message: print(f"warning: {message}", file=sys.stderr)) -> RunEvaluation:
    """Translate a split of translation run ``run_dir``'s data (or all pairs of ``data``) and
    score it; ``limit`` samples that many English sources (``seed``) across it; ``onnx_dir``
    translates with that ONNX export of the run in ONNX Runtime. Writes
    ``run_dir/eval/NAME-DECODING.tsv`` and ``.json``."""
    from zoo.errors import DataError
    from zoo.training.config import TrainConfig
    from zoo.training.resume import data_source
    from zoo.translation.data import group_references, read_pairs, sample_sources, split_pairs
    from zoo.translation.search import load_translator

    run_dir = Path(run_dir)
    config = TrainConfig.load(run_dir)
    if config.task != "translation":
        raise DataError(f"{run_dir} is a {config.task} run; this scores translation runs")
    translator = load_translator(onnx_dir, "onnxruntime", device) if onnx_dir else load_translator(run_dir, "torch", device)
    if data is not None:
        data = Path(data)
        chosen, name, split, where = read_pairs(data, skip_bad_lines, warn), data.stem, None, str(data)
    else:
        pairs = read_pairs(config.data, config.skip_bad_lines or skip_bad_lines, warn)
        chosen = split_pairs(pairs, config.validation_fraction, config.test_fraction, config.split_seed)[split]
        name, where = split, f"the {split} split of {config.data}"
    sources, references = group_references(chosen)
    if not sources:
        raise DataError(f"{where} is empty; evaluate another split or give --data FILE")
    total = len(sources)
    if limit:
        sources, references = sample_sources(sources, references, limit, seed)
    result, hypotheses = evaluate(translator, sources, references, name,
                                  data=data_source(str(data)) if data is not None else config.data, split=split,
                                  limit=limit, seed=seed if limit else None, beam=beam, alpha=alpha,
                                  batch_size=batch_size, progress=progress)
    if onnx_dir:
        result = replace(result, decoding=f"{result.decoding}-onnx-{Path(onnx_dir).resolve().name}")
    tsv, path = write_evaluation(run_dir / "eval", result, sources, hypotheses, references)
    return RunEvaluation(result, where, total, list(sources), hypotheses, [list(r) for r in references], path, tsv)
