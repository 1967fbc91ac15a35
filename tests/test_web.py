"""`zoo export --format web` in the real clients: transformers.js in Node and in headless
Chromium (through `zoo serve-web`'s page), and the page server's safety.

The JavaScript side lives in tests/web (package.json, installed by .ci/install with
`npm ci --ignore-scripts` into tests/web/node_modules, never committed); Chromium is Debian's
`chromium`. Without them the client tests skip, except under ``ZOO_REQUIRE_WEB=1`` (set by
.ci/run), where a missing client is a failure. References are independent of the client:
PyTorch (``zoo.generate`` and the model's logits) for fp32, and greedy decoding written
directly against onnxruntime on the same file (tests/onnx_greedy.py) for fp16/q4/int8.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import zoo
from conftest import REPO, tiny_overrides
from onnx_greedy import decode_rate, ort_greedy
from zoo.cli import cli
from zoo.core import registry
from zoo.errors import ExportError
from zoo.exporters.web.exporter import WEB_MISSING_OPERATORS, place_graph
from zoo.exporters.web.folder import VARIANTS, check_folder
from zoo.exporters.web.server import make_server, serve_in_background

WEB = REPO / "tests" / "web"
NEW_TOKENS = 8
GPT2_SIZES = {"context_length": 64, "d_model": 32, "n_layers": 2, "attention.n_heads": 4, "mlp.d_ff": 64}
PROMPTS = [[464, 26182, 318, 257], [15496], [40, 588, 262, 8632, 286, 257, 1263]]
FP32_ATOL = 1e-4  # transformers.js / onnxruntime against PyTorch, both fp32
SAME_FILE_ATOL = {"fp16": 2e-2, "q4": 2e-3, "int8": 2e-3}  # a JS client against Python's onnxruntime, same graph


def required() -> bool:
    return os.environ.get("ZOO_REQUIRE_WEB") == "1"


def missing(what: str) -> None:
    if required():
        pytest.fail(f"{what} is missing and ZOO_REQUIRE_WEB=1: run .ci/install")
    pytest.skip(f"{what} is missing: run .ci/install (npm ci --prefix tests/web --ignore-scripts; apt-get install chromium)")


def node_modules() -> Path:
    if shutil.which("node") is None:
        missing("node")
    modules = WEB / "node_modules"
    if not (modules / "@huggingface" / "transformers").is_dir():
        missing("tests/web/node_modules (transformers.js)")
    return modules


def chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if path is None:
        missing("chromium")
    return path


def node(script: str, *args: str, env: dict | None = None, timeout: int = 300) -> dict:
    node_modules()
    done = subprocess.run(["node", str(WEB / script), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=WEB, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def sets(sizes: dict) -> list[str]:
    return [arg for key, value in sizes.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def gpt2_web(tmp_path_factory):
    """`zoo export gpt2 --format web` of a tiny GPT-2 (its real vocabulary and tokenizer) in
    every precision, and the same model built in PyTorch."""
    out = tmp_path_factory.mktemp("web") / "gpt2-web"
    result = CliRunner().invoke(cli, ["export", "gpt2", *sets(GPT2_SIZES), "--seed", "0", "--format", "web",
                                      "--variants", "fp32,fp16,q4,int8", "--block-size", "16", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return zoo.build("gpt2", seed=0, **GPT2_SIZES).eval(), out


def torch_reference(model, ids: list[int]) -> tuple[list[int], np.ndarray]:
    with torch.inference_mode():
        tokens = zoo.generate(model, torch.tensor([ids]), max_new_tokens=NEW_TOKENS)[0].tolist()
        logits = model(torch.tensor([ids]))[0, -1].numpy()
    return tokens, logits


def check_client(model, folder: Path, dtype: str, ids: list[int], tokens: list[int], logits) -> None:
    """A client's greedy ``tokens`` and first ``logits`` for prompt ``ids`` against the references."""
    if dtype == "fp32":
        want, want_logits = torch_reference(model, ids)
        atol = FP32_ATOL
    else:
        want, want_logits = ort_greedy(folder / VARIANTS[dtype].path, ids, NEW_TOKENS)
        atol = SAME_FILE_ATOL[dtype]
    assert tokens == want, f"{dtype}: {tokens} != {want}"
    if logits is not None:
        assert np.abs(np.asarray(logits, np.float32) - want_logits).max() < atol, dtype


# --------------------------------------------------------------------------- the folder


