"""zoo's built-in export formats, registered as plugins (see ``zoo.hookspecs``)."""

from zoo.hookspecs import hookimpl


@hookimpl
def zoo_register_exporters(registry):
    """Built-in exporters register here as they are added."""
