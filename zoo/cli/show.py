"""``zoo show``: pictures of positional encodings, attention maps and model structure."""

from __future__ import annotations

from pathlib import Path

import click

from zoo.cli.options import OverrideType, load_spec_arg, model_from_args, run_weights, spec_options


@click.group()
def show():
    """Draw pictures, PNG or SVG: positional encodings, attention maps, model structure."""


def picture_output(default: str):
    """``-o/--output`` (a .png or .svg file) and ``--dpi`` for the ``zoo show`` commands."""
    def decorate(func):
        func = click.option("--dpi", type=click.IntRange(min=20, max=600), default=100, show_default=True,
                            help="Pixels per inch of a PNG.")(func)
        return click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
                            help=f"Picture to write, *.png or *.svg (default: {default}).")(func)
    return decorate


def _picture_model(model: str, overrides, weights: str | None, seed: int):
    """The model a picture shows and its directory (None for a catalog name or spec file):
    a directory's own weights (zoo model, training run, Hugging Face checkpoint), ``--weights``,
    or a seeded random init."""
    from zoo.errors import PictureError

    directory = Path(model) if Path(model).is_dir() else None
    if weights is None and run_weights(model, None) is not None:
        from zoo.hf.checkpoint import load

        if overrides:
            raise PictureError(f"--set cannot change the trained model in {directory}; drop --set")
        return load(model), directory
    return model_from_args(load_spec_arg(model, overrides), weights, seed=seed), directory


def _wrote(output: Path, size: tuple[int, int]) -> None:
    unit = "pt" if output.suffix.lower() == ".svg" else "px"
    click.echo(f"wrote {output} ({size[0]}×{size[1]} {unit})")


@show.command("positional")
@click.argument("scheme")
@click.option("--model", "model_name", default=None, metavar="MODEL",
              help="Draw the scheme at MODEL's size (registry name, spec file or model directory); "
                   "a model directory or --weights gives learned positions their trained values.")
@click.option("--weights", default=None, help="MODEL's weights ('hf', a hub id, a Hugging Face or zoo directory).")
@click.option("--d-model", type=click.IntRange(min=2), default=None, help="Model width (default: MODEL's, else 128).")
@click.option("--heads", type=click.IntRange(min=1), default=None, help="Attention heads (default: MODEL's, else 8).")
@click.option("--length", type=click.IntRange(min=2), default=64, show_default=True, help="Positions to show.")
@click.option("--set", "overrides", multiple=True, type=OverrideType(),
              help="Override a spec field, e.g. --set positional.base=500 (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for learned positions without weights.")
@picture_output("SCHEME.png")
def show_positional(scheme, model_name, weights, d_model, heads, length, overrides, seed, output, dpi):
    """Draw positional scheme SCHEME and its effect on attention."""
    from zoo.errors import PictureError
    from zoo.show.figures import check_output, save_figure
    from zoo.show.positional import fresh_scheme, positional_figure, positional_spec, trained_scheme

    output = check_output(output or f"{scheme}.png")
    if weights and model_name is None:
        raise PictureError("--weights needs --model, the model the weights belong to")
    if model_name is not None and (weights or run_weights(model_name, None) is not None):
        if d_model or heads:
            raise PictureError("--d-model and --heads cannot resize a model with weights; drop them")
        net, _ = _picture_model(model_name, overrides, weights, seed)
        spec, source = net.spec, f"weights: {weights or model_name}"
        positions = trained_scheme(net, scheme, length)
    else:
        spec = positional_spec(scheme, model_name, d_model, heads, length, dict(overrides))
        positions, source = fresh_scheme(spec, seed), f"random init, seed {seed}"
    _wrote(output, save_figure(positional_figure(positions, spec, length, source), output, dpi))


@show.command("attention")
@spec_options
@click.argument("text")
@click.option("--weights", default=None, help="'hf', a hub id, a Hugging Face directory or a zoo model directory; default: MODEL's directory, else random init.")
@click.option("--layer", type=int, default=None, help="Show this layer only (default: every layer).")
@click.option("--head", default=None, help="Show this head only, or 'mean' for the average of the heads (default: every head).")
@click.option("--kind", type=click.Choice(["cross", "encoder", "decoder"]), default=None,
              help="Translation models: cross-attention alignment (default), encoder or decoder self-attention.")
@click.option("--target", default=None, help="Translation models: the target text (default: the model's greedy translation).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Translation models: longest greedy translation.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random init when no weights.")
@picture_output("attention.png")
def show_attention(model, overrides, text, weights, layer, head, kind, target, max_tokens, seed, output, dpi):
    """Draw MODEL's attention maps over TEXT, tokens on the axes."""
    from zoo.show.figures import check_output, save_figure
    from zoo.show.attention import attention_figure, attention_maps

    output = check_output(output or "attention.png")
    net, directory = _picture_model(model, overrides, weights, seed)
    maps = attention_maps(net, text, directory, kind, target, max_tokens)
    maps.notes.append(f"weights: {weights or directory}" if weights or directory else f"random init, seed {seed}")
    head = int(head) if head is not None and head.lstrip("-").isdigit() else head
    _wrote(output, save_figure(attention_figure(maps, layer, head), output, dpi))


@show.command("model")
@spec_options
@picture_output("MODEL.svg")
def show_model(model, overrides, output, dpi):
    """Draw MODEL's architecture, with plugins and parameter counts."""
    from zoo.show.figures import check_output, save_figure
    from zoo.show.model import model_figure

    spec = load_spec_arg(model, overrides)
    output = check_output(output or f"{spec.name}.svg")
    _wrote(output, save_figure(model_figure(spec), output, dpi))


COMMANDS = (show,)