def test_the_folder_has_what_transformers_js_and_optimum_read(gpt2_web):
    _, out = gpt2_web
    assert check_folder(out, need_tokenizer=True) == ["fp32", "fp16", "q4", "int8"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_layer"] == 2 and config["n_embd"] == 32
    assert config["transformers.js_config"] == {"dtype": "q4"}  # the smallest written, when a client names none
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stand_in"] is False and set(manifest["variants"]) == {"fp32", "fp16", "q4", "int8"}
    assert all(v["verification"]["passed"] for v in manifest["variants"].values())
    assert {"onnx/model.onnx", "onnx/model_q4.onnx", "tokenizer.json", "generation_config.json"} <= set(manifest["files"])
    q4 = onnx.load(str(out / "onnx" / "model_q4.onnx"))
    ops = {(n.domain, n.op_type) for n in q4.graph.node}
    assert not {op for domain, op in ops if domain}  # standard operators only: the weights expand at load
    assert manifest["variants"]["q4"]["files"]["model_q4.onnx"]["expanded_at_load"] == 9  # 8 in the blocks, the tied head
    packed = [i for i in q4.graph.initializer if i.data_type == onnx.TensorProto.UINT8]
    assert sum(np.prod(i.dims) for i in packed) * 2 >= 0.9 * sum(  # the weights are stored 4-bit
        np.prod(p.shape) for name, p in gpt2_web[0].named_parameters() if p.ndim == 2 and "wpe" not in name)
    assert not list(out.rglob("*.onnx.data")) and not list(out.rglob("*.onnx_data"))  # one file per graph
    past = next(i for i in q4.graph.input if i.name == "past_key_values.0.key").type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in past] == ["batch_size", 4, "past_sequence_length", 8]  # the
    # names transformers.js resolves when it makes the first step's empty cache (others become 0)


def test_an_operator_onnxruntime_web_lacks_is_refused(tmp_path):
    (domain, op), _ = next(iter(WEB_MISSING_OPERATORS.items()))
    node = onnx.helper.make_node(op, ["data", "ids", "scales"], ["y"], domain=domain, name="lookup")
    graph = onnx.helper.make_graph([node], "g", [], [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    (tmp_path / "onnx").mkdir()
    with pytest.raises(ExportError, match=f"model_q4.onnx uses {domain}.{op} \\(node 'lookup'\\), which "
                                          "onnxruntime-web has no kernel for"):
        place_graph(onnx.helper.make_model(graph), tmp_path / "onnx" / VARIANTS["q4"].file)
    assert not list((tmp_path / "onnx").iterdir())


@pytest.mark.parametrize("args, message", [
    (["gpt2", "--format", "web", "--variants", "q3"], "--variants q3: choose from fp32, fp16, q4, int8"),
    (["gpt2", "--format", "web", "--quantize", "int4"], "--format web names its precisions with --variants"),
    (["gpt2", "--format", "web", "--dtype", "fp16"], "--dtype is not an option of --format web: --format web names its precisions with --variants"),
    (["gpt2", "--format", "web", "--variants", "fp32", "--block-size", "16"], "--block-size applies to the quantized"),
    (["gpt2", "--format", "web", "--variants", "q4", "--block-size", "48"], "--block-size 48: ONNX Runtime's"),
    (["gpt2", "--format", "onnx", "--variants", "q4"], "--variants is not an option of --format onnx"),
])
def test_bad_web_export_options_are_one_line(tmp_path, args, message):
    out = tmp_path / "out"
    name, *rest = args
    result = CliRunner().invoke(cli, ["export", name, *sets(tiny_overrides(name)), *rest, "-o", str(out)])
    assert result.exit_code != 0
    assert result.output.startswith("error: ") and message in result.output and result.output.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "config.json").unlink(), "has no config.json"),
    (lambda d: (d / "config.json").write_text("{}"), "names no model_type"),
    (lambda d: [p.unlink() for p in (d / "onnx").iterdir()], "has no graph under onnx/"),
    (lambda d: (d / "tokenizer.json").unlink(), "has no tokenizer.json"),
])
def test_a_folder_missing_what_transformers_js_needs_is_reported_by_zoo(gpt2_web, tmp_path, damage, message):
    folder = tmp_path / "copy"
    shutil.copytree(gpt2_web[1], folder)
    damage(folder)
    with pytest.raises(ExportError, match=message):
        check_folder(folder, need_tokenizer=True)
    if message != "has no tokenizer.json":  # the page gives token ids to a model without one (and would serve)
        result = CliRunner().invoke(cli, ["serve-web", str(folder), "--port", "0"])
        assert result.exit_code != 0 and result.output.startswith("error: ") and message in result.output


