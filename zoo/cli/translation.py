"""``zoo translate``: English-Italian translators (``zoo evaluate`` scores them: zoo/cli/training.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from zoo.errors import ZooError
from zoo.translation.decoding import DEFAULT_BEAM, DEFAULT_LENGTH_PENALTY


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
