"""``zoo export``: a model in another format, written as a complete directory or not at all."""

from __future__ import annotations

from pathlib import Path

import click

from zoo.cli.options import WEIGHTS_HELP, load_spec_arg, model_from_args, run_weights, spec_options


@click.command()
@spec_options
@click.option("--format", "fmt", default="onnx", show_default=True, help="Export format (a registered exporter: onnx, hf).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output directory.")
@click.option("--weights", default=None, help=WEIGHTS_HELP)
@click.option("--kv-cache", is_flag=True, help="Export past key/values as inputs and present ones as outputs.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the exporter's choice).")
@click.option("--no-validate", is_flag=True, help="Skip running the exported model against PyTorch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random init when no --weights.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def export(model, overrides, fmt, output, weights, kv_cache, dtype, opset, no_validate, seed, force):
    """Export MODEL to another format; the directory appears complete or not at all.

    MODEL may be a run directory of 'zoo train' (its weights and vocabulary go along):
    zoo export RUN_DIR --format hf gives a MarianMTModel with its tokenizer."""
    from zoo.core.export import export_model

    spec = load_spec_arg(model, overrides)
    weights = run_weights(model, weights)
    net = model_from_args(spec, weights, seed=seed)
    extra = {}
    if (fmt == "onnx" or spec.is_encoder_decoder) and weights and Path(weights).is_dir():
        extra["tokenizer_dir"] = weights  # a run or Hugging Face directory: its tokenizer files go along
    manifest = export_model(net, spec, output, fmt, overwrite=force, kv_cache=kv_cache, dtype=dtype,
                            opset=opset, validate=not no_validate, **extra)
    click.echo(f"exported {spec.name} as {fmt} -> {output} ({len(manifest.get('files', {}))} files)")


COMMANDS = (export,)
