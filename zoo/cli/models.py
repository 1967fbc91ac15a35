"""``zoo list``, ``zoo plugins``, ``zoo describe`` and ``zoo build``: the catalog, the
component registry, a spec's parameters, and a model written to a directory."""

from __future__ import annotations

import os
from pathlib import Path

import click

from zoo.cli.options import WEIGHTS_HELP, print_table, run_weights, load_spec_arg, model_from_args, spec_options

MODELS_HOME = "ZOO_HOME"  # zoo build writes to $ZOO_HOME/models/NAME, else ./models/NAME


def default_output(name: str) -> Path:
    """Where ``zoo build`` writes without ``-o``: ``$ZOO_HOME/models/NAME``, else ``./models/NAME``."""
    home = os.environ.get(MODELS_HOME, "").strip()
    return Path(home or ".") / "models" / Path(name).name


@click.command("list")
@click.option("--parameters", is_flag=True, help="Add each model's parameter count (assembles each on the meta device, importing torch).")
def list_cmd(parameters):
    """List the models in the catalog: registry.yaml, then the files in ZOO_CATALOG."""
    from zoo.core.catalog import catalog

    entries = catalog()
    if not parameters:
        print_table(("model", "family", "description"), [(e.name, e.family, e.description) for e in entries])
        return
    from zoo.core.limits import model_size
    from zoo.core.spec import load_spec

    print_table(("model", "family", "parameters", "description"),
           [(e.name, e.family, f"{model_size(load_spec(e.name)).parameters:,}", e.description) for e in entries])


@click.command()
def plugins():
    """List every registered component by kind, with where it came from."""
    from zoo.core.registry import get_registry

    rows = [(e.kind, e.name, _qualname(e.component), e.origin) for e in get_registry().entries()]
    print_table(("kind", "name", "class", "origin"), rows)


@click.command()
@spec_options
def describe(model, overrides):
    """Print the resolved spec and a parameter table, without allocating weights."""
    from zoo.core.limits import EXACT_LAYERS, parameter_rows

    spec = load_spec_arg(model, overrides)
    rows, exact = parameter_rows(spec)
    click.echo(spec.to_yaml().rstrip())
    click.echo()
    total = sum(r.count for r in rows)
    print_table(("part", "plugin", "parameters", "share"),
           [(r.part, r.plugin, f"{r.count:,}", f"{100 * r.count / total:.1f}%") for r in rows]
           + [("total", "", f"{total:,}", "100.0%")])
    if not exact:
        click.echo(f"(more than {EXACT_LAYERS} layers: counts extrapolated from 1- and 2-layer assemblies)")


@click.command()
@spec_options
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory to write model.safetensors, spec.yaml and manifest.json into "
                   f"(default: ./models/NAME, or ${MODELS_HOME}/models/NAME when {MODELS_HOME} is set).")
@click.option("--weights", default=None, help=WEIGHTS_HELP)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for initialisation.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
def build(model, overrides, output, weights, seed, dtype, force):
    """Assemble MODEL (a catalog name or spec file) and write it to a directory."""
    import torch

    from zoo.core.model_dir import save_model

    spec = load_spec_arg(model, overrides)
    weights = run_weights(model, weights)
    output = output or default_output(spec.name)
    net = model_from_args(spec, weights, seed=seed, dtype=getattr(torch, dtype))
    manifest = save_model(net, spec, output, overwrite=force)
    source = f"weights from {weights}" if weights else f"random init, seed {seed}"
    click.echo(f"built {spec.name}: {manifest['parameters']:,} parameters ({manifest['dtype']}, {source}) -> {output}")


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


COMMANDS = (list_cmd, plugins, describe, build)
