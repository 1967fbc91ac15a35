"""A translator's graphs in the layout transformers.js and Optimum run encoder-decoders in.

zoo's ``onnx`` exporter writes a translator as three graphs (:mod:`zoo.exporters.onnx.graphs`):
``encoder``, ``cross_attention_kv`` (memory → every decoder layer's cross-attention keys and
values, once per source) and ``decoder`` (one step, given those). Hugging Face's clients run two:

- ``encoder_model.onnx``: ``input_ids``, ``attention_mask`` → ``last_hidden_state``; zoo's
  encoder with its edges renamed.
- ``decoder_model_merged.onnx``: ``input_ids``, ``encoder_hidden_states``,
  ``encoder_attention_mask``, ``past_key_values.{i}.decoder|encoder.key|value`` and the boolean
  ``use_cache_branch`` → ``logits``, ``present.{i}.decoder|encoder.key|value``. An ONNX ``If`` on
  ``use_cache_branch`` either computes the cross-attention keys and values from
  ``encoder_hidden_states`` (zoo's ``cross_attention_kv`` graph, the first step) or passes the
  past ones through (every later step), and zoo's decoder step follows. The decoder's
  ``tgt_mask`` input becomes ones over past + new positions, since these clients give the
  decoder no mask of its own (they pad no target).

Nodes of the cross-attention branch that read only weights (a quantized graph's
expand-at-load chains) move out of the branch so that ONNX Runtime folds them at load as it
does in the main graph. :func:`check_merged` runs the two layouts side by side in ONNX Runtime.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ENCODER_FILE = "encoder_model{suffix}.onnx"
DECODER_FILE = "decoder_model_merged{suffix}.onnx"
USE_CACHE_BRANCH = "use_cache_branch"
BRANCH_PREFIX = "cross_kv/"

# Optimum's dimension names, which transformers.js resolves when it makes the first step's empty cache
ENCODER_DIMENSIONS = {"batch": "batch_size", "source_sequence": "encoder_sequence_length"}
DECODER_DIMENSIONS = {"batch": "batch_size", "sequence": "decoder_sequence_length",
                      "past_sequence": "past_decoder_sequence_length", "source_sequence": "encoder_sequence_length"}
PAST_ENCODER_LENGTH = "encoder_sequence_length_out"


def slots(n_layers: int) -> list[tuple[int, str]]:
    """(layer, ``key``/``value``) of every cache tensor, in the clients' order."""
    return [(i, part) for i in range(n_layers) for part in ("key", "value")]


def past(layer: int, side: str, part: str) -> str:
    return f"past_key_values.{layer}.{side}.{part}"


def present(layer: int, side: str, part: str) -> str:
    return f"present.{layer}.{side}.{part}"


def encoder_for_clients(proto: onnx.ModelProto) -> onnx.ModelProto:
    """zoo's encoder graph with the clients' names: ``input_ids``, ``attention_mask`` → ``last_hidden_state``."""
    rename(proto.graph, {"src_ids": "input_ids", "src_mask": "attention_mask", "memory": "last_hidden_state"})
    rename_dimensions(proto.graph, ENCODER_DIMENSIONS)
    return proto


