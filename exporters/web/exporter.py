"""The ``web`` exporter: a folder that transformers.js (browser or Node) and Optimum load as it is.

    zoo export gpt2 --format web -o out/gpt2-web                     # fp32 + q4 graphs
    zoo export gpt2 --format web --variants fp32,fp16,q4,int8 -o out/gpt2-web
    zoo serve-web out/gpt2-web                                       # a page that generates with it

    // transformers.js, in a page or in Node:
    const generator = await pipeline("text-generation", "gpt2-web", { dtype: "q4" });

Why a format of its own rather than more files in the ``onnx`` directory: Hugging Face's
clients read a different layout (``config.json`` with a ``model_type`` they know at the top,
graphs under ``onnx/`` named by precision, each graph one file), and one folder holds several
precisions of the same model, where an ``onnx`` export is one graph set in one precision.
Each graph is still made, quantized and verified against PyTorch by the ``onnx`` exporter,
with the key/value cache: this module only lays its decoder graph out as Hugging Face's
clients expect:

- ``onnx/model.onnx`` (fp32), ``model_fp16.onnx``, ``model_q4.onnx``, ``model_int8.onnx``:
  the names transformers.js picks by ``dtype``. The quantized graphs keep their weights 4- or
  8-bit in the file and expand them to fp32 when the session loads
  (:func:`zoo.exporters.onnx.quantize.expand_at_load`): onnxruntime-web's WebAssembly
  ``MatMulNBits`` is 6x slower than its fp32 MatMul on a whole model, so the download is small
  and the compute fp32. (``--format onnx --quantize`` keeps ``MatMulNBits``, fast natively.) A graph past protobuf's 2 GB limit keeps
  its weights in ``model{suffix}.onnx_data``, declared in ``config.json`` under
  ``transformers.js_config.use_external_data_format``.
- ``config.json``: the transformers config of the checkpoint family the model fits (``gpt2``,
  ``llama``, ``qwen2``, ``gpt_neox``). A model no family describes (a plugin attention,
  rotary with ALiBi...) gets a ``llama`` config with its sizes: the graph's inputs and outputs
  are the standard decoder's, and what the clients take from the config is only the cache's
  shape (layers, key/value heads, head size) and the special tokens, so generation is
  exact; ``zoo.stand_in`` in the config says so. ``transformers.js_config.dtype`` names the
  precision a client gets when it asks for none (the smallest written).
- An encoder-decoder (a translator run) is written as ``onnx/encoder_model{suffix}.onnx`` and
  ``onnx/decoder_model_merged{suffix}.onnx`` (:mod:`zoo.exporters.web.seq2seq`) with a ``marian``
  config (a stand-in when Marian's layout does not hold the model) and the run's shared
  vocabulary as the tokenizer.
- ``generation_config.json`` and the tokenizer (``tokenizer.json`` + ``tokenizer_config.json``).
- ``manifest.json``: variants, each one's verification, and the sha256 of every file.

Operators that onnxruntime-web has no kernel for (:data:`WEB_MISSING_OPERATORS`) are refused
with a line naming the operator and the way around it; nothing is written then.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import torch
from torch import nn

from zoo.core.files import write_manifest
from zoo.core.spec import ModelSpec
from zoo.errors import ExportError
from zoo.exporters.web.folder import (CONFIG, ONNX_DIR, SMALLEST_FIRST, TOKENIZER_FILES, VARIANTS,
                                     check_folder, parse_variants)
from zoo.exporters.web.seq2seq import check_merged, encoder_for_clients, merged_decoder, rename_dimensions

PROTOBUF_LIMIT = 2 * 1024**3  # one .onnx file cannot hold more
STAND_IN_TYPE = "llama"  # the generic decoder-only model_type of transformers.js and Optimum

# Operators a zoo graph could hold that onnxruntime-web's WebAssembly build (the one
# transformers.js loads in browsers, ort-wasm-simd-threaded.asyncify) has no kernel for, and
# what avoids each. tests/test_web.py checks every entry against onnxruntime-web itself.
WEB_MISSING_OPERATORS = {
    ("com.microsoft", "GatherBlockQuantized"): "zoo's quantizer looks embeddings up with standard operators; "
                                               "quantize with `zoo export --format web --variants q4`",
}


def web_exporter(model: nn.Module, spec: ModelSpec, out_dir: str | Path, *, opset: int | None = None,
                 verify: bool = True, tokenizer_dir: str | Path | None = None, variants=None,
                 block_size: int | None = None) -> dict:
    """Write the web folder of ``model`` into ``out_dir`` (a fresh temporary directory that
    :func:`zoo.core.export.export_model` renames into place); return the manifest.

    ``variants``: transformers.js dtypes to write (:data:`VARIANTS`; default fp32 and q4);
    ``block_size``: the quantized variants' block. The graphs always have the key/value cache.
    """
    from zoo.exporters.onnx.exporter import onnx_exporter

    out = Path(out_dir)
    names = parse_variants(variants)
    seq2seq = spec.is_encoder_decoder
    (out / ONNX_DIR).mkdir()
    entries, inputs = {}, {}  # inputs: of each graph file of the first variant
    scratch = out / ".onnx-exports"  # inside the directory being written: a failure leaves nothing anywhere
    try:
        for name in names:
            variant = VARIANTS[name]
            work = scratch / name
            work.mkdir(parents=True)
            manifest = onnx_exporter(model, spec, work, kv_cache=True, dtype=variant.onnx_dtype, opset=opset,
                                     verify=verify, tokenizer_dir=tokenizer_dir, quantize=variant.quantize,
                                     block_size=block_size if variant.quantize else None)
            graphs = client_graphs(work, manifest, spec, quantized=bool(variant.quantize))
            entries[name] = {"files": {}}
            for file, (proto, expanded) in zip(variant.files(seq2seq), graphs):
                entries[name]["files"][file] = {**place_graph(proto, out / ONNX_DIR / file),
                                                **({"expanded_at_load": expanded} if variant.quantize else {})}
                if name == names[0]:
                    inputs[file] = [i.name for i in proto.graph.input]
            if seq2seq:
                entries[name]["merge_check"] = check_merged(work, manifest, out / ONNX_DIR, variant.files(True),
                                                            spec.n_decoder_layers, spec.vocab_size)
            entries[name].update({k: manifest[k] for k in ("opset", "attention_operator", "quantization", "verification")
                                  if k in manifest})
            if name == names[0]:
                tokenizer = (write_translator_tokenizer(spec, tokenizer_dir, out) if seq2seq
                             else copy_tokenizer_files(work, out))
            shutil.rmtree(work)  # one variant's export at a time on disk
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    config, stand_in = write_configs(spec, out, names, entries)
    manifest = {"format": "web", "model": spec.name, "config": config, "stand_in": stand_in,
                "variants": entries, "tokenizer": tokenizer, "inputs": inputs,
                **({} if tokenizer else {"tokenizer_reason": no_tokenizer_reason(spec, tokenizer_dir)}),
                "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__}}
    check_folder(out)
    return write_manifest(out, manifest)


def client_graphs(work: Path, manifest: dict, spec: ModelSpec, quantized: bool) -> list[tuple[onnx.ModelProto, int]]:
    """The onnx export in ``work`` as the graphs transformers.js runs, in :meth:`Variant.files` order
    (the decoder as it is, or an encoder-decoder's encoder and merged decoder), each with the
    number of quantized matrices expanded at load (:func:`expand_at_load`)."""
    from zoo.exporters.onnx.quantize import expand_at_load

    protos, expanded = {}, {}
    for name, entry in manifest["graphs"].items():
        protos[name] = onnx.load(str(work / entry["file"]))
        expanded[name] = expand_at_load(protos[name]) if quantized else 0
        if expanded[name] and spec.is_encoder_decoder:  # check_merged compares against what the clients compute
            copy = onnx.ModelProto()
            copy.CopyFrom(protos[name])  # saving with external data rewrites the proto it saves
            onnx.save_model(copy, str(work / entry["file"]), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=f"{entry['file']}.expanded.data")
    if not spec.is_encoder_decoder:
        return [(protos["decoder"], expanded["decoder"])]
    merged = merged_decoder(protos["cross_attention_kv"], protos["decoder"], spec.n_decoder_layers)
    return [(encoder_for_clients(protos["encoder"]), expanded["encoder"]),
            (merged, expanded["cross_attention_kv"] + expanded["decoder"])]


def place_graph(proto: onnx.ModelProto, target: Path) -> dict:
    """Save ``proto`` as ``target``: one file, or with its weights in ``.onnx_data`` past
    protobuf's limit; refuse operators the web lacks first."""
    refuse_missing_operators(proto, target.name)
    name_dimensions_as_clients_do(proto.graph)
    weights = sum(len(t.raw_data) for t in proto.graph.initializer)
    external = weights >= PROTOBUF_LIMIT - (64 << 20)
    if external:
        onnx.save_model(proto, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{target.name}_data", size_threshold=1024)
    else:
        onnx.save_model(proto, str(target))
    return {"external_data": external}


# zoo's dimension names -> Optimum's, which transformers.js resolves when it makes the empty cache
# of the first step (an unknown name becomes 0: a cache of batch 0 that the graph cannot reshape).
CLIENT_DIMENSIONS = {"batch": "batch_size", "sequence": "sequence_length", "past_sequence": "past_sequence_length"}


def name_dimensions_as_clients_do(graph: onnx.GraphProto) -> None:
    """Rename the symbolic dimensions of ``graph`` (``batch`` → ``batch_size``, ...) in place."""
    rename_dimensions(graph, CLIENT_DIMENSIONS)


def refuse_missing_operators(proto: onnx.ModelProto, file: str) -> None:
    """Raise when the graph holds an operator onnxruntime-web cannot run."""
    for node in proto.graph.node:
        fix = WEB_MISSING_OPERATORS.get((node.domain or "", node.op_type))
        if fix:
            domain = f"{node.domain}." if node.domain else ""
            raise ExportError(f"{file} uses {domain}{node.op_type} (node {node.name!r}), which onnxruntime-web has no "
                              f"kernel for: {fix}; nothing was written")


def copy_tokenizer_files(work: Path, out: Path) -> list[str]:
    """The tokenizer files the onnx exporter wrote (for genai, the same ones transformers.js reads)."""
    if not all((work / name).is_file() for name in TOKENIZER_FILES):
        return []
    names = [*TOKENIZER_FILES, *(["LICENSE"] if (work / "LICENSE").is_file() else [])]  # GPT-2's vocabulary licence
    for name in names:
        shutil.copyfile(work / name, out / name)
    return names


def write_configs(spec: ModelSpec, out: Path, names: tuple, entries: dict) -> tuple[str, bool]:
    """``config.json`` and ``generation_config.json``; return the model_type and whether it is a stand-in."""
    from transformers import GenerationConfig

    from zoo.hf.formats import format_for_spec, layout_problem

    stand_in = layout_problem(spec) is not None
    if stand_in:
        config = translator_config(spec) if spec.is_encoder_decoder else stand_in_config(spec)
    else:
        config = format_for_spec(spec).hf_config(spec, torch.float32)
    values = config.to_dict()
    external = {file: 1 for n in names for file, placed in entries[n]["files"].items() if placed["external_data"]}
    values["transformers.js_config"] = {"dtype": next(name for name in SMALLEST_FIRST if name in names),
                                        **({"use_external_data_format": external} if external else {})}
    if stand_in:
        values["zoo"] = {"stand_in": f"{spec.name} is described by no transformers model_type; this {config.model_type} "
                                     "config gives clients the cache shape and special tokens of the ONNX graphs, "
                                     "which compute the model itself"}
    (out / CONFIG).write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
    generation = GenerationConfig.from_model_config(config)
    if spec.is_encoder_decoder:  # greedy from <s> to </s>, as zoo translate
        generation.max_length, generation.num_beams, generation.do_sample = spec.context_length, 1, False
    generation.save_pretrained(out)
    return values["model_type"], stand_in


def translator_config(spec: ModelSpec):
    """A ``marian`` config with the sizes of an encoder-decoder Marian's layout does not hold
    (the clients take the cache shape and special tokens from it)."""
    from transformers import MarianConfig

    return MarianConfig(vocab_size=spec.vocab_size, decoder_vocab_size=spec.vocab_size, d_model=spec.d_model,
                        encoder_layers=spec.n_layers, decoder_layers=spec.n_decoder_layers,
                        encoder_attention_heads=spec.n_heads, decoder_attention_heads=spec.n_heads,
                        encoder_ffn_dim=spec.d_ff, decoder_ffn_dim=spec.d_ff, max_position_embeddings=spec.context_length,
                        pad_token_id=spec.pad_token_id, bos_token_id=spec.bos_token_id,
                        eos_token_id=spec.eos_token_id, decoder_start_token_id=spec.bos_token_id,
                        forced_eos_token_id=None, tie_word_embeddings=spec.tie_embeddings,
                        architectures=["MarianMTModel"])


def write_translator_tokenizer(spec: ModelSpec, run_dir: str | Path | None, out: Path) -> list[str]:
    """The run's shared vocabulary as a Hugging Face tokenizer (as the ``hf`` exporter writes it), or none."""
    from zoo.hf.marian import save_marian_tokenizer, shared_vocabulary_problem
    from zoo.translation.vocabulary import Vocabulary

    if run_dir is None or shared_vocabulary_problem(Path(run_dir)):
        return []
    return save_marian_tokenizer(Vocabulary.load(run_dir).source, spec.context_length, out)


def no_tokenizer_reason(spec: ModelSpec, tokenizer_dir: str | Path | None) -> str:
    if spec.is_encoder_decoder:
        from zoo.hf.marian import shared_vocabulary_problem

        why = (shared_vocabulary_problem(Path(tokenizer_dir)) if tokenizer_dir else
               "a translator's vocabulary lives in its run directory (zoo export RUN_DIR --format web)")
        return f"{why}: clients must give token ids"
    return f"no tokenizer is known for the {spec.tokenizer or 'unnamed'} vocabulary: clients must give token ids"


def stand_in_config(spec: ModelSpec):
    """A ``llama`` config with ``spec``'s sizes and special tokens (see the module docstring)."""
    from transformers import LlamaConfig

    eos = spec.eos_token_id
    return LlamaConfig(vocab_size=spec.vocab_size, hidden_size=spec.d_model, num_hidden_layers=spec.n_layers,
                       num_attention_heads=spec.n_heads, num_key_value_heads=spec.n_kv_heads, head_dim=spec.head_dim,
                       intermediate_size=spec.d_ff,
                       max_position_embeddings=spec.context_length, bos_token_id=spec.bos_token_id,
                       eos_token_id=eos, pad_token_id=spec.pad_token_id, tie_word_embeddings=spec.tie_embeddings,
                       architectures=["LlamaForCausalLM"])