# --------------------------------------------------------------------------- transformers.js in Node


def test_transformers_js_in_node_generates_zoos_tokens_in_every_precision(gpt2_web):
    model, out = gpt2_web
    request = out.parent / "node-request.json"
    request.write_text(json.dumps({"prompts": PROMPTS, "new_tokens": NEW_TOKENS, "dtypes": list(VARIANTS)}))
    answer = node("node_client.mjs", str(out), str(request))
    for dtype, results in answer["dtypes"].items():
        for ids, result in zip(PROMPTS, results):
            check_client(model, out, dtype, ids, result["tokens"], result["logits"])
    agreement = np.mean([a == b for ids, r, f in zip(PROMPTS, answer["dtypes"]["q4"], answer["dtypes"]["fp32"])
                         for a, b in zip(r["tokens"][len(ids):], f["tokens"][len(ids):])])
    print(f"q4 tokens agreeing with fp32 in Node: {agreement:.0%}")


PLUGIN_ATTENTION = textwrap.dedent('''
    """Attention scores written out by hand, softmax(QK^T / sqrt(d) + mask) V: no fused kernel."""

    import math

    import torch

    import zoo
    from zoo.plugins.attention.multi_head import MultiHeadAttention


    @zoo.hookimpl
    def zoo_register_components(registry):
        registry.add("attention", "written_out", WrittenOut)


    class WrittenOut(MultiHeadAttention):
        def attend(self, q, k, v, mask, is_causal):
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            if mask is None and is_causal:
                mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril(k.shape[-2] - q.shape[-2])
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            return torch.softmax(scores, dim=-1) @ v
''')


STAND_INS = {  # models no transformers model_type describes
    "plugin-attention+rotary+gqa+untied": ({"attention": "written_out", "positional": "rotary",
                                            "attention.n_kv_heads": 2, "tie_embeddings": False}, (2, 8)),
    "alibi+rms_norm+swiglu": ({"positional": "alibi", "norm": "rms_norm", "mlp": "swiglu"}, (4, 8)),
}


@pytest.mark.parametrize("overrides, kv_heads_and_head_dim", STAND_INS.values(), ids=STAND_INS)
def test_a_model_no_transformers_type_describes_gets_a_stand_in_config_and_zoos_tokens(
        fresh_registry, tmp_path, overrides, kv_heads_and_head_dim):
    """No transformers model_type is this model, so the folder's config says llama, and says why;
    transformers.js still generates zoo's tokens from it."""
    plugin = tmp_path / "written_out.py"
    plugin.write_text(PLUGIN_ATTENTION)
    registry.use_local_plugins([str(plugin)])
    model = zoo.build("gpt2", seed=0, **tiny_overrides("gpt2", **overrides)).eval()
    out = tmp_path / "stand-in-web"
    manifest = zoo.export(model, out, "web", variants=("fp32",))
    config = json.loads((out / "config.json").read_text())
    assert manifest["stand_in"] and config["model_type"] == "llama" and "stand_in" in config["zoo"]
    assert (config["num_key_value_heads"], config["head_dim"]) == kv_heads_and_head_dim
    assert config["num_hidden_layers"] == 2
    assert config["intermediate_size"] == 64  # the spec's d_ff (2 x d_model here), not 4 x d_model
    prompts = [[5, 17, 33, 2], [40], [9, 8, 7, 6, 5, 4, 3]]
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"prompts": prompts, "new_tokens": NEW_TOKENS, "dtypes": ["fp32"]}))
    answer = node("node_client.mjs", str(out), str(request))
    for ids, result in zip(prompts, answer["dtypes"]["fp32"]):
        check_client(model, out, "fp32", ids, result["tokens"], result["logits"])


PROBE_ATTRIBUTES = {"GatherBlockQuantized": {"gather_axis": 0, "quantize_axis": 2, "block_size": 16, "bits": 4}}


