"""zoo's built-in export formats, registered as plugins (see ``zoo.hookspecs``)."""

from zoo.hookspecs import hookimpl


def onnx_exporter(model, spec, out_dir, **options):
    """ONNX graphs for ONNX Runtime; see :mod:`zoo.exporters.onnx` (imported on first use)."""
    from zoo.exporters.onnx import onnx_exporter as export

    return export(model, spec, out_dir, **options)


@hookimpl
def zoo_register_exporters(registry):
    """Built-in exporters register here as they are added."""
    registry.add("exporter", "onnx", onnx_exporter)
