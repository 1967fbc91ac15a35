"""Weight-only quantization of an ONNX export with ONNX Runtime's own quantizers.

    zoo export gpt2 --format onnx --quantize int4 -o out/gpt2-int4

Every graph of the export is rewritten in place, after it is saved and before it is
verified:

1. **Embedding tables** (a ``Gather`` on axis 0 of a 2-D float initializer whose indices
   are a graph input, or which is tied to a head) are quantized block-wise along the
   model dimension with :class:`DefaultWeightOnlyQuantizer`, the quantizer behind
   ``MatMulNBitsQuantizer``: packed ``B`` of shape (V, d / block, block · bits / 8),
   scales (V, d / block).
2. **A tied head** — ``MatMul(x, Transpose(table))``, or ``MatMul(x, table_T)`` once the
   exporter has folded the transpose into a copy — becomes ``MatMulNBits(x, B, scales)``
   with N = V and K = d. Its ``B`` is exactly the table's packed rows (row v of the table
   is column v of the head, blocked along d), so **one blob serves both**: the lookup
   ``Gather``-s the same ``B`` rows and their scales and dequantizes them with standard
   operators (onnxruntime-web has no kernel for ``com.microsoft.GatherBlockQuantized``).
   The file holds the table once, quantized; no fp32 V x d initializer remains.
3. **Every other MatMul** with a constant weight goes through
   ``MatMulNBitsQuantizer`` (RTN, block-wise along K).

Quantization is symmetric (no zero points): both operators then use the same implied
zero point 2^(bits-1), so the shared table needs nothing per operator. ``accuracy_level``
4 lets MatMulNBits quantize its input to int8 and use integer kernels (without it,
8-bit is slower than fp32 on CPU). Position tables (indices computed in the graph) stay
fp32: at most context x d, small next to the vocabulary. The chosen settings are
recorded in the manifest under ``quantization``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from zoo.errors import ExportError

BITS = {"int4": 4, "int8": 8}
# Block sizes, measured side by side in one run on GPT-2 Small (batch 1, 2 threads, decode ms
# per token): int4 block 32 / 64 / 128 = 11.1 / 10.4 / 9.3 ms (fp32 ceiling 24.7 ms), relative
# logit error 0.27 / 0.29 / 0.32; on the 30-minute translator, test BLEU 48.69 fp32, int4 block
# 32 48.13, block 128 48.00, int8 block 128 48.75. Block 128 is the fastest for both and stays
# well inside the quality bounds, so it is the default; smaller blocks trade speed for error.
DEFAULT_BLOCK = {"int4": 128, "int8": 128}
ACCURACY_LEVEL = 4  # int8 activations inside MatMulNBits: the fast CPU kernels
SYMMETRIC = True
MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class QuantizeSettings:
    """How an export is quantized (recorded in the manifest)."""

    scheme: str  # "int4" or "int8"
    block_size: int
    accuracy_level: int = ACCURACY_LEVEL
    symmetric: bool = SYMMETRIC

    @property
    def bits(self) -> int:
        return BITS[self.scheme]

    def to_dict(self) -> dict:
        return {**asdict(self), "bits": self.bits, "method": "onnxruntime MatMulNBitsQuantizer (RTN, weight-only)"}


def quantize_settings(scheme: str | None, block_size: int | None, spec, dtype: str = "fp32") -> QuantizeSettings | None:
    """Check the options against ``spec``; None when not quantizing. Raises one-line ExportErrors."""
    if scheme is None:
        if block_size is not None:
            raise ExportError("--block-size only applies with --quantize int4 or int8")
        return None
    if scheme not in BITS:
        raise ExportError(f"--quantize {scheme!r} is not supported; choose one of: {', '.join(BITS)}")
    if dtype != "fp32":
        raise ExportError(f"--quantize {scheme} starts from fp32 weights and computes in fp32; "
                          f"drop --dtype {dtype} (or use --dtype fp32)")
    inner = {"d_model": spec.d_model}
    d_ff = getattr(getattr(spec, "mlp", None), "d_ff", None)
    if d_ff:
        inner["mlp.d_ff"] = d_ff
    # default: the measured block, or the largest power of two dividing a smaller model's widths
    block = min([DEFAULT_BLOCK[scheme], *map(largest_block, inner.values())]) if block_size is None else block_size
    if block < 16 or block & (block - 1):
        raise ExportError(f"--block-size {block}: ONNX Runtime's quantizer needs a power of two >= 16 "
                          "(16, 32, 64, 128, ...)")
    for field, size in inner.items():
        if size % block:
            raise ExportError(f"--block-size {block} does not divide {spec.name}'s {field} of {size}; "
                              f"choose a power of two that divides it (e.g. {largest_block(size)})")
    return QuantizeSettings(scheme, block)


def largest_block(size: int, most: int = 128) -> int:
    """The largest power of two in [16, most] dividing ``size`` (16 when none does)."""
    block = most
    while block > 16 and size % block:
        block //= 2
    return block


# --------------------------------------------------------------------------- one graph


def quantize_export(out: Path, entries: dict, settings: QuantizeSettings) -> dict:
    """Quantize every graph of the export in ``out`` in place; return the manifest entry."""
    graphs = {}
    for name, entry in entries.items():
        graphs[name] = quantize_graph(out / entry["file"], settings)
    return {**settings.to_dict(), "graphs": graphs}


def quantize_graph(path: Path, settings: QuantizeSettings) -> dict:
    """Rewrite one saved graph (``NAME.onnx`` + ``NAME.onnx.data``) with quantized weights."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    proto = onnx.load(str(path))  # weights now in memory: the data file can be rewritten
    counts = share_tables(proto.graph, settings)
    quiet = logging.getLogger("onnxruntime.quantization")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quantizer = MatMulNBitsQuantizer(proto, bits=settings.bits, block_size=settings.block_size,
                                         is_symmetric=settings.symmetric, accuracy_level=settings.accuracy_level)
        quantizer.process()
    finally:
        quiet.setLevel(level)
    proto = quantizer.model.model
    counts["matmuls"] = sum(n.op_type == "MatMulNBits" for n in proto.graph.node) - counts["heads"]
    remaining = [i.name for i in proto.graph.initializer
                 if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2 and min(i.dims) > 1
                 and any(n.op_type == "MatMul" and i.name in n.input for n in proto.graph.node)]
    if remaining:
        raise ExportError(f"{path.name}: MatMul weights left unquantized: {', '.join(remaining[:3])}")
    save_with_data(proto, path)
    return counts


