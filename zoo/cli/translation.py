"""``zoo translate``, and ``zoo evaluate`` for translation runs: English-Italian translators."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from zoo.errors import ZooError
from zoo.translation.decoding import DEFAULT_BEAM, DEFAULT_LENGTH_PENALTY


def evaluate_translation(run_dir: Path, config, split: str, data: Path | None, batch_size: int, device: str, *,
                         given: set[str], beam: int, alpha: float, limit: int | None, seed: int, samples: int,
                         skip_bad_lines: bool, onnx_dir: Path | None) -> None:
    """``zoo evaluate RUN_DIR`` for a translation run: translate a split (or --data FILE) and report the scores."""
    from zoo.translation.data import group_references, read_pairs, sample_sources, split_pairs
    from zoo.translation.evaluate import evaluate as evaluate_sources, report, write_evaluation
    from zoo.training.resume import data_source
    from zoo.translation.search import load_translator

    if data is not None and "split" in given:
        raise click.UsageError("--split chooses a split of the run's data; --data FILE scores all of FILE: give one")
    translator = load_translator(onnx_dir, "onnxruntime", device) if onnx_dir else load_translator(run_dir, "torch", device)
    warn = lambda message: click.echo(f"warning: {message}", err=True)  # noqa: E731
    if data is not None:
        chosen, name, split, where = read_pairs(data, skip_bad_lines, warn), data.stem, None, str(data)
    else:
        pairs = read_pairs(config.data, config.skip_bad_lines or skip_bad_lines, warn)
        chosen = split_pairs(pairs, config.validation_fraction, config.test_fraction, config.split_seed)[split]
        name, where = split, f"the {split} split of {config.data}"
    sources, references = group_references(chosen)
    if not sources:
        raise ZooError(f"{where} is empty; evaluate another split or give --data FILE")
    total = len(sources)
    if limit:
        sources, references = sample_sources(sources, references, limit, seed)
    result, hypotheses = evaluate_sources(translator, sources, references, name,
                                          data=data_source(data) if data else config.data,
                                          split=split, limit=limit, seed=seed if limit else None, beam=beam,
                                          alpha=alpha, batch_size=batch_size, progress=True)
    if onnx_dir:
        result = dataclasses.replace(result, decoding=f"{result.decoding}-onnx-{onnx_dir.resolve().name}")
    tsv, _ = write_evaluation(run_dir / "eval", result, sources, hypotheses, references)
    sampled = f" (sampled from {total:,}, seed {seed})" if len(sources) < total else ""
    click.echo(f"{where}: {result.sources:,} English sources{sampled}, {result.pairs:,} pairs, {result.decoding}, "
               f"{result.sentences_per_second:.1f} sentences/s")
    for line in report(result):
        click.echo(line)
    for src, hyp, refs in list(zip(sources, hypotheses, references))[:samples]:
        click.echo(f"  EN  {src}\n  MT  {hyp}\n  REF {refs[0]}" + (f"  (+{len(refs) - 1} more)" if len(refs) > 1 else ""))
    click.echo(f"translations next to their references: {tsv}")


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.argument("sentences", nargs=-1)
@click.option("--beam", type=click.IntRange(min=1), default=DEFAULT_BEAM, show_default=True, help="Beam size; 1 is greedy.")
@click.option("--length-penalty", "alpha", type=click.FloatRange(min=0), default=DEFAULT_LENGTH_PENALTY, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--runtime", default="torch", show_default=True,
              help="torch: DIRECTORY is a run directory; onnxruntime (or another registered runtime): an exported "
                   "directory holding tokenizer.json.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def translate(directory, sentences, beam, alpha, batch_size, runtime, device):
    """Translate English SENTENCES (or stdin, one per line) into Italian, one line each."""
    from zoo.translation.search import load_translator

    translator = load_translator(directory, runtime, device)
    lines = list(sentences) if sentences and sentences != ("-",) else [line.rstrip("\r\n") for line in sys.stdin]
    todo = [i for i, line in enumerate(lines) if line.strip()]
    if not todo:
        raise ZooError("no sentences to translate; give them as arguments or one per line on stdin")
    out = [""] * len(lines)
    for i, text in zip(todo, translator.translate([lines[i].strip() for i in todo], beam=beam, alpha=alpha,
                                                  batch_size=batch_size)):
        out[i] = text
    for text in out:
        click.echo(text)


COMMANDS = (translate,)