def test_every_operator_on_the_missing_list_is_missing_from_onnxruntime_web(gpt2_web, tmp_path):
    """The list zoo refuses by is onnxruntime-web's truth: each listed operator fails to load in its
    browser build, run in Node, while every graph zoo writes loads."""
    paths = []
    for (domain, op), _ in WEB_MISSING_OPERATORS.items():
        node_proto = onnx.helper.make_node(op, ["data", "ids", "scales"], ["y"], domain=domain,
                                           **PROBE_ATTRIBUTES.get(op, {}))
        graph = onnx.helper.make_graph(
            [node_proto], op,
            [onnx.helper.make_tensor_value_info("data", onnx.TensorProto.UINT8, [4, 1, 8]),
             onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [2]),
             onnx.helper.make_tensor_value_info("scales", onnx.TensorProto.FLOAT, [4, 1, 1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
        model = onnx.helper.make_model(graph, ir_version=10, opset_imports=[onnx.helper.make_opsetid("", 21),
                                                                            onnx.helper.make_opsetid(domain, 1)])
        path = tmp_path / f"{op}.onnx"
        onnx.save(model, str(path))
        paths.append(path)
    zoo_graphs = [gpt2_web[1] / VARIANTS[name].path for name in VARIANTS]
    answer = node("ort_web_probe.mjs", *map(str, paths + zoo_graphs))
    for path in paths:
        assert "Could not find an implementation" in answer[str(path)], answer[str(path)]
    for path in zoo_graphs:
        assert answer[str(path)] == "ok", answer[str(path)]


# --------------------------------------------------------------------------- the page, in Chromium


@pytest.fixture
def page_server(gpt2_web):
    server = make_server(gpt2_web[1], "127.0.0.1", 0, library=node_modules(), quiet=True)
    serve_in_background(server)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def browser(url: str, screenshot: Path | None = None) -> dict:
    answer = node("browser_client.mjs", url, *([str(screenshot)] if screenshot else []),
                  env={"CHROMIUM": chromium()})
    assert "error" not in answer, answer
    return answer


@pytest.mark.parametrize("dtype", ["fp32", "q4"])
def test_the_page_generates_zoos_tokens_in_chromium(gpt2_web, page_server, dtype):
    model, out = gpt2_web
    ids = PROMPTS[0]
    answer = browser(f"{page_server}/?auto=1&threads=2&dtype={dtype}&max_new_tokens={NEW_TOKENS}"
                     f"&ids={','.join(map(str, ids))}")
    assert answer["dtype"] == dtype and answer["prompt"] == ids
    assert answer["cross_origin_isolated"] and answer["threads"] == 2  # shared memory: WebAssembly threads
    check_client(model, out, dtype, ids, ids + answer["tokens"], None)
    assert not answer["console_errors"], answer["console_errors"]


def test_the_page_turns_text_into_tokens_and_is_photographed(gpt2_web, page_server, tmp_path):
    """A person's view: a text prompt, GPT-2's tokenizer in the browser, the screenshot the
    README shows (ZOO_WEB_SCREENSHOT=PATH keeps it)."""
    from zoo.generation.tokenizer import gpt2_tokenizer

    model, _ = gpt2_web
    shot = Path(os.environ.get("ZOO_WEB_SCREENSHOT") or tmp_path / "page.png")
    answer = browser(f"{page_server}/?auto=1&threads=2&dtype=fp32&max_new_tokens=12&prompt=The%20zoo%20keeper%20said",
                     shot)
    ids = gpt2_tokenizer()("The zoo keeper said")["input_ids"]
    assert answer["prompt"] == ids
    with torch.inference_mode():
        want = zoo.generate(model, torch.tensor([ids]), max_new_tokens=12)[0].tolist()
    assert ids + answer["tokens"] == want
    assert shot.stat().st_size > 10_000  # a rendered page, not an empty image


# --------------------------------------------------------------------------- the server's safety


def get(server_url: str, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    host, port = server_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request(method, path)  # sent as written: no client-side normalisation of ..
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), body


@pytest.fixture
def served(tmp_path):
    """A folder with an outside secret reachable by symlink, served without a library."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"graph")
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "secret.txt").write_text("secret")
    (folder / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (folder / "onnx" / "up").symlink_to(tmp_path)
    server = make_server(folder, port=0, quiet=True)
    serve_in_background(server)
    assert server.server_address[0] == "127.0.0.1"  # the default binds loopback only
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_page_and_the_exports_files_are_served_cross_origin_isolated(served):
    status, headers, body = get(served, "/")
    assert status == 200 and b"transformers" in body
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    status, _, body = get(served, "/model/onnx/model.onnx")
    assert (status, body) == (200, b"graph")
    status, _, body = get(served, "/zoo-web.json")
    assert json.loads(body)["variants"] == ["fp32"] and "cdn.jsdelivr.net" in json.loads(body)["library"]
    status, headers, body = get(served, "/model/onnx/model.onnx", "HEAD")
    assert status == 200 and body == b"" and headers["Content-Length"] == "5"


@pytest.mark.parametrize("path", [
    "/model/../secret.txt", "/model/%2e%2e/secret.txt", "/model/onnx/../../secret.txt", "/model//etc/passwd",
    "/model/%2Fetc%2Fpasswd", "/model/leak.txt", "/model/onnx/up/secret.txt", "/model/", "/model/onnx",
    "/model/onnx/", "/lib/transformers.js", "/../secret.txt", "/etc/passwd", "/model/onnx/model.onnx%00.txt",
])
def test_paths_leaving_the_folder_or_listing_it_get_404(served, path):
    status, _, body = get(served, path)
    assert status == 404 and b"secret" not in body


def test_only_get_and_head_are_answered(served):
    status, _, _ = get(served, "/model/onnx/model.onnx", "POST")
    assert status == 501


# --------------------------------------------------------------------------- speed (pytest -m benchmark)


@pytest.mark.benchmark
def test_gpt2_small_in_chromium_against_onnxruntime(tmp_path):
    """GPT-2 Small (random weights: there is no hub here) as a web folder, fp32, q4 and int8: decode
    tokens/s in headless Chromium (WebAssembly, 2 threads) and in onnxruntime (Python, 2 threads) on
    the same file, in one run, and each graph's download size. Prints the figures the README quotes."""
    out = tmp_path / "gpt2-web"
    result = CliRunner().invoke(cli, ["export", "gpt2", "--format", "web", "--variants", "fp32,q4,int8", "-o", str(out)])
    assert result.exit_code == 0, result.output
    shared = sum(p.stat().st_size for p in out.iterdir() if p.is_file() and p.name != "manifest.json")
    ids, new = PROMPTS[2], 64
    server = make_server(out, "127.0.0.1", 0, library=node_modules(), quiet=True)
    serve_in_background(server)
    lines = []
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        for dtype in ("fp32", "q4", "int8"):
            query = f"/?auto=1&threads=2&dtype={dtype}&max_new_tokens={new}&ids={','.join(map(str, ids))}"
            browser(url + query)  # warm: the first page pays for compiling the WebAssembly
            page = max(browser(url + query)["tokens_per_second"] for _ in range(2))
            native = max(decode_rate(out / VARIANTS[dtype].path, ids, new) for _ in range(2))
            size = (out / VARIANTS[dtype].path).stat().st_size + shared
            lines.append(f"{dtype}: Chromium {page:.1f} tokens/s, onnxruntime {native:.1f} tokens/s, "
                         f"ratio {page / native:.3f}; folder for this precision {size / 1e6:.1f} MB")
            assert page > 0 and native > 0
    finally:
        server.shutdown()
        server.server_close()
    native = tmp_path / "gpt2-int4"  # the onnx format's int4: MatMulNBits, for native ONNX Runtime
    result = CliRunner().invoke(cli, ["export", "gpt2", "--format", "onnx", "--kv-cache", "--quantize", "int4",
                                      "-o", str(native)])
    assert result.exit_code == 0, result.output
    rate = max(decode_rate(native / "decoder.onnx", ids, new) for _ in range(2))
    lines.append(f"onnx --quantize int4 (MatMulNBits): onnxruntime {rate:.1f} tokens/s")
    print("\nGPT-2 Small, decode after the first token, best of 2 (WebAssembly 2 threads; onnxruntime 2 threads):")
    print("\n".join(lines))


def test_a_graph_with_a_missing_operator_leaves_nothing_behind(tmp_path, monkeypatch):
    """The real exporter's refusal: were the fused Attention missing from onnxruntime-web, an export would
    name it and write nothing, no scratch directory either."""
    from zoo.exporters.web import exporter as web

    monkeypatch.setitem(web.WEB_MISSING_OPERATORS, ("", "Attention"), "export with --opset 18 (no fused Attention)")
    model = zoo.build("gpt2", seed=0, **tiny_overrides("gpt2"))
    with pytest.raises(ExportError, match=r"model.onnx uses Attention \(node .*\), which onnxruntime-web has no "
                                          r"kernel for: export with --opset 18"):
        zoo.export(model, tmp_path / "web", "web", variants=("fp32",))
    assert list(tmp_path.iterdir()) == []
    manifest = zoo.export(model, tmp_path / "web18", "web", variants=("fp32",), opset=18)  # the way around it
    assert manifest["variants"]["fp32"]["opset"] == 18
