"""zoo's built-in export formats and runtime, registered as plugins like any other (see ``zoo.Exporter``).

Each format declares its options (``zoo export --format X --help`` lists them) and checks
their values before any work; its module is imported on first use, so listing the plugins
stays light.
"""

from zoo import Exporter, ExportOption, hookimpl
from zoo.errors import ExportError

KV_CACHE = ExportOption("kv_cache", "Export past key/values as inputs and present ones as outputs.", bool, False)
OPSET = ExportOption("opset", "ONNX opset, 18 to 25 (default 23, the first with the fused Attention operator).", int)
BLOCK_SIZE = ExportOption("block_size", "Weights per quantization block (a power of two >= 16 dividing the hidden "
                                        "size; default 128, or the largest that divides).", int)


def dtype_option(help: str) -> ExportOption:
    return ExportOption("dtype", help, ("fp32", "fp16"), "fp32")


class OnnxExporter(Exporter):
    """ONNX graphs for ONNX Runtime; see :mod:`zoo.exporters.onnx.exporter`."""

    options = (
        KV_CACHE,
        dtype_option("Precision of the graphs (fp16 for GPUs)."),
        OPSET,
        ExportOption("quantize", "Store the weights quantized (weight-only, ONNX Runtime's MatMulNBits), the LM head "
                                 "and embedding table included.", ("int4", "int8")),
        BLOCK_SIZE,
    )
    hints = {"variants": "--format onnx writes one precision: --dtype, or --quantize int4|int8"}

    def check(self, spec, *, dtype="fp32", quantize=None, block_size=None, **options):
        from zoo.exporters.onnx.quantize import quantize_settings

        quantize_settings(quantize, block_size, spec, dtype)

    def __call__(self, model, spec, out_dir, **options):
        from zoo.exporters.onnx.exporter import onnx_exporter

        return onnx_exporter(model, spec, out_dir, **options)


class HFExporter(Exporter):
    """A Hugging Face directory of the model's family; see :mod:`zoo.exporters.hf.exporter`."""

    options = (
        dtype_option("Precision of the written weights."),
        ExportOption("adapter_run", "A LoRA run whose adapter goes along as a PEFT folder (zoo export --adapter).",
                     str, command_line=False),
    )
    hints = {"kv_cache": "a transformers model always takes past_key_values; leave --kv-cache out",
             "opset": "--opset is an ONNX setting; the hf format has none, leave it out",
             "quantize": "the hf format writes fp32 or fp16 weights (--dtype); quantize with --format onnx"}

    def __call__(self, model, spec, out_dir, **options):
        from zoo.exporters.hf.exporter import hf_exporter

        return hf_exporter(model, spec, out_dir, **options)


class WebExporter(Exporter):
    """A folder transformers.js and Optimum load; see :mod:`zoo.exporters.web.exporter`."""

    options = (
        ExportOption("variants", "The precisions to write, as transformers.js names them: fp32, fp16, q4, int8 "
                                 "(comma-separated; default fp32,q4).", str, metavar="fp32,fp16,q4,int8"),
        BLOCK_SIZE,
        OPSET,
    )
    hints = {"quantize": "--format web names its precisions with --variants (q4, int8, fp16, fp32), not --quantize",
             "dtype": "--format web names its precisions with --variants (e.g. --variants fp16,q4)",
             "kv_cache": "the web graphs always have the key/value cache; leave --kv-cache out"}

    def check(self, spec, *, variants=None, block_size=None, **options):
        from zoo.exporters.onnx.quantize import quantize_settings
        from zoo.exporters.web.folder import VARIANTS, parse_variants

        names = parse_variants(variants)
        quantized = [VARIANTS[n].quantize for n in names if VARIANTS[n].quantize]
        if block_size is not None and not quantized:
            raise ExportError("--block-size applies to the quantized web variants (q4, int8); none is listed in "
                              "--variants")
        for scheme in quantized:
            quantize_settings(scheme, block_size, spec)

    def __call__(self, model, spec, out_dir, **options):
        from zoo.exporters.web.exporter import web_exporter

        return web_exporter(model, spec, out_dir, **options)


def onnxruntime_runtime(directory, device="cpu", **options):
    """An ``--format onnx`` directory opened in ONNX Runtime (:func:`zoo.exporters.onnx.runtime.load`)."""
    from zoo.exporters.onnx.runtime import load

    return load(directory, device=device, **options)


@hookimpl
def zoo_register_exporters(registry):
    registry.add("exporter", "onnx", OnnxExporter())
    registry.add("exporter", "hf", HFExporter())
    registry.add("exporter", "web", WebExporter())
    registry.add("runtime", "onnxruntime", onnxruntime_runtime)
