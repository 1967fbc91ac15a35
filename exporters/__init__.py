"""zoo's built-in export formats, registered as plugins (see ``zoo.core.hookspecs``)."""

from zoo.core.hookspecs import hookimpl


def onnx_exporter(model, spec, out_dir, **options):
    """ONNX graphs for ONNX Runtime; see :mod:`zoo.exporters.onnx` (imported on first use)."""
    from zoo.exporters.onnx import onnx_exporter as export

    return export(model, spec, out_dir, **options)


def hf_exporter(model, spec, out_dir, **options):
    """A Hugging Face GPT-2 directory; see :mod:`zoo.exporters.hf` (imported on first use)."""
    from zoo.exporters.hf import hf_exporter as export

    return export(model, spec, out_dir, **options)


@hookimpl
def zoo_register_exporters(registry):
    """Built-in exporters register here as they are added."""
    registry.add("exporter", "onnx", onnx_exporter)
    registry.add("exporter", "hf", hf_exporter)
