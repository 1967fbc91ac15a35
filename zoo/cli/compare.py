"""``zoo compare``: training runs on the same data side by side, as a table and as curves."""

from __future__ import annotations

from pathlib import Path

import click

from zoo.cli.options import print_table


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw validation loss against training time and tokens seen into this file "
                   "(.png, .svg, .pdf, ...).")
def compare(runs, output):
    """Compare training RUNS (directories made by zoo train) on the same data: size, tokens
    seen, speed and validation results, one row per run."""
    from zoo.training.compare import check_picture_path, compare as compare_runs, draw, note, table_rows

    if output is not None:
        check_picture_path(output)
    summaries = compare_runs(runs)
    print_table(*table_rows(summaries))
    if line := note(summaries):
        click.echo(line)
    if output is not None:
        click.echo(f"wrote {draw(summaries, output)}")


COMMANDS = (compare,)