def merged_decoder(cross_kv: onnx.ModelProto, decoder: onnx.ModelProto, n_layers: int) -> onnx.ModelProto:
    """One graph from zoo's ``cross_attention_kv`` and ``decoder`` graphs (see the module doc)."""
    graph = decoder.graph
    names = {"tgt_ids": "input_ids", "src_mask": "encoder_attention_mask"}
    for i, part in slots(n_layers):
        names[f"past_key_values.{i}.{part}"] = past(i, "decoder", part)
        names[f"present.{i}.{part}"] = present(i, "decoder", part)
        names[f"memory_{part}_{i}"] = present(i, "encoder", part)
    rename(graph, names)
    rename_dimensions(graph, DECODER_DIMENSIONS)

    memory = next(v for v in cross_kv.graph.input if v.name == "memory")
    memory_type = memory.type.tensor_type.elem_type
    d_model = memory.type.tensor_type.shape.dim[2].dim_value
    first_past = next(v for v in graph.input if v.name == past(0, "decoder", "key"))
    kv_dims = [d.dim_value for d in first_past.type.tensor_type.shape.dim]  # (batch, heads, past, head_dim)

    hoisted, branch_nodes, branch_outputs = cross_kv_branch(cross_kv, n_layers)
    reuse_nodes, reuse_outputs = [], []
    for i, part in slots(n_layers):
        out = f"reuse/{i}.{part}"
        reuse_nodes.append(helper.make_node("Identity", [past(i, "encoder", part)], [out], name=out))
        reuse_outputs.append(helper.make_tensor_value_info(out, memory_type, None))
    choose = helper.make_node(
        "If", [USE_CACHE_BRANCH], [present(i, "encoder", part) for i, part in slots(n_layers)],
        name="cross_attention_kv_or_past",
        then_branch=helper.make_graph(reuse_nodes, "past_cross_attention_kv", [], reuse_outputs),
        else_branch=helper.make_graph(branch_nodes, "compute_cross_attention_kv", [], branch_outputs))

    pasts = [past(i, "decoder", part) for i, part in slots(n_layers)]
    used = {name: f"{name}/used" for name in pasts}
    for node in graph.node:
        node.input[:] = [used.get(n, n) for n in node.input]
    tgt_mask = [*past_if_cached(pasts, used), *ones_over_past_and_new(used[pasts[0]])]
    kept_inputs = [v for v in graph.input if v.name != "tgt_mask" and not v.name.startswith("present.")]
    new_inputs = [helper.make_tensor_value_info("encoder_hidden_states", memory_type,
                                                ["batch_size", "encoder_sequence_length", d_model])]
    new_inputs += [helper.make_tensor_value_info(past(i, "encoder", part), memory_type,
                                                 ["batch_size", kv_dims[1], PAST_ENCODER_LENGTH, kv_dims[3]])
                   for i, part in slots(n_layers)]
    new_inputs.append(helper.make_tensor_value_info(USE_CACHE_BRANCH, TensorProto.BOOL, [1]))
    encoder_outputs = [helper.make_tensor_value_info(present(i, "encoder", part), memory_type,
                                                     ["batch_size", kv_dims[1], "encoder_sequence_length", kv_dims[3]])
                       for i, part in slots(n_layers)]
    nodes = [*tgt_mask, *hoisted, choose, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[:]
    graph.input.extend(sorted([*kept_inputs, *new_inputs], key=lambda v: client_order(v.name)))
    outputs = sorted([*graph.output, *encoder_outputs], key=lambda v: client_order(v.name))
    del graph.output[:]
    graph.output.extend(outputs)  # Optimum takes the presents back as pasts by position
    graph.initializer.extend(cross_kv.graph.initializer)
    known = {f.name for f in decoder.functions}
    decoder.functions.extend(f for f in cross_kv.functions if f.name not in known)
    stale = [v for v in graph.value_info if v.name.startswith("present.")]  # the If's outputs are declared above
    for value in stale:
        graph.value_info.remove(value)
    return decoder


def cross_kv_branch(cross_kv: onnx.ModelProto, n_layers: int) -> tuple[list, list, list]:
    """The ``cross_attention_kv`` graph's nodes as the ``If``'s else-branch, reading
    ``encoder_hidden_states`` from the outer graph: (nodes hoisted out, branch nodes, branch outputs)."""
    graph = cross_kv.graph
    names = {value: f"{BRANCH_PREFIX}{value}" for node in graph.node for value in node.output if value}
    names.update({t.name: f"{BRANCH_PREFIX}{t.name}" for t in graph.initializer})
    names["memory"] = "encoder_hidden_states"
    rename(graph, names)
    for index, node in enumerate(graph.node):
        node.name = f"{BRANCH_PREFIX}{node.name or index}"
    constant = {t.name for t in graph.initializer}
    hoisted, kept = [], []
    for node in graph.node:  # in topological order, as exported
        subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if node.input and all(not name or name in constant for name in node.input) and not subgraph:
            hoisted.append(node)
            constant.update(node.output)
        else:
            kept.append(node)
    types = {v.name: v.type.tensor_type.elem_type for v in graph.output}
    branch_outputs = [helper.make_tensor_value_info(names[f"memory_{part}_{i}"], types[names[f"memory_{part}_{i}"]],
                                                    None) for i, part in slots(n_layers)]
    return hoisted, kept, branch_outputs


def client_order(name: str) -> tuple:
    """Optimum's order of the merged decoder's inputs and outputs: the plain ones, then each
    layer's decoder key, value, encoder key, value, then ``use_cache_branch``."""
    plain = ("logits", "encoder_attention_mask", "input_ids", "encoder_hidden_states")
    if name in plain:
        return (0, plain.index(name))
    if name == USE_CACHE_BRANCH:
        return (2,)
    layer, side, part = re.fullmatch(r"(?:past_key_values|present)\.(\d+)\.(decoder|encoder)\.(key|value)", name).groups()
    return (1, int(layer), side == "encoder", part == "value")


def past_if_cached(pasts: list[str], used: dict[str, str]) -> list:
    """Nodes giving each past decoder input cut to length 0 unless ``use_cache_branch``: the first
    step ignores whatever stands in for the empty past (Optimum feeds one position, transformers.js none)."""
    nodes = [
        helper.make_node("Cast", [USE_CACHE_BRANCH], ["past/keep"], name="past/keep", to=TensorProto.INT64),
        helper.make_node("Shape", [pasts[0]], ["past/length"], name="past/length", start=2, end=3),
        helper.make_node("Mul", ["past/keep", "past/length"], ["past/end"], name="past/end"),
    ]
    nodes.append(helper.make_node("Constant", [], ["past/axis"], name="past/axis",
                                  value=helper.make_tensor("past/axis", TensorProto.INT64, [1], [2])))
    nodes.append(helper.make_node("Constant", [], ["past/start"], name="past/start",
                                  value=helper.make_tensor("past/start", TensorProto.INT64, [1], [0])))
    nodes += [helper.make_node("Slice", [name, "past/start", "past/end", "past/axis"], [used[name]], name=used[name])
              for name in pasts]
    return nodes


def ones_over_past_and_new(past_key: str) -> list:
    """Nodes computing ``tgt_mask`` = ones (batch, past + new) from ``input_ids`` and the past keys."""
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    return [
        helper.make_node("Shape", ["input_ids"], ["tgt_mask/batch"], name="tgt_mask/batch", start=0, end=1),
        helper.make_node("Shape", ["input_ids"], ["tgt_mask/new"], name="tgt_mask/new", start=1, end=2),
        helper.make_node("Shape", [past_key], ["tgt_mask/past"], name="tgt_mask/past", start=2, end=3),
        helper.make_node("Add", ["tgt_mask/past", "tgt_mask/new"], ["tgt_mask/total"], name="tgt_mask/total"),
        helper.make_node("Concat", ["tgt_mask/batch", "tgt_mask/total"], ["tgt_mask/shape"], name="tgt_mask/shape",
                         axis=0),
        helper.make_node("ConstantOfShape", ["tgt_mask/shape"], ["tgt_mask"], name="tgt_mask", value=one),
    ]


def rename(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    """Rename values of ``graph`` (node edges, inputs, outputs, value_info, initializers) in place."""
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        value.name = names.get(value.name, value.name)


def rename_dimensions(graph: onnx.GraphProto, dimensions: dict[str, str]) -> None:
    """Rename the symbolic dimensions of ``graph``'s inputs, outputs and value infos in place,
    whole words only (``past_sequence + sequence``), longest names first."""
    pattern = re.compile(r"\b(" + "|".join(sorted(dimensions, key=len, reverse=True)) + r")\b")
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = pattern.sub(lambda m: dimensions[m.group(1)], dim.dim_param)


def check_merged(work: Path, manifest: dict, onnx_dir: Path, files: tuple[str, str], n_layers: int,
                 vocab_size: int) -> dict:
    """Run zoo's three graphs (in ``work``, verified against PyTorch by the onnx exporter) and the
    clients' two (``files`` in ``onnx_dir``) side by side in ONNX Runtime on a padded batch, a
    first step of three tokens and a cached step of one; return the largest logit difference,
    or raise ExportError when the layouts disagree."""
    import onnxruntime as ort

    from zoo.errors import ExportError

    def session(path: Path):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    graphs = {name: session(work / entry["file"]) for name, entry in manifest["graphs"].items()}
    encoder, decoder = (session(onnx_dir / file) for file in files)
    rng = np.random.default_rng(0)
    src = rng.integers(4, vocab_size, (2, 7), dtype=np.int64)
    src_mask = np.ones_like(src)
    src_mask[1, 5:] = 0
    first, second = rng.integers(4, vocab_size, (2, 3), dtype=np.int64), rng.integers(4, vocab_size, (2, 1), dtype=np.int64)
    past_shape = next(i for i in graphs["decoder"].get_inputs() if i.name == "past_key_values.0.key").shape
    kv_type = np.float16 if "float16" in graphs["cross_attention_kv"].get_outputs()[0].type else np.float32
    empty = np.zeros((2, past_shape[1], 0, past_shape[3]), kv_type)

    memory = graphs["encoder"].run(None, {"src_ids": src, "src_mask": src_mask})[0]
    memory_kv = dict(zip([o.name for o in graphs["cross_attention_kv"].get_outputs()],
                         graphs["cross_attention_kv"].run(None, {"memory": memory})))
    ours, past_kv = [], {f"past_key_values.{i}.{part}": empty for i, part in slots(n_layers)}
    for step, length in ((first, 3), (second, 4)):
        out = graphs["decoder"].run(None, {"tgt_ids": step, "tgt_mask": np.ones((2, length), np.int64),
                                           "src_mask": src_mask, **past_kv, **memory_kv})
        ours.append(out[0])
        past_kv = {f"past_key_values.{i}.{part}": tensor for (i, part), tensor in zip(slots(n_layers), out[1:])}

    hidden = encoder.run(None, {"input_ids": src, "attention_mask": src_mask})[0]
    names = [o.name for o in decoder.get_outputs()]

    def client_steps(stand_in: np.ndarray) -> list[np.ndarray]:
        """The two steps as a client runs them, the first with ``stand_in`` for every past."""
        logits, cache = [], {past(i, side, part): stand_in for i, part in slots(n_layers) for side in ("decoder", "encoder")}
        for step, use_cache in ((first, False), (second, True)):
            out = dict(zip(names, decoder.run(None, {"input_ids": step, "encoder_hidden_states": hidden,
                                                     "encoder_attention_mask": src_mask, **cache,
                                                     USE_CACHE_BRANCH: np.array([use_cache])})))
            logits.append(out["logits"])
            cache = {name.replace("present", "past_key_values"): value for name, value in out.items()
                     if name != "logits"}
        return logits

    junk = rng.standard_normal((2, past_shape[1], 1, past_shape[3])).astype(kv_type)  # Optimum's first past
    theirs = [*client_steps(empty), *client_steps(junk)]  # transformers.js gives empty pasts, Optimum one position
    scale = max(1.0, float(np.abs(ours[0]).max()))
    tolerance = (1e-2 if kv_type == np.float16 else 1e-4) * scale
    diffs = [float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max()) for a, b in
             ((memory, hidden), *zip(ours + ours, theirs))]
    if max(diffs) > tolerance:
        raise ExportError(f"{files[1]} does not compute what zoo's decoder graphs compute (largest difference "
                          f"{max(diffs):.3g} > {tolerance:.3g}); please report this with the model's spec")
    return {"max_abs_diff": max(diffs), "tolerance": tolerance,
            "against": "zoo's encoder, cross_attention_kv and decoder graphs in ONNX Runtime: a padded batch of 2, "
                       "a first step of 3 tokens (pasts empty, then one junk position) and a cached step of 1"}
