"""zoo's built-in export formats, registered as plugins like any other (see ``zoo.Exporter``).

Each format's module is imported on first use, so listing the plugins stays light.
"""

from zoo import Exporter, hookimpl


class OnnxExporter(Exporter):
    """ONNX graphs for ONNX Runtime; see :mod:`zoo.exporters.onnx.exporter`."""

    def __call__(self, model, spec, out_dir, **options):
        from zoo.exporters.onnx.exporter import onnx_exporter

        return onnx_exporter(model, spec, out_dir, **options)


class HFExporter(Exporter):
    """A Hugging Face GPT-2 directory; see :mod:`zoo.exporters.hf.exporter`."""

    def __call__(self, model, spec, out_dir, **options):
        from zoo.exporters.hf.exporter import hf_exporter

        return hf_exporter(model, spec, out_dir, **options)


class WebExporter(Exporter):
    """A folder transformers.js and Optimum load; see :mod:`zoo.exporters.web.exporter`."""

    def __call__(self, model, spec, out_dir, **options):
        from zoo.exporters.web.exporter import web_exporter

        return web_exporter(model, spec, out_dir, **options)


@hookimpl
def zoo_register_exporters(registry):
    registry.add("exporter", "onnx", OnnxExporter())
    registry.add("exporter", "hf", HFExporter())
    registry.add("exporter", "web", WebExporter())