def save_with_data(proto: onnx.ModelProto, path: Path) -> None:
    """Save ``proto`` as ``path`` with every weight in a fresh ``path.data``."""
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)


def share_tables(graph: onnx.GraphProto, settings: QuantizeSettings) -> dict:
    """Quantize each embedding table once and point its lookup and its tied head at it."""
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    inputs = {i.name for i in graph.input}
    lookups = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits
               and attribute(n, "axis", 0) == 0 and is_float_matrix(inits[n.input[0]])]
    arrays = {n.input[0]: numpy_helper.to_array(inits[n.input[0]]) for n in lookups}
    heads = {name: tied_heads(graph, name, arrays[name], inits, producers) for name in arrays}
    tables = [name for name in arrays if heads[name] or any(n.input[0] == name and n.input[1] in inputs
                                                            for n in lookups)]
    counts = {"tables": 0, "heads": 0}
    for name in tables:
        table = arrays[name]  # (V, d)
        if table.shape[1] % settings.block_size:
            raise ExportError(f"--block-size {settings.block_size} does not divide the width {table.shape[1]} "
                              f"of table {name}")
        packed, scales = quantize_matrix(table.T, settings)  # (V, d/block, blob), (V, d/block)
        qname, sname = f"{name}.q{settings.bits}", f"{name}.scales"
        graph.initializer.extend([numpy_helper.from_array(packed, qname), numpy_helper.from_array(scales, sname)])
        for head in heads[name]:
            replace_node(graph, head, matmul_nbits(head, qname, sname, table.shape, settings))
            counts["heads"] += 1
        for node in [n for n in lookups if n.input[0] == name]:
            replace_node(graph, node, *lookup_nodes(node, qname, sname, table.shape, settings))
        counts["tables"] += 1
    drop_unused(graph)
    return counts


