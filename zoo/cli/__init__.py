"""The ``zoo`` command line: a click group with one short function per command, each
calling the Python API; one module per area (models, export, verify, generate,
training, translation, compare, bench, show).

Heavy imports (torch, transformers, onnx) happen inside the commands, so ``zoo --help``
and ``zoo list`` never import torch. Every :class:`zoo.errors.ZooError` is printed as one
line on stderr with a non-zero exit and no traceback.
"""

from __future__ import annotations

import os
import sys

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


@click.group(cls=ZooGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plugin", "plugins", multiple=True, metavar="PATH_OR_MODULE",
              help="Load a local plugin file or module (repeatable; also ZOO_PLUGINS).")
@click.version_option(package_name="zoo")
def cli(plugins):
    """zoo: assemble, check and ship transformer models."""
    from zoo.core.registry import get_registry, use_local_plugins

    use_local_plugins(plugins)
    if plugins or os.environ.get("ZOO_PLUGINS", "").strip():
        get_registry()  # load the named plugins now, so a broken one is reported whatever the command


def _add_commands() -> None:
    from zoo.cli import bench, compare, export, generate, models, serve, show, training, translation, verify

    for area in (models, export, verify, generate, training, translation, compare, bench, show, serve):
        for command in area.COMMANDS:
            cli.add_command(command)


_add_commands()


def main() -> None:
    cli(prog_name="zoo")
