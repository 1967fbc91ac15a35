"""``zoo export``: a model in another format, written as a complete directory or not at all."""

from __future__ import annotations

from pathlib import Path

import click

from zoo.cli.options import WEIGHTS_HELP, load_spec_arg, model_from_args, run_weights, spec_options
from zoo.errors import ExportError


class ExportCommand(click.Command):
    """``zoo export`` with the options every registered exporter declares (read when the
    command runs, after ``--plugin`` loaded any third-party format)."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        help_option = self.get_help_option(ctx)
        return [p for p in params if p is not help_option] + exporter_params() + ([help_option] if help_option else [])


def exporter_params() -> list[click.Option]:
    """One click option per declared exporter option, merged by name across formats."""
    from zoo.core.export import declared_options
    from zoo.core.registry import get_registry

    registry = get_registry()
    found: dict[str, tuple] = {}
    for fmt in registry.names("exporter"):
        for option in declared_options(registry.get("exporter", fmt)) or ():
            if option.command_line:
                first, formats = found.get(option.name, (option, []))
                found[option.name] = (first, [*formats, fmt])
    params = []
    for option, formats in found.values():
        kind = option.type
        extra = {"is_flag": True, "default": False} if kind is bool else {  # choices: checked in one line later
            "type": str if isinstance(kind, tuple) else kind, "default": None,
            "metavar": option.metavar or ("|".join(kind) if isinstance(kind, tuple) else None)}
        default = "" if option.default in (None, False) else f" [default: {option.default}]"
        params.append(click.Option([option.flag, option.name], help=f"{', '.join(formats)}: {option.help}{default}",
                                   **extra))
    return params


@click.command(cls=ExportCommand)
@spec_options
@click.option("--format", "fmt", default="onnx", show_default=True,
              help="Export format (a registered exporter: onnx, hf, web, or a plugin's). Each format's own options "
                   "follow, marked with the formats that take them.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output directory.")
@click.option("--weights", default=None, help=WEIGHTS_HELP)
@click.option("--adapter", is_flag=True, help="MODEL is a LoRA run (zoo train --lora) and --format hf: export its "
              "frozen base, with the adapter in OUTPUT/adapter as a PEFT folder "
              "(PeftModel.from_pretrained(base, OUTPUT/adapter)).")
@click.option("--no-verify", is_flag=True, help="Skip running the exported model against PyTorch.")
@click.option("--no-validate", is_flag=True, hidden=True)  # the former spelling of --no-verify, still accepted
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random init when no --weights.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.pass_context
def export(ctx, model, overrides, fmt, output, weights, adapter, no_verify, no_validate, seed, force,
           **format_options):
    """Export MODEL to another format; the directory appears complete or not at all.

    MODEL may be a run directory of 'zoo train' (its weights and vocabulary go along):
    zoo export RUN_DIR --format hf gives a MarianMTModel with its tokenizer."""
    from zoo.core.export import export_model, export_options

    spec = load_spec_arg(model, overrides)
    given = {name: value for name, value in format_options.items()
             if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
    weights = run_weights(model, weights)
    if adapter:
        weights = adapter_base(model, fmt, weights)
        given["adapter_run"] = model
    export_options(fmt, spec, given)  # one-line errors before the model is built
    net = model_from_args(spec, weights, seed=seed)
    if weights and Path(weights).is_dir():
        given["tokenizer_dir"] = weights  # a run or Hugging Face directory: its tokenizer files go along
    manifest = export_model(net, spec, output, fmt, overwrite=force, verify=not (no_verify or no_validate), **given)
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


COMMANDS = (export,)
