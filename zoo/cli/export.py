"""``zoo export``: a model in another format, written as a complete directory or not at all."""

from __future__ import annotations

from pathlib import Path

import click

from zoo.cli.options import WEIGHTS_HELP, load_spec_arg, model_from_args, run_weights, spec_options
from zoo.errors import ExportError


@click.command()
@spec_options
@click.option("--format", "fmt", default="onnx", show_default=True,
              help="Export format (a registered exporter: onnx, hf, web).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output directory.")
@click.option("--weights", default=None, help=WEIGHTS_HELP)
@click.option("--kv-cache", is_flag=True, help="Export past key/values as inputs and present ones as outputs.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the exporter's choice).")
@click.option("--quantize", default=None, metavar="int4|int8",
              help="onnx: store the weights quantized (weight-only, ONNX Runtime's MatMulNBits), the LM head "
                   "and embedding table included.")
@click.option("--block-size", type=int, default=None,
              help="With --quantize: weights per quantization block (a power of two >= 16 dividing the hidden "
                   "size; default 128, or the largest that divides).")
@click.option("--variants", default=None, metavar="fp32,fp16,q4,int8",
              help="web: the precisions to write, as transformers.js names them (default fp32,q4).")
@click.option("--adapter", is_flag=True, help="MODEL is a LoRA run (zoo train --lora) and --format hf: export its "
              "frozen base, with the adapter in OUTPUT/adapter as a PEFT folder "
              "(PeftModel.from_pretrained(base, OUTPUT/adapter)).")
@click.option("--no-validate", is_flag=True, help="Skip running the exported model against PyTorch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random init when no --weights.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def export(model, overrides, fmt, output, weights, kv_cache, dtype, opset, quantize, block_size, variants, adapter,
           no_validate, seed, force):
    """Export MODEL to another format; the directory appears complete or not at all.

    MODEL may be a run directory of 'zoo train' (its weights and vocabulary go along):
    zoo export RUN_DIR --format hf gives a MarianMTModel with its tokenizer."""
    from zoo.core.export import export_model

    spec = load_spec_arg(model, overrides)
    extra = quantize_options(fmt, quantize, block_size, spec, dtype)
    extra.update(web_options(fmt, variants, block_size, spec))
    weights = run_weights(model, weights)
    if adapter:
        weights = adapter_base(model, fmt, weights)
        extra["adapter_run"] = model
    net = model_from_args(spec, weights, seed=seed)
    if weights and Path(weights).is_dir():
        extra["tokenizer_dir"] = weights  # a run or Hugging Face directory: its tokenizer files go along
    manifest = export_model(net, spec, output, fmt, overwrite=force, kv_cache=kv_cache, dtype=dtype,
                            opset=opset, validate=not no_validate, **extra)
    click.echo(f"exported {spec.name} as {fmt} -> {output} ({len(manifest.get('files', {}))} files)")


def adapter_base(model: str, fmt: str, weights: str | None) -> str:
    """``--adapter``: the frozen base of LoRA run ``model``, checked before any work."""
    from zoo.core.adapters import lora_record
    from zoo.core.files import BASE

    if fmt != "hf":
        raise ExportError(f"--adapter writes a PEFT adapter for a Hugging Face base; use --format hf, not {fmt}")
    if weights is not None and Path(weights) != Path(model):
        raise ExportError("--adapter exports the run's own base and adapter; leave --weights out")
    if not Path(model).is_dir() or lora_record(Path(model)) is None:
        raise ExportError(f"--adapter needs a LoRA run directory (zoo train ... --lora RANK -o RUN); {model} is not one")
    return str(Path(model) / (lora_record(Path(model)).get("base") or BASE))


def quantize_options(fmt: str, quantize: str | None, block_size: int | None, spec, dtype: str) -> dict:
    """The exporter's quantization options, checked before the model is built."""
    if quantize is None and block_size is None:
        return {}
    if fmt == "web" and quantize is None:
        return {}  # --block-size for the web's quantized variants: web_options
    if fmt == "web":
        raise ExportError("--format web names its precisions with --variants (q4, int8, fp16, fp32), not --quantize")
    if fmt != "onnx":
        raise ExportError(f"--quantize and --block-size apply to --format onnx, not {fmt}")
    from zoo.exporters.onnx.quantize import quantize_settings

    quantize_settings(quantize, block_size, spec, dtype)  # one-line errors before any work
    return {"quantize": quantize, "block_size": block_size}


def web_options(fmt: str, variants: str | None, block_size: int | None, spec) -> dict:
    """``--variants`` (and ``--block-size``) of ``--format web``, checked before the model is built."""
    if fmt != "web":
        if variants is not None:
            raise ExportError(f"--variants applies to --format web, not {fmt}")
        return {}
    from zoo.exporters.onnx.quantize import quantize_settings
    from zoo.exporters.web.folder import VARIANTS, parse_variants

    names = parse_variants(variants)
    quantized = [VARIANTS[n].quantize for n in names if VARIANTS[n].quantize]
    if block_size is not None and not quantized:
        raise ExportError("--block-size applies to the quantized web variants (q4, int8); none is listed in --variants")
    for scheme in quantized:
        quantize_settings(scheme, block_size, spec)  # one-line errors before any work
    return {"variants": names, **({"block_size": block_size} if block_size is not None else {})}


COMMANDS = (export,)
