"""The ``onnx`` format: the exporter, its export-time graphs, quantization, onnxruntime-genai files,
verification, and zoo's ONNX Runtime wrapper (``runtime.load``)."""
