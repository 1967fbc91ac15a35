"""``zoo serve-web``: the page that generates with a web export in the visitor's browser."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("serve-web")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 lets other machines in (the page is read-only).")
@click.option("--port", type=int, default=8000, show_default=True, help="Port (0: any free one).")
@click.option("--library", type=click.Path(path_type=Path), default=None,
              help="A node_modules folder with @huggingface/transformers (npm install --ignore-scripts): serve "
                   "transformers.js and ONNX Runtime Web from it instead of the page fetching them from jsDelivr.")
def serve_web(folder, host, port, library):
    """Serve a page that generates with FOLDER (zoo export MODEL --format web -o FOLDER)
    in the visitor's own browser: transformers.js on ONNX Runtime Web, a progress bar
    while the model downloads. Only the page and FOLDER's files are served, read-only."""
    from zoo.exporters.web.server import make_server

    server = make_server(folder, host, port, library)
    bound_host, bound_port = server.server_address[:2]
    click.echo(f"serving {folder} on http://{bound_host}:{bound_port}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped")
    finally:
        server.server_close()


COMMANDS = (serve_web,)
