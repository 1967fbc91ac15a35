"""``zoo bench``: prefill, decode, export and build timings against Hugging Face and the machine."""

from __future__ import annotations

from pathlib import Path

import click

from zoo.cli.options import spec_options


@click.command()
@spec_options
@click.option("--runtime", "runtimes", default="torch,onnxruntime,hf", show_default=True,
              help="Comma-separated runtimes to measure: torch, torch-bf16 (the same weights in bfloat16, with its "
                   "accuracy against fp32), onnxruntime, onnxruntime-int8, onnxruntime-int4 (weight-only quantized "
                   "exports), hf.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for PyTorch and ONNX Runtime (default: every core this process may use).")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed runs per figure (median, min and max are reported).")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True, help="Untimed runs first.")
@click.option("--new-tokens", type=click.IntRange(min=2), default=32, show_default=True,
              help="Tokens generated per decode run.")
@click.option("--tiny", is_flag=True, help="A tiny model and small ceilings: checks the harness in seconds.")
@click.option("--skip-xl", is_flag=True,
              help="Skip building gpt2-xl from a 6.2 GB safetensors file (written to a temp dir, deleted after).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report as JSON here and a PNG chart beside it.")
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the PNG chart (default: the JSON path with .png).")
def bench(model, overrides, runtimes, device, threads, repeats, warmup, new_tokens, tiny, skip_xl, output, chart):
    """Measure MODEL's prefill, decode, ONNX export and gpt2-xl build against Hugging Face and the machine's ceilings."""
    from zoo.bench.options import BenchOptions
    from zoo.bench.run import run_bench
    from zoo.bench.report import render, write_chart, write_json

    options = BenchOptions(model=model, overrides=dict(overrides), device=device, threads=threads,
                           runtimes=tuple(r.strip() for r in runtimes.split(",") if r.strip()), repeats=repeats,
                           warmup=warmup, new_tokens=new_tokens, tiny=tiny, skip_xl=skip_xl)
    report = run_bench(options)
    click.echo(render(report))
    chart = chart or (output.with_suffix(".png") if output else None)
    if output:
        write_json(report, output)
    if chart:
        write_chart(report, chart)
    if output or chart:
        click.echo("wrote " + " and ".join(str(p) for p in (output, chart) if p))


COMMANDS = (bench,)
