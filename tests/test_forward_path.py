"""One forward path: the ONNX graphs are traced from the model's own pass.

A positional plugin whose bias depends on the ``causal`` argument it is given shows that
PyTorch and ONNX Runtime call it alike, and an ast check shows that the exporter's graph
module re-states no embedding, position or mask code.
"""

from __future__ import annotations

import ast
import textwrap

import pytest
import torch

import zoo
from conftest import REPO, local_plugin, tiny_overrides
from zoo.exporters.onnx import runtime
from zoo import export

CAUSAL_SLOPES = textwrap.dedent('''
    """A distance penalty per head: symmetric when bidirectional, signed and steeper when causal."""

    import torch

    import zoo
    from zoo.core.components import PositionalScheme


    class CausalSlopes(PositionalScheme):
        seen = []  # the ``causal`` argument of every call, in PyTorch and while tracing

        def attention_bias(self, q_index, k_index, causal):
            type(self).seen.append(causal)
            slopes = torch.linspace(0.1, 0.8, self.spec.n_heads, device=q_index.device)  # (H,)
            distance = (q_index[:, None] - k_index[None, :]).to(torch.float32)  # (Tq, Tk)
            if causal:
                return (-3.0 * slopes[:, None, None] * distance)[None]  # (1, H, Tq, Tk)
            return (-slopes[:, None, None] * distance.abs())[None]


    @zoo.hookimpl
    def zoo_register_components(registry):
        registry.add("positional", "causal_slopes", CausalSlopes)
''')


@pytest.fixture
def causal_slopes(fresh_registry, tmp_path):
    return local_plugin(tmp_path, "causal_slopes.py", CAUSAL_SLOPES)


def build_tiny(name: str, **extra):
    layers = {"n_layers": 1, "n_decoder_layers": 1} if name.startswith("transformer") else {"n_layers": 1}
    return zoo.build(name, seed=0, **tiny_overrides(name, positional="causal_slopes", **layers, **extra))


def test_the_plugin_bias_depends_on_causal(causal_slopes):
    model = build_tiny("gpt2")
    index = torch.arange(4)
    causal = model.positional.attention_bias(index, index, True)
    bidirectional = model.positional.attention_bias(index, index, False)
    assert not torch.allclose(causal.tril(), bidirectional.tril())
    assert torch.equal(bidirectional, bidirectional.transpose(-1, -2))


@pytest.mark.parametrize("kv_cache", [False, True], ids=["plain", "kv-cache"])
def test_decoder_pytorch_and_onnx_runtime_agree(causal_slopes, tmp_path, kv_cache):
    model = build_tiny("gpt2")
    seen = type(model.positional).seen
    seen.clear()
    manifest = export(model, tmp_path / "out", kv_cache=kv_cache)
    assert manifest["verification"]["passed"] and manifest["verification"]["max_abs_diff"] < 1e-4
    assert set(seen) == {True}  # traced and verified with the stack's causal
    lm = runtime.load(tmp_path / "out")
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with torch.inference_mode():
        torch.testing.assert_close(lm(ids, attention_mask=mask), model(ids, attention_mask=mask), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("decoder_causal", [True, False], ids=["causal-decoder", "bidirectional-decoder"])
@pytest.mark.parametrize("kv_cache", [False, True], ids=["plain", "kv-cache"])
def test_encoder_decoder_pytorch_and_onnx_runtime_agree(causal_slopes, tmp_path, kv_cache, decoder_causal):
    model = build_tiny("transformer-en-it", **({} if decoder_causal else {"attention.causal": False}))
    assert model.encoder.causal is False and model.decoder.causal is decoder_causal
    seen = type(model.positional).seen
    src = torch.randint(3, 97, (2, 6), generator=torch.Generator().manual_seed(1))
    src_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])  # right padding of sources
    tgt = torch.randint(3, 97, (2, 5), generator=torch.Generator().manual_seed(2))

    seen.clear()
    with torch.inference_mode():
        memory = model.encode(src, src_mask)
        assert seen == [False]
        want = model.decode(tgt, memory, src_mask)
        assert seen == [False, decoder_causal]  # each stack's own causal, not a constant

    seen.clear()
    manifest = export(model, tmp_path / "out", kv_cache=kv_cache)
    assert manifest["verification"]["passed"] and manifest["verification"]["max_abs_diff"] < 1e-4
    assert set(seen) == {False, decoder_causal}
    seq2seq = runtime.load(tmp_path / "out")
    with torch.inference_mode():
        ort_memory = seq2seq.encode(src, src_mask)
        torch.testing.assert_close(ort_memory, memory, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(seq2seq.decode(tgt, ort_memory, src_mask), want, atol=1e-4, rtol=1e-4)
        if kv_cache:  # one token at a time through both caches
            cache, ort_cache = model.new_cache(2, 5), seq2seq.new_cache(2, 5)
            for t in range(5):
                step = tgt[:, t : t + 1]
                torch.testing.assert_close(seq2seq.decode(step, ort_memory, src_mask, cache=ort_cache),
                                           model.decode(step, memory, src_mask, cache=cache), atol=1e-4, rtol=1e-4)


# the model's own code: what the graph module must call instead of re-stating
RESTATED_METHODS = {"embed", "rotate", "attention_bias", "embed_tokens", "cumsum", "masked_fill", "tril", "triu",
                    "index_select", "lm_head", "wte", "stack", "encoder", "decoder", "crossattention"}
RESTATED_FUNCTIONS = {"Context", "build_mask", "positions_from_mask", "memory_mask", "scaled_dot_product_attention"}


def calls_in(tree: ast.AST) -> list[str]:
    """The name of every call in ``tree``: ``f`` for ``f(...)`` and ``x.f(...)``."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            names.append(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


def test_the_graph_module_restates_no_embedding_position_or_mask_code():
    source = (REPO / "exporters" / "onnx" / "graphs.py").read_text()
    tree = ast.parse(source)
    calls = calls_in(tree)
    assert "model" in calls and "decode" in calls and "encode" in calls  # the graphs drive the model
    assert not set(calls) & (RESTATED_METHODS | RESTATED_FUNCTIONS)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "forward":
            assert "arange" not in calls_in(node) and "zeros" not in calls_in(node), node.lineno
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert not imported & RESTATED_FUNCTIONS