def quantize_matrix(weight: np.ndarray, settings: QuantizeSettings) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` (K, N) in MatMulNBits' layout, by ONNX Runtime's block quantizer:
    packed (N, K/block, block·bits/8) uint8 and scales (N, K/block)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(block_size=settings.block_size, is_symmetric=settings.symmetric,
                                          accuracy_level=settings.accuracy_level, bits=settings.bits)
    packed, scales, _ = DefaultWeightOnlyQuantizer(config).qbits_block_quant(np.ascontiguousarray(weight))
    return packed, scales


def tied_heads(graph, table_name: str, table: np.ndarray, inits: dict, producers: dict) -> list:
    """MatMul nodes computing ``x @ table.T``: through a Transpose of the table, or on an
    initializer equal to its transpose."""
    heads = []
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        weight = node.input[1]
        source = producers.get(weight)
        if source is not None and source.op_type == "Transpose" and source.input[0] == table_name:
            if list(attribute(source, "perm", [1, 0])) == [1, 0]:
                heads.append(node)
        elif weight in inits and tuple(inits[weight].dims) == table.shape[::-1] and is_float_matrix(inits[weight]):
            if np.array_equal(numpy_helper.to_array(inits[weight]), table.T):
                heads.append(node)
    return heads


def matmul_nbits(head, qname: str, sname: str, shape: tuple, settings: QuantizeSettings):
    vocab, width = shape
    return helper.make_node("MatMulNBits", [head.input[0], qname, sname], list(head.output),
                            name=f"{head.name or 'head'}_Q{settings.bits}", domain=MS_DOMAIN, K=width, N=vocab,
                            bits=settings.bits, block_size=settings.block_size,
                            accuracy_level=settings.accuracy_level)


def lookup_nodes(node, qname: str, sname: str, shape: tuple, settings: QuantizeSettings) -> list:
    """The rows ``ids`` of the packed table, dequantized with standard operators only:
    ``Gather`` the packed blocks (..., d/block, blob) and their scales, dequantize them
    (:func:`dequantize_nodes`) and reshape to (..., d). ONNX Runtime's ``GatherBlockQuantized``
    would do the same in one node, but onnxruntime-web has no kernel for it, and the gathered
    rows are a vanishing share of a step's work."""
    out, ids = node.output[0], node.input[1]
    base = node.name or out
    name = f"{base}/{{}}".format
    return [
        helper.make_node("Gather", [qname, ids], [name("packed")], axis=0),  # (..., d/block, blob) uint8
        helper.make_node("Gather", [sname, ids], [name("row_scales")], axis=0),  # (..., d/block)
        constant(name("last"), np.array([-1], np.int64)),
        helper.make_node("Unsqueeze", [name("row_scales"), name("last")], [name("scales")]),  # (..., d/block, 1)
        *dequantize_nodes(base, name("packed"), name("scales"), settings.bits, name("rows")),
        helper.make_node("Shape", [ids], [name("ids_shape")]),
        constant(name("width"), np.array([shape[1]], np.int64)),
        helper.make_node("Concat", [name("ids_shape"), name("width")], [name("out_shape")], axis=0),
        helper.make_node("Reshape", [name("rows"), name("out_shape")], [out]),  # (..., d)
    ]


def dequantize_nodes(base: str, packed: str, scales: str, bits: int, out: str) -> list:
    """Standard operators turning ``packed`` blocks (..., blocks, blob) uint8 and their
    ``scales`` (..., blocks, 1) into ``out`` (..., blocks, block) float: unpack the nibbles
    (int4: element 2j in the low four bits of byte j, 2j+1 in the high four), subtract the
    implied zero point 2^(bits-1), scale. ``out`` has the blocks' values in order once the
    last two dimensions of a 4-bit result, (blob, 2), are read as one."""
    name = f"{base}/{{}}".format
    nodes = [
        helper.make_node("Cast", [packed], [name("bytes")], to=onnx.TensorProto.FLOAT),
        constant(name("zero_point"), np.float32(2 ** (bits - 1))),
    ]
    values = name("bytes")
    if bits == 4:  # (..., blocks, blob, 2): the low then the high nibble of each byte
        nodes += [
            constant(name("sixteen"), np.float32(16)),
            constant(name("nibble_axis"), np.array([-1], np.int64)),
            helper.make_node("Div", [name("bytes"), name("sixteen")], [name("high_fraction")]),
            helper.make_node("Floor", [name("high_fraction")], [name("high")]),
            helper.make_node("Mul", [name("high"), name("sixteen")], [name("high_part")]),
            helper.make_node("Sub", [name("bytes"), name("high_part")], [name("low")]),
            helper.make_node("Unsqueeze", [name("low"), name("nibble_axis")], [name("low_1")]),
            helper.make_node("Unsqueeze", [name("high"), name("nibble_axis")], [name("high_1")]),
            helper.make_node("Concat", [name("low_1"), name("high_1")], [name("nibbles")], axis=-1),
            helper.make_node("Unsqueeze", [scales, name("nibble_axis")], [name("nibble_scales")]),
        ]
        values, scales = name("nibbles"), name("nibble_scales")
    return nodes + [
        helper.make_node("Sub", [values, name("zero_point")], [name("centered")]),
        helper.make_node("Mul", [name("centered"), scales], [out]),
    ]


def constant(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value)))


def expand_at_load(proto: onnx.ModelProto) -> int:
    """Replace every ``MatMulNBits`` on constant weights by operators that rebuild the fp32
    (K, N) matrix from its quantized bytes, then a ``MatMul``; return how many.

    Those operators read only initializers, so ONNX Runtime's constant folding computes the
    matrix once, when the session loads: the file stays 4- or 8-bit and the compute is fp32.
    That is for onnxruntime-web: its WebAssembly ``MatMulNBits`` has no fast kernel (GPT-2
    Small's 768 x 3072 product at batch 1 took 20-25 ms against 0.7-1 ms as an fp32 MatMul).

    The bytes are re-laid out so the rebuild is four operators: a lookup table maps each byte
    to its value(s) minus the zero point (``Gather`` on the byte as an index), which for 4 bits
    yields rows k and K/2 + k at once, (2, K/2, N) → (K, N) by a reshape; the block scales
    multiply (K/block, block, N). Folding holds every intermediate until it finishes, and a
    longer chain (nibble arithmetic) ran out of WebAssembly memory on GPT-2 Small; ``Cast``
    from ONNX's ``INT4`` has no WebAssembly kernel. A table shared with an embedding lookup
    keeps its packed copy for the lookup.
    """
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    count = 0
    for node in [n for n in graph.node if n.op_type == "MatMulNBits" and n.domain == MS_DOMAIN]:
        if len(node.input) > 3 and any(node.input[3:]) or not {node.input[1], node.input[2]} <= set(inits):
            continue  # zero points, indices, bias or computed weights: left as they are
        k, n, bits, block = (attribute(node, key, None) for key in ("K", "N", "bits", "block_size"))
        if k % block or k % 2:
            continue  # a padded last block, or no two halves: left as they are
        packed = numpy_helper.to_array(inits[node.input[1]])  # (N, K/block, blob) uint8
        if bits == 4:  # element 2j in the low four bits of byte j, 2j+1 in the high four
            packed = np.stack([packed & 0x0F, packed >> 4], axis=-1)
        values = packed.reshape(n, k).T  # (K, N) unsigned, zero point 2^(bits-1)
        zero = 2 ** (bits - 1)
        if bits == 4:  # byte (r, n): low nibble row r, high nibble row K/2 + r
            stored = (values[: k // 2] | (values[k // 2:] << 4)).astype(np.uint8)  # (K/2, N)
            table = np.stack([np.arange(256) % 16, np.arange(256) // 16]) - zero  # (2, 256): low, high
        else:
            stored = values.astype(np.uint8)  # (K, N)
            table = (np.arange(256) - zero)[None, :]  # (1, 256)
        scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n, k // block).T  # (K/block, N)
        base = f"{node.name or node.output[0]}/expanded"
        name = f"{base}/{{}}".format
        graph.initializer.extend([
            numpy_helper.from_array(np.ascontiguousarray(stored), name("bytes")),
            numpy_helper.from_array(table.astype(np.float32), name("table")),
            numpy_helper.from_array(np.ascontiguousarray(scales[:, None, :]).astype(np.float32), name("scales")),
        ])
        replace_node(graph, node, *[
            helper.make_node("Cast", [name("bytes")], [name("indices")], to=onnx.TensorProto.INT32),
            helper.make_node("Gather", [name("table"), name("indices")], [name("values")], axis=1),  # (2|1, ., N)
            constant(name("block_shape"), np.array([k // block, block, n], np.int64)),
            helper.make_node("Reshape", [name("values"), name("block_shape")], [name("blocks")]),
            helper.make_node("Mul", [name("blocks"), name("scales")], [name("weight_blocks")]),
            constant(name("weight_shape"), np.array([k, n], np.int64)),
            helper.make_node("Reshape", [name("weight_blocks"), name("weight_shape")], [name("weight")]),  # (K, N)
            helper.make_node("MatMul", [node.input[0], name("weight")], list(node.output), name=f"{base}/MatMul"),
        ])
        count += 1
    drop_unused(graph)
    return count


def replace_node(graph: onnx.GraphProto, node, *new) -> None:
    """Put ``new`` nodes where ``node`` was (the graph stays topologically sorted)."""
    nodes = list(graph.node)
    index = next(i for i, n in enumerate(nodes) if n is node or n == node)
    nodes[index:index + 1] = new
    del graph.node[:]
    graph.node.extend(nodes)


def drop_unused(graph: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nobody reads (a Transpose of the old table) and
    initializers no node reads (the fp32 table and its folded transpose)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {i for n in graph.node for i in n.input} | outputs
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def attribute(node, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def is_float_matrix(init: onnx.TensorProto) -> bool:
    return init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2
