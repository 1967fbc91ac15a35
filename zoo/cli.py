"""The ``zoo`` command line: one short function per command, each calling the Python API.

Heavy imports (torch, transformers, onnx) happen inside the commands, so ``zoo --help``
stays fast. Every :class:`zoo.errors.ZooError` is printed as one line on stderr with a
non-zero exit and no traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from zoo.errors import ZooError


class ZooGroup(click.Group):
    """Turns zoo's user errors into one line on stderr and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ZooError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was left half-written", err=True)
            sys.exit(130)


class OverrideType(click.ParamType):
    """``PATH=VALUE`` for ``--set``; the value is parsed as YAML (``4``, ``true``, ``rotary``)."""

    name = "PATH=VALUE"

    def convert(self, value, param, ctx):
        from zoo.spec import parse_override

        try:
            return parse_override(value)
        except ZooError as exc:
            self.fail(str(exc), param, ctx)


def spec_options(func):
    """``MODEL`` argument (registry name or spec file) plus repeatable ``--set``."""
    func = click.option("--set", "overrides", multiple=True, type=OverrideType(),
                        help="Override a spec field, e.g. --set attention.n_kv_heads=4 (repeatable).")(func)
    return click.argument("model")(func)


def load_spec_arg(model: str, overrides) -> "ModelSpec":  # noqa: F821
    from zoo.spec import load_spec

    return load_spec(model, dict(overrides) or None)


@click.group(cls=ZooGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plugin", "plugins", multiple=True, metavar="PATH_OR_MODULE",
              help="Load a local plugin file or module (repeatable; also ZOO_PLUGINS).")
@click.version_option(package_name="zoo")
def cli(plugins):
    """zoo: assemble, check and ship transformer models."""
    from zoo.registry import use_local_plugins

    use_local_plugins(plugins)


@cli.command("list")
def list_cmd():
    """List the models in the registry."""
    from zoo.builder import assemble, count_parameters
    from zoo.spec import list_models, load_spec

    rows = []
    for name in list_models():
        spec = load_spec(name)
        rows.append((name, spec.family, f"{count_parameters(assemble(spec)):,}", spec.description))
    _table(("model", "family", "parameters", "description"), rows)


@cli.command()
def plugins():
    """List every registered component by kind, with where it came from."""
    from zoo.registry import get_registry

    rows = [(e.kind, e.name, _qualname(e.component), e.origin) for e in get_registry().entries()]
    _table(("kind", "name", "class", "origin"), rows)


@cli.command()
@spec_options
def describe(model, overrides):
    """Print the resolved spec and a parameter table, without allocating weights."""
    from zoo.builder import parameter_table

    spec = load_spec_arg(model, overrides)
    click.echo(spec.to_yaml().rstrip())
    click.echo()
    rows = parameter_table(spec)
    total = sum(r.count for r in rows)
    _table(("part", "plugin", "parameters", "share"),
           [(r.part, r.plugin, f"{r.count:,}", f"{100 * r.count / total:.1f}%") for r in rows]
           + [("total", "", f"{total:,}", "100.0%")])


@cli.command()
@spec_options
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory to write model.safetensors, spec.yaml and manifest.json into.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for initialisation.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def build(model, overrides, output, seed, dtype, force):
    """Assemble MODEL (a registry name or spec file) and write it to a directory."""
    import torch

    from zoo.builder import build as build_model
    from zoo.checkpoint import save_model

    spec = load_spec_arg(model, overrides)
    net = build_model(spec, seed=seed, dtype=getattr(torch, dtype))
    manifest = save_model(net, spec, output, overwrite=force)
    click.echo(f"built {spec.name}: {manifest['parameters']:,} parameters ({manifest['dtype']}) -> {output}")


@cli.command()
@spec_options
@click.option("--format", "fmt", default="onnx", show_default=True, help="Export format (a registered exporter: onnx, hf).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output directory.")
@click.option("--weights", default=None, help="'hf' (the spec's hub id), a hub id, a Hugging Face directory or a zoo model directory; default: random init.")
@click.option("--kv-cache", is_flag=True, help="Export past key/values as inputs and present ones as outputs.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the exporter's choice).")
@click.option("--no-validate", is_flag=True, help="Skip running the exported model against PyTorch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random init when no --weights.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def export(model, overrides, fmt, output, weights, kv_cache, dtype, opset, no_validate, seed, force):
    """Export MODEL to another format; the directory appears complete or not at all."""
    from zoo.export import export_model

    spec = load_spec_arg(model, overrides)
    net = model_from_args(spec, weights, seed=seed)
    manifest = export_model(net, spec, output, fmt, overwrite=force, kv_cache=kv_cache, dtype=dtype,
                            opset=opset, validate=not no_validate)
    click.echo(f"exported {spec.name} as {fmt} -> {output} ({len(manifest.get('files', {}))} files)")


def model_from_args(spec, weights: str | None, seed: int = 0, device: str = "cpu", dtype=None):
    """The model a command works on: weights from ``--weights`` or a seeded random init."""
    import torch

    if weights:
        from zoo.weights import load_weights

        return load_weights(spec, weights, device=device, dtype=dtype or torch.float32)
    from zoo.builder import build as build_model

    return build_model(spec, seed=seed, device=device, dtype=dtype or torch.float32)


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _table(header, rows) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(line.format(*header).rstrip())
    click.echo(line.format(*("-" * w for w in widths)).rstrip())
    for row in rows:
        click.echo(line.format(*row).rstrip())


def main() -> None:
    cli(prog_name="zoo")


if __name__ == "__main__":
    main()
