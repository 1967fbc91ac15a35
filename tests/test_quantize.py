"""Weight-only quantized ONNX exports (``zoo export --quantize int4|int8``): they load in
ONNX Runtime, generate through zoo's runtime, store the tied table once and quantized,
shrink the files, agree with fp32, and refuse bad options in one line."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import zoo
from conftest import tiny_overrides
from zoo.cli import cli
from zoo.errors import ExportError
from zoo.exporters.onnx import quantize as onnx_quantize
from zoo.exporters.onnx import runtime
from zoo import export

# top-1 agreement with fp32 that each scheme must reach here (the test's own numbers, not the exporter's)
TOP1_AGREEMENT = {"int8": 0.95, "int4": 0.7}
# greedy translations' tokens equal to fp32 PyTorch's (100% for both when written)
TOKEN_AGREEMENT = {"int8": 0.9, "int4": 0.6}

# a table-dominated decoder: the 16384 x 64 table is ~30x the weights of its one layer, so it
# outweighs the graph file itself (~70 kB of nodes, fixed)
TABLE_HEAVY = {"vocab_size": 16384, "d_model": 64, "n_layers": 1, "mlp.d_ff": 128, "bos_token_id": 2047,
               "eos_token_id": 2047}
SIZE_LIMITS = {"int4": 0.20, "int8": 0.30}  # of the fp32 export's graphs + weights


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """``exports(name, scheme)`` → (fp32 PyTorch model, export directory), made once each."""
    made = {}

    def get(name: str, scheme: str | None):
        if (name, scheme) not in made:
            overrides = tiny_overrides(name, **({} if name.startswith("transformer") else TABLE_HEAVY))
            model = zoo.build(name, seed=0, **overrides)
            out = tmp_path_factory.mktemp("quant") / f"{name}-{scheme or 'fp32'}"
            export(model, out, kv_cache=True, quantize=scheme)
            made[name, scheme] = model, out
        return made[name, scheme]

    return get


def weight_bytes(directory) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.onnx*"))


def initializers(path) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in onnx.load(str(path), load_external_data=False).graph.initializer}


@pytest.mark.parametrize("scheme", ["int4", "int8"])
def test_decoder_generates_through_zoo_runtime(exports, scheme):
    from zoo.generation.sampling import generate

    model, out = exports("gpt2", scheme)
    lm = runtime.load(out)
    prompt = torch.randint(0, 2047, (2, 6), generator=torch.Generator().manual_seed(1))
    ids = generate(lm, prompt, max_new_tokens=8)
    assert ids.shape == (2, 14) and torch.equal(ids[:, :6], prompt)
    with torch.inference_mode():  # top-1 agreement with fp32 over every position of a prompt
        want = model(ids).argmax(-1)
        got = lm(ids, cache=lm.new_cache(2, ids.shape[1])).argmax(-1)
    assert (got == want).float().mean() >= TOP1_AGREEMENT[scheme]


@pytest.mark.parametrize("scheme", ["int4", "int8"])
def test_tied_table_is_stored_once_quantized(exports, scheme):
    model, out = exports("gpt2", scheme)
    spec = model.spec
    proto = onnx.load(str(out / "decoder.onnx"), load_external_data=False)
    inits = initializers(out / "decoder.onnx")
    table_shapes = {(spec.vocab_size, spec.d_model), (spec.d_model, spec.vocab_size)}
    fp32_tables = [n for n, i in inits.items() if i.data_type == onnx.TensorProto.FLOAT and tuple(i.dims) in table_shapes]
    assert not fp32_tables
    packed = [n for n, i in inits.items() if i.data_type == onnx.TensorProto.UINT8 and i.dims[0] == spec.vocab_size]
    assert len(packed) == 1  # one blob for the lookup and the head
    readers = {n.op_type for n in proto.graph.node if packed[0] in n.input}
    assert readers == {"Gather", "MatMulNBits"}  # standard ops for the lookup: onnxruntime-web runs it
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["scheme"] == scheme
    assert manifest["quantization"]["graphs"]["decoder"]["heads"] == 1
    assert manifest["verification"]["passed"] and manifest["verification"]["scheme"] == scheme


@pytest.mark.parametrize("scheme", ["int4", "int8"])
def test_size_against_fp32_when_the_table_dominates(exports, scheme):
    _, fp32 = exports("gpt2", None)
    _, quantized = exports("gpt2", scheme)
    assert weight_bytes(quantized) <= SIZE_LIMITS[scheme] * weight_bytes(fp32)


@pytest.mark.parametrize("scheme", ["int4", "int8"])
def test_encoder_decoder_translates_quantized(exports, scheme):
    from zoo.translation.search import greedy_search

    model, out = exports("transformer-en-it", scheme)
    seq2seq = runtime.load(out)
    src = torch.randint(3, 97, (3, 7), generator=torch.Generator().manual_seed(3))
    src_mask = torch.ones_like(src)
    with torch.inference_mode():
        hypotheses = greedy_search(seq2seq, src, src_mask, 9)
        want = greedy_search(model, src, src_mask, 9)  # fp32 PyTorch
    assert len(hypotheses) == 3 and len({tuple(w) for w in want}) > 1  # the sources get different translations
    same = sum(a == b for got, ref in zip(hypotheses, want) for a, b in zip(got, ref))
    assert same / sum(max(len(got), len(ref)) for got, ref in zip(hypotheses, want)) >= TOKEN_AGREEMENT[scheme]
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["quantization"]["graphs"]) == {"encoder", "cross_attention_kv", "decoder"}
    for entry in manifest["graphs"].values():
        inits = initializers(out / entry["file"])
        shapes = {(model.spec.vocab_size, model.spec.d_model), (model.spec.d_model, model.spec.vocab_size)}
        big = [n for n, i in inits.items() if i.data_type == onnx.TensorProto.FLOAT and tuple(i.dims) in shapes]
        assert not big, f"{entry['file']} keeps an fp32 vocabulary table: {big}"


def test_a_broken_layout_fails_verification(tmp_path, monkeypatch):
    """A table quantized in the wrong layout (rows shuffled) must fail, not pass as noise."""
    real = onnx_quantize.quantize_matrix

    def shuffled(weight, settings):
        packed, scales = real(weight, settings)
        order = np.random.default_rng(0).permutation(len(packed))
        return packed[order], scales[order]

    monkeypatch.setattr(onnx_quantize, "quantize_matrix", shuffled)
    model = zoo.build("gpt2", seed=0, **tiny_overrides("gpt2"))
    with pytest.raises(ExportError, match="too far from fp32"):
        export(model, tmp_path / "broken", quantize="int8")
    assert not (tmp_path / "broken").exists()


@pytest.mark.parametrize("args, message", [
    (["--quantize", "int3"], "--quantize 'int3' is not supported by --format onnx; choose one of: int4, int8"),
    (["--quantize", "int4", "--block-size", "48"], "--block-size 48: ONNX Runtime's quantizer needs a power of two"),
    (["--quantize", "int4", "--block-size", "8"], "--block-size 8: ONNX Runtime's quantizer needs a power of two"),
    (["--quantize", "int8", "--block-size", "64"], "--block-size 64 does not divide gpt2's d_model of 32"),
    (["--quantize", "int4", "--dtype", "fp16"], "--quantize int4 starts from fp32 weights"),
    (["--block-size", "32"], "--block-size only applies with --quantize"),
    (["--quantize", "int4", "--format", "hf"], "--quantize is not an option of --format hf: the hf format writes fp32"),
])
def test_bad_options_are_one_line(tmp_path, args, message):
    out = tmp_path / "out"
    sets = [a for k, v in tiny_overrides("gpt2").items() for a in ("--set", f"{k}={v}")]
    result = CliRunner().invoke(cli, ["export", "gpt2", *sets, "-o", str(out), *args])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not out.exists()


def test_zoo_export_quantize_with_a_block_size_through_the_command_line(tmp_path):
    """The options reach the quantizer: every weight matrix is a MatMulNBits of the asked bits and block."""
    out = tmp_path / "q"
    sets = [a for k, v in tiny_overrides("gpt2").items() for a in ("--set", f"{k}={v}")]
    result = CliRunner().invoke(cli, ["export", "gpt2", *sets, "--kv-cache", "--quantize", "int4", "--block-size",
                                      "16", "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["scheme"] == "int4" and manifest["quantization"]["block_size"] == 16
    assert manifest["verification"]["passed"]
    graph = onnx.load(str(out / "decoder.onnx"), load_external_data=False).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) >= 4 * 2 + 1  # four per block, two blocks, the tied head
    for node in nbits:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes["bits"] == 4 and attributes["block_size"] == 16


@pytest.mark.parametrize("scheme", ["int4", "int8"])
def test_weights_expanded_at_load_compute_what_matmulnbits_computes(exports, scheme, tmp_path):
    """The web's form of a quantized graph (expand_at_load: standard operators rebuild each fp32
    matrix from the same bytes) against the MatMulNBits graph it came from, in onnxruntime."""
    from onnx_greedy import ort_greedy

    _, out = exports("gpt2", scheme)
    proto = onnx.load(str(out / "decoder.onnx"))
    counts = json.loads((out / "manifest.json").read_text())["quantization"]["graphs"]["decoder"]
    assert onnx_quantize.expand_at_load(proto) == counts["matmuls"] + counts["heads"]
    assert not any(n.domain for n in proto.graph.node)
    expanded = tmp_path / "expanded.onnx"
    onnx.save(proto, str(expanded))
    for ids in ([5, 17, 33, 2], [40, 41, 42, 43, 44, 45]):
        tokens, logits = ort_greedy(expanded, ids, 6)
        want_tokens, want_logits = ort_greedy(out / "decoder.onnx", ids, 6)
        # MatMulNBits rounds its activations to int8 (accuracy level 4); the expansion computes in fp32
        assert np.abs(logits - want_logits).max() < 0.05 * np.abs(want_logits).max()
        assert tokens[:len(ids) + 1] == want_tokens[:len(ids) + 1]
