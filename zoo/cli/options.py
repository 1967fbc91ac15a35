"""What the zoo commands share: checking parameter types, option decorators, help texts,
and the functions that turn ``MODEL --set ... --weights ...`` into a spec and a model."""

from __future__ import annotations

import click

from zoo.errors import ZooError

WEIGHTS_HELP = ("'hf' (the spec's hub id), a hub id, a Hugging Face directory or a zoo model directory; "
                "default: random init.")
TOKENIZER_HELP = "GPT-2 tokenizer directory (vocab.json + merges.txt); default: the copy shipped with zoo."


class OverrideType(click.ParamType):
    """``PATH=VALUE`` for ``--set``; the value is parsed as YAML (``4``, ``true``, ``rotary``)."""

    name = "PATH=VALUE"

    def convert(self, value, param, ctx):
        from zoo.core.spec import parse_override

        try:
            return parse_override(value)
        except ZooError as exc:
            self.fail(str(exc), param, ctx)


class IntervalType(click.ParamType):
    """A step count (``200``) or a training time (``90s``, ``5m``), checked and kept as given."""

    name = "text"

    def convert(self, value, param, ctx):
        from zoo.training.config import parse_interval

        try:
            parse_interval(value)
        except ZooError as exc:
            self.fail(str(exc), param, ctx)
        return value


def spec_options(func, model_required: bool = True):
    """``MODEL`` argument (catalog name or spec file) plus repeatable ``--set``."""
    func = click.option("--set", "overrides", multiple=True, type=OverrideType(),
                        help="Override a spec field, e.g. --set attention.n_kv_heads=4 (repeatable).")(func)
    return click.argument("model", required=model_required)(func)


def optional_spec_options(func):
    """:func:`spec_options` with ``MODEL`` optional, for a command that can read it from
    elsewhere (``zoo train --resume RUN_DIR`` reads it from the run)."""
    return spec_options(func, model_required=False)


def given_options(ctx: click.Context, names) -> set[str]:
    """Which of the options ``names`` the user set, rather than left at their defaults."""
    from click.core import ParameterSource

    unset = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)
    return {name for name in names if ctx.get_parameter_source(name) not in unset}


def load_spec_arg(model: str, overrides) -> "ModelSpec":  # noqa: F821
    """MODEL's spec: a catalog name, a spec file, or a Hugging Face directory of a supported
    family (its spec read from ``config.json``)."""
    from zoo.core.spec import load_spec
    from zoo.hf.checkpoint import hf_directory_spec, local_hf_directory

    directory = local_hf_directory(model)
    if directory is not None:
        return load_spec(hf_directory_spec(directory, model), dict(overrides) or None)
    return load_spec(model, dict(overrides) or None)


def run_weights(model: str, weights: str | None) -> str | None:
    """``--weights``, defaulting to MODEL itself when MODEL is a directory holding weights:
    a zoo model (or ``zoo train`` run) directory, so ``zoo export RUN_DIR`` means that run's
    trained model, or a Hugging Face directory, so ``zoo build HF_DIR`` reads its checkpoint."""
    from pathlib import Path

    from zoo.core.files import WEIGHTS
    from zoo.core.model_dir import is_model_directory
    from zoo.hf.checkpoint import local_hf_directory

    from zoo.core.adapters import lora_record

    path = Path(model)
    if weights is None and path.is_dir() and is_model_directory(path) and (
            (path / WEIGHTS).is_file() or lora_record(path) is not None):  # merged, or base + adapter
        return model
    if weights is None and local_hf_directory(model) is not None:
        return model
    return weights


def model_from_args(spec, weights: str | None, seed: int = 0, device: str = "cpu", dtype=None):
    """The model a command works on: weights from ``--weights`` or a seeded random init.
    A model that cannot fit in ``device``'s memory is refused before anything is allocated."""
    import torch

    dtype = dtype or torch.float32
    if weights:
        from zoo.hf.checkpoint import load_weights

        return load_weights(spec, weights, device=device, dtype=dtype)  # both check the size first
    from zoo.core.builder import build as build_model

    return build_model(spec, seed=seed, device=device, dtype=dtype)


def print_table(header, rows) -> None:
    """Columns aligned under a header and a rule, as ``zoo list`` and ``zoo compare`` print them."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(line.format(*header).rstrip())
    click.echo(line.format(*("-" * w for w in widths)).rstrip())
    for row in rows:
        click.echo(line.format(*row).rstrip())
