"""The ``onnx`` exporter: zoo models as ONNX graphs that ONNX Runtime runs.

    import zoo
    zoo.export(zoo.build("gpt2"), "out/gpt2-onnx", "onnx", kv_cache=True)   # written atomically
    lm = zoo.exporters.onnx.runtime.load("out/gpt2-onnx")

Each graph of :func:`zoo.exporters.onnx.graphs.graphs_for` is traced with
``torch.export`` (dynamic batch and sequence dimensions), translated by
``torch.onnx.export`` at opset 23 by default, where attention becomes ONNX's fused
``Attention`` operator, and saved as ``NAME.onnx`` with its weights in
``NAME.onnx.data`` (external data, so gpt2-xl's 6 GB fit past protobuf's 2 GB limit).
The directory also holds the resolved ``spec.yaml``, the tokenizer files when known,
``genai_config.json`` (so onnxruntime-genai runs a decoder with ``--kv-cache`` as it is;
see :mod:`zoo.exporters.onnx.genai`), ``verification.json`` and ``manifest.json`` (graphs with
input/output names and shapes, opset, dtype, and the sha256 of every file).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import sys
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn
from tqdm import tqdm

from zoo.core.files import SPEC, TOKENIZER_FILES, VERIFICATION, write_manifest
from zoo.core.model_dir import load_state, state_dict_for_saving
from zoo.core.paging import weights_on_disk
from zoo.errors import ExportError, ZooError, first_line
from zoo.exporters.onnx.genai import write_genai_files
from zoo.exporters.onnx.errors import export_failure
from zoo.exporters.onnx.fusion import dim_terms, fold_into_attention
from zoo.exporters.onnx.graphs import LOGITS_SEQUENCE, LOGITS_START, ExportGraph, graphs_for
from zoo.exporters.onnx.quantize import QuantizeSettings, quantize_export, quantize_settings
from zoo.exporters.onnx.verification import Reference, torch_reference, verify_export, verify_quantized_export
from zoo.core.spec import ModelSpec

DEFAULT_OPSET = 23  # the first opset with the standard fused Attention operator
OPSETS = range(18, 26)  # what torch.onnx's exporter and onnxscript's version converter support
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
ONNX_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
              onnx.TensorProto.INT64: "int64", onnx.TensorProto.BOOL: "bool"}


def onnx_exporter(model: nn.Module, spec: ModelSpec, out_dir: str | Path, *, kv_cache: bool = False,
                  dtype: str = "fp32", opset: int | None = None, verify: bool = True,
                  tokenizer_dir: str | Path | None = None, quantize: str | None = None,
                  block_size: int | None = None) -> dict:
    """The registered ``onnx`` exporter: write every file into ``out_dir`` (a fresh
    temporary directory that :func:`zoo.core.export.export_model` renames into place)."""
    out = Path(out_dir)
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r} is not supported by the onnx exporter; choose one of: {', '.join(DTYPES)}")
    opset = DEFAULT_OPSET if opset is None else opset
    if opset not in OPSETS:
        raise ExportError(f"--opset {opset} is not supported by torch's ONNX exporter; choose {OPSETS[0]} to "
                          f"{OPSETS[-1]} ({DEFAULT_OPSET} and newer give the fused Attention operator)")
    quantization = quantize_settings(quantize, block_size, spec, dtype)
    check_export_fits(model, spec)
    graph_model = model_in_dtype(model, spec, DTYPES[dtype])
    graphs = graphs_for(graph_model, kv_cache)
    was_training = model.training
    progress = tqdm(total=len(graphs) + int(verify) + bool(quantization), desc=f"export {spec.name} to ONNX", unit="graph",
                    file=sys.stderr, leave=False)
    try:
        entries = {}
        for graph in graphs:
            progress.set_postfix_str(graph.name)
            entries[graph.name] = export_graph(graph.eval(), out, opset)
            progress.update()
        reference = None
        if verify:
            progress.set_postfix_str("running PyTorch for verification")
            reference = torch_reference(graph_model, kv_cache, quantized=bool(quantization))
        # From here on only ONNX works: the model's weights wait on disk, so that a quantizer's or
        # ONNX Runtime's copy of them is the only one in memory.
        paging = weights_on_disk(graph_model, out, notice=lambda line: tqdm.write(line, file=sys.stderr))
        with paging if verify or quantization else contextlib.nullcontext():
            if quantization:
                progress.set_postfix_str(f"quantizing to {quantization.scheme}")
                quantized = quantize_export(out, entries, quantization)
                progress.update()
            (out / SPEC).write_text(spec.to_yaml(), encoding="utf-8")
            tokenizer = copy_tokenizer(spec, out, tokenizer_dir)
            genai = write_genai_files(spec, out, entries["decoder"], kv_cache)
            tokenizer += [name for name in genai.get("tokenizer", []) if name not in tokenizer]
            manifest = {
                "format": "onnx", "model": spec.name, "family": spec.family, "kv_cache": kv_cache,
                "dtype": dtype, "opset": opset, "attention_operator": attention_operator(out, entries),
                "graphs": entries, "tokenizer": tokenizer, "genai": genai,
                **({"quantization": quantized} if quantization else {}),
                "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__,
                                  "onnxruntime": onnxruntime.__version__},
            }
            write_manifest(out, manifest, files=False)  # what the runtime reads while verifying
            if reference is not None:
                progress.set_postfix_str("verifying")
                manifest["verification"] = (run_quantized_verification(reference, out, quantization)
                                            if quantization else run_verification(reference, out))
                progress.update()
        return write_manifest(out, manifest)
    finally:
        progress.close()
        model.train(was_training)


# Peak memory an export takes (tracing, serialising, quantizing and verifying) over the model's weight
# bytes, with a margin: gpt2-xl peaked at 1.16x its 6.23 GB of resident memory, 1.26x with int4 (README),
# the model's weights waiting on disk while ONNX Runtime maps the export's.
EXPORT_PEAK_OVER_WEIGHTS = 1.3


def check_export_fits(model: nn.Module, spec: ModelSpec) -> None:
    """Refuse, in one line and before any work, an export the machine's free memory cannot hold:
    the model is in memory already, and the export adds about (peak - 1) x its weights
    (:data:`EXPORT_PEAK_OVER_WEIGHTS`)."""
    from zoo.core.limits import format_bytes, memory_available, spec_label

    weights = sum(t.numel() * t.element_size() for t in {id(p): p for p in model.parameters()}.values())
    extra = int((EXPORT_PEAK_OVER_WEIGHTS - 1) * weights)
    available, where = memory_available("cpu")
    if available is not None and extra > available:
        raise ExportError(f"exporting {spec_label(spec)} needs about {format_bytes(extra)} of memory beside its "
                          f"{format_bytes(weights)} of weights (a peak of {EXPORT_PEAK_OVER_WEIGHTS:g}x the weights); "
                          f"{where.format(format_bytes(available))}; export on a machine with more memory")


def model_in_dtype(model: nn.Module, spec: ModelSpec, dtype: torch.dtype) -> nn.Module:
    """``model`` itself, or a copy in ``dtype`` (the caller's model is left untouched)."""
    if next(model.parameters()).dtype == dtype:
        return model
    from zoo.core.meta import assemble

    tensors = {name: t.to(dtype) for name, t in state_dict_for_saving(model).items()}
    return load_state(assemble(spec), tensors, f"{spec.name} in {dtype}").eval()


@contextlib.contextmanager
def quiet_exporter():
    """Hide the exporter's log lines and warnings (skipped torchvision operators, graph
    dumps on a failed trace); a failure still arrives as an exception."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def export_graph(graph: ExportGraph, out: Path, opset: int) -> dict:
    """Trace, translate, save and check one graph; return its manifest entry."""
    input_names = [name for name, _ in graph.inputs()]
    output_names = [name for name, _ in graph.outputs()]
    with quiet_exporter():
        try:
            program = torch.export.export(graph, graph.example_inputs(), dynamic_shapes=graph.dynamic_shapes(),
                                          strict=False)
        except Exception as exc:
            raise export_failure(exc, graph) from None
        try:
            onnx_program = torch.onnx.export(program, input_names=input_names, output_names=output_names,
                                             opset_version=opset, dynamo=True, verbose=False, optimize=True)
        except Exception as exc:
            raise export_failure(exc, graph, program) from None
        path = out / f"{graph.name}.onnx"
        onnx_program.save(str(path), external_data=True)
        release_weights(onnx_program.model)
    proto = onnx.load(str(path), load_external_data=False)  # the graph only: the weights file stays as saved
    name_dimensions(proto, graph)
    fold_into_attention(proto)
    if graph.selects_logits:
        select_logit_positions(proto)
    onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{graph.name}.onnx fails onnx.checker: {first_line(exc)}") from None
    defaults = {t.name for t in proto.graph.initializer}
    return {
        "file": path.name,
        "inputs": [io_entry(v, optional=v.name in defaults) for v in proto.graph.input],
        "outputs": [io_entry(v) for v in proto.graph.output],
    }


def release_weights(model) -> None:
    """Drop an in-memory ONNX model's references to its weights once they are saved.

    onnxscript's rewrite rules, module-level objects, keep the last graph they matched, and
    with it every initializer: the model's own parameters or views of them. Left alone, they
    keep gpt2-xl's weights alive after the model's are paged out for verification."""
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            value.const_value = None
        graph.initializers.clear()


def io_entry(value: onnx.ValueInfoProto, optional: bool = False) -> dict:
    """A graph input's or output's manifest entry; ``optional``: an input with a default value."""
    tensor = value.type.tensor_type
    shape = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in tensor.shape.dim]
    entry = {"name": value.name, "dtype": ONNX_TYPES.get(tensor.elem_type, str(tensor.elem_type)), "shape": shape}
    return {**entry, "optional": True} if optional else entry


PASS_THROUGH = {"Cast", "Add", "Mul", "Div", "Tanh", "Softcap"}  # what may follow the head's MatMul on the way to logits


def select_logit_positions(proto: onnx.ModelProto) -> None:
    """Let a caller ask the decoder graph for the logits of the last positions only.

    The LM head's MatMul gets a ``Slice`` of the hidden states along the sequence from the
    input ``logits_start`` (an int64 of shape (1,)), which has a default value of 0: every
    position, so onnxruntime-genai, Optimum and transformers.js, which never feed it (it is
    not among the session's required inputs), get the standard decoder's logits. zoo's runtime
    feeds -1 at prefill, where it needs one row of logits, and the head's GEMM (a third of GPT-2
    Small's prefill) runs on one position instead of all.
    """
    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    node = producers.get("logits")
    while node is not None and node.op_type in PASS_THROUGH:
        node = next((producers[i] for i in node.input if i in producers and i not in constants), None)
    shapes = {v.name: v.type.tensor_type.shape for v in [*graph.value_info, *graph.input]}
    if node is None or node.op_type not in ("MatMul", "Gemm") or len(getattr(shapes.get(node.input[0]), "dim", ())) != 3:
        return  # no (B, T, D) hidden states found before the head: every call gets every position's logits
    hidden = f"{LOGITS_START}/hidden"
    ends, axes = f"{LOGITS_START}/ends", f"{LOGITS_START}/axes"
    graph.initializer.extend([onnx.numpy_helper.from_array(np.array([0], dtype=np.int64), LOGITS_START),
                              onnx.numpy_helper.from_array(np.array([np.iinfo(np.int64).max], dtype=np.int64), ends),
                              onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), axes)])
    graph.input.append(onnx.helper.make_tensor_value_info(LOGITS_START, onnx.TensorProto.INT64, [1]))
    index = list(graph.node).index(node)
    graph.node.insert(index, onnx.helper.make_node("Slice", [node.input[0], LOGITS_START, ends, axes], [hidden],
                                                   name=f"{LOGITS_START}/Slice"))
    node.input[0] = hidden
    logits = next(v for v in graph.output if v.name == "logits")
    logits.type.tensor_type.shape.dim[1].dim_param = LOGITS_SEQUENCE


_SYMBOL = re.compile(r"\b[a-z]\d+\b")


def name_dimensions(proto: onnx.ModelProto, graph: ExportGraph) -> None:
    """Rename the tracer's symbols (``s43``) to the graph's dimension names (``batch``)
    and check that every input and output has its declared shape."""
    symbols: dict[str, str] = {}
    for value, (name, dims) in zip(proto.graph.input, graph.inputs()):
        for axis, (dim, want) in enumerate(zip(value.type.tensor_type.shape.dim, dims)):
            if not isinstance(want, str):
                continue
            if not dim.HasField("dim_param"):
                raise ExportError(f"{graph.name}.onnx: input {name} axis {axis} ({want}) was fixed to "
                                  f"{dim.dim_value} while tracing; a component treats it as a constant")
            if symbols.setdefault(dim.dim_param, want) != want:
                raise ExportError(f"{graph.name}.onnx: the tracer merged dimensions {symbols[dim.dim_param]} "
                                  f"and {want}; a component ties them together")
    values = [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]
    for value in values:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = _SYMBOL.sub(lambda m: symbols.get(m.group(0), m.group(0)), dim.dim_param)
    declared = [*graph.inputs(), *graph.outputs()]
    for value, (name, dims) in zip([*proto.graph.input, *proto.graph.output], declared):
        shape = io_entry(value)["shape"]
        if value.name != name or [dim_terms(d) for d in shape] != [dim_terms(d) for d in dims]:
            raise ExportError(f"{graph.name}.onnx: {value.name} has shape {shape}, expected {name} {list(dims)}; "
                              "a component changes a dimension the runtime relies on")
        for dim, want in zip(value.type.tensor_type.shape.dim, dims):
            if isinstance(want, str):
                dim.dim_param = want  # one spelling of each sum


def attention_operator(out: Path, entries: dict) -> str:
    """Which form attention took: the fused ``Attention`` operator or plain operators."""
    fused = folded = 0
    for entry in entries.values():
        proto = onnx.load(str(out / entry["file"]), load_external_data=False)
        attention = [node for node in proto.graph.node if node.op_type == "Attention"]
        fused += len(attention)
        folded += sum(len(node.input) > 4 or any(a.name == "q_num_heads" for a in node.attribute) for node in attention)
    if not fused:
        return "MatMul/Softmax (unfused)"
    return f"Attention (fused, {fused} nodes, {folded} doing the cache and heads themselves)"


def copy_tokenizer(spec: ModelSpec, out: Path, tokenizer_dir: str | Path | None) -> list[str]:
    """Copy the tokenizer files: from ``tokenizer_dir`` when it has any, else the
    packaged GPT-2 files for a spec whose tokenizer is ``gpt2``; return their names."""
    sources: list[Path] = []
    if tokenizer_dir is not None and Path(tokenizer_dir).is_dir():
        sources = [Path(tokenizer_dir) / name for name in TOKENIZER_FILES if (Path(tokenizer_dir) / name).is_file()]
    if not sources and spec.tokenizer == "gpt2":  # vocab.json, merges.txt and their licence
        assets = Path(str(resources.files("zoo") / "assets" / "gpt2"))
        sources = sorted(p for p in assets.iterdir() if p.is_file())
    for source in sources:
        shutil.copyfile(source, out / source.name)
    return [s.name for s in sources]


def run_verification(reference: Reference, out: Path) -> dict:
    """Run ONNX Runtime against PyTorch's outputs, print and save the report; raise on a mismatch."""
    name = reference.model
    try:
        report = verify_export(reference, out)
    except ZooError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(f"ONNX Runtime cannot run the export of {name}: {first_line(exc)}") from None
    (out / VERIFICATION).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    tqdm.write(report.text(), file=sys.stderr)
    if not report.passed:
        worst = report.worst()
        raise ExportError(f"ONNX Runtime disagrees with PyTorch on {name}: max |difference| "
                          f"{worst.max_abs_diff:.2e} exceeds {worst.tolerance} ({worst.describe()}); "
                          "nothing was written")
    return report.summary()


def run_quantized_verification(reference: Reference, out: Path, settings: QuantizeSettings) -> dict:
    """Compare a quantized export with the fp32 model on quantization's criteria (top-1
    agreement, relative logit error); save the report and raise when it fails."""
    try:
        report = verify_quantized_export(reference, out, settings.scheme)
    except ZooError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(f"ONNX Runtime cannot run the {settings.scheme} export of {reference.model}: "
                          f"{first_line(exc)}") from None
    (out / VERIFICATION).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    tqdm.write(report.text(), file=sys.stderr)
    if not report.passed:
        raise ExportError(f"the {settings.scheme} export of {reference.model} is too far from fp32: "
                          f"{report.failure()}; nothing was written")
    return report.summary()
