"""The Attention operator given the heads and the cache (exporters/onnx/fusion.py): the folded
graph computes what torch's translation computes, with the same inputs and outputs."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import zoo
from conftest import tiny_overrides
from zoo.exporters.onnx import exporter
from zoo.exporters.onnx.fusion import fold_into_attention

N_LAYERS = 2
# GPT-2's layers fold to 3-D Q/K/V; with one key/value head for 4 query heads too (the repeated heads
# dropped, kv_num_heads=1); rotary keys stay 4-D, and the cache's Concat and the repeat still fold
VARIANTS = {
    "gpt2": {},
    "mqa": {"attention.n_kv_heads": 1},
    "mqa-repeated": {"attention.n_kv_heads": 1},  # attend overridden: torch repeats the key/value head
    "rotary-gqa": {"positional": "rotary", "attention.n_kv_heads": 2},
}


def override_attend(model) -> None:
    """Set attend on every layer, as a plugin overriding it does: it is then given repeated heads."""
    from zoo.plugins.attention.multi_head import MultiHeadAttention

    for block in model.stack.h:
        block.attn.attend = lambda q, k, v, mask, causal, _a=block.attn: MultiHeadAttention.attend(_a, q, k, v, mask,
                                                                                                   causal)


@pytest.fixture(scope="module")
def unfolded(tmp_path_factory):
    """``unfolded(kv_cache)`` → a directory holding tiny GPT-2's decoder as torch translated it."""
    made = {}

    def get(kv_cache: bool, variant: str = "gpt2"):
        if (kv_cache, variant) not in made:
            model = zoo.build("gpt2", seed=0, **tiny_overrides("gpt2", n_layers=N_LAYERS, **VARIANTS[variant]))
            if variant.endswith("-repeated"):
                override_attend(model)
            out = tmp_path_factory.mktemp("unfolded") / f"{variant}-{'kv' if kv_cache else 'plain'}"
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(exporter, "fold_into_attention", lambda proto: 0)
                zoo.export(model, out, kv_cache=kv_cache, verify=False)
            made[kv_cache, variant] = out
        return made[kv_cache, variant]

    return get


def folded_copy(source, target):
    """Copy the decoder (graph and weights) and fold the copy; return (path, folded count)."""
    target.mkdir()
    for name in ("decoder.onnx", "decoder.onnx.data"):
        shutil.copyfile(source / name, target / name)
    return target / "decoder.onnx", fold_file(target / "decoder.onnx")


def fold_file(path):
    """Fold the graph saved at ``path`` in place (its weights file untouched); return how many folded."""
    proto = onnx.load(str(path), load_external_data=False)
    folded = fold_into_attention(proto)
    onnx.save(proto, str(path))
    return folded


def feeds_for(session, batch=2, past=5, new=3, seed=0):
    """Random ids, a left-padded first row and a random cache for every input the graph has."""
    rng = np.random.default_rng(seed)
    feeds = {"input_ids": rng.integers(0, 90, (batch, new)).astype(np.int64)}
    for i in session.get_inputs():
        if i.name == "attention_mask":
            length = past + new if any(x.name.startswith("past_") for x in session.get_inputs()) else new
            mask = np.ones((batch, length), np.int64)
            mask[0, :2] = 0
            feeds[i.name] = mask
        elif i.name.startswith("past_key_values"):
            heads, size = i.shape[1], i.shape[3]
            feeds[i.name] = rng.standard_normal((batch, heads, past, size)).astype(np.float32)
    return feeds


def run(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("past,new", [(5, 1), (5, 3), (0, 4)], ids=["decode", "chunk", "prefill"])
def test_the_folded_decoder_computes_what_the_unfolded_one_does(unfolded, tmp_path, past, new, variant):
    source = unfolded(True, variant)
    path, count = folded_copy(source, tmp_path / "folded")
    assert count == N_LAYERS
    proto = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(str(path))
    attention = [n for n in proto.graph.node if n.op_type == "Attention"]
    assert len(attention) == N_LAYERS
    for layer, node in enumerate(attention):
        assert list(node.input[4:]) == [f"past_key_values.{layer}.key", f"past_key_values.{layer}.value"]
        assert list(node.output)[1:] == [f"present.{layer}.key", f"present.{layer}.value"]
    ops = [n.op_type for n in proto.graph.node]
    source_ops = [n.op_type for n in onnx.load(str(source / "decoder.onnx"), load_external_data=False).graph.node]
    assert ("Expand" in source_ops) == variant.endswith("-repeated")
    assert "Expand" not in ops  # no key/value head repeated
    if variant == "rotary-gqa":  # 4-D: heads split by the graph, shared by the operator
        assert all(len(n.attribute) == len([a for a in n.attribute if a.name not in ("q_num_heads", "kv_num_heads")])
                   for n in attention)
    else:
        assert "Concat" not in ops and ops.count("Transpose") < ops.count("Attention")
        kv_heads = 1 if variant.startswith("mqa") else 4
        assert all({a.name: a.i for a in n.attribute}.get("kv_num_heads") == kv_heads for n in attention)
    before = ort.InferenceSession(str(source / "decoder.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in before.get_inputs()] == [i.name for i in ort.InferenceSession(str(path)).get_inputs()]
    feeds = feeds_for(before, past=past, new=new)
    want, got = run(source / "decoder.onnx", feeds), run(path, feeds)
    assert list(got) == list(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_the_plain_decoder_folds_its_heads(unfolded, tmp_path):
    source = unfolded(False)
    path, count = folded_copy(source, tmp_path / "folded")
    assert count == N_LAYERS
    proto = onnx.load(str(path), load_external_data=False)
    assert all(len(n.input) <= 4 and len(n.output) == 1 for n in proto.graph.node if n.op_type == "Attention")
    feeds = feeds_for(ort.InferenceSession(str(source / "decoder.onnx")), new=6)
    np.testing.assert_allclose(run(path, feeds)["logits"], run(source / "decoder.onnx", feeds)["logits"],
                               rtol=1e-5, atol=1e-5)


def test_a_cache_read_by_another_node_is_left_to_the_concat(unfolded, tmp_path):
    """Layer 0's grown keys also feed an extra output: that layer keeps its Concat (the folded
    operator would make the value too, but the pattern is no longer the one folded); layer 1 folds."""
    source = unfolded(True)
    target = tmp_path / "extra"
    target.mkdir()
    shutil.copyfile(source / "decoder.onnx.data", target / "decoder.onnx.data")
    proto = onnx.load(str(source / "decoder.onnx"), load_external_data=False)
    proto.graph.node.append(onnx.helper.make_node("Identity", ["present.0.key"], ["keys_seen"]))
    proto.graph.output.append(onnx.helper.make_empty_tensor_value_info("keys_seen"))
    onnx.save(proto, str(target / "decoder.onnx"))
    assert fold_file(target / "decoder.onnx") == N_LAYERS - 1
    proto = onnx.load(str(target / "decoder.onnx"), load_external_data=False)
    concats = [n for n in proto.graph.node if n.op_type == "Concat" and n.output[0].startswith("present.")]
    assert sorted(n.output[0] for n in concats) == ["present.0.key", "present.0.value"]
    feeds = feeds_for(ort.InferenceSession(str(source / "decoder.onnx")))
    got, want = run(target / "decoder.onnx", feeds), run(source / "decoder.onnx", feeds)
    np.testing.assert_allclose(got["keys_seen"], want["present.0.key"])
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-5, atol=1e-5)


def test_an_export_comes_folded_and_says_so(tmp_path):
    model = zoo.build("gpt2", seed=0, **tiny_overrides("gpt2", n_layers=N_LAYERS))
    manifest = zoo.export(model, tmp_path / "out", kv_cache=True)
    proto = onnx.load(str(tmp_path / "out" / "decoder.onnx"), load_external_data=False)
    assert not [n for n in proto.graph.node if n.op_type == "Concat" and n.output[0].startswith("present.")]
    folded = f"{N_LAYERS} doing the cache and heads themselves"
    assert manifest["attention_operator"] == f"Attention (fused, {N_LAYERS} nodes, {folded})"


def test_a_shape_read_before_the_attention_moves_after_it(unfolded, tmp_path):
    """A Shape of the grown keys taken before the Attention (as a repeat of grouped heads does)
    does not stop the fold: the graph is put back in order, the Shape after the node now making them."""
    source = unfolded(True)
    target = tmp_path / "shape"
    target.mkdir()
    shutil.copyfile(source / "decoder.onnx.data", target / "decoder.onnx.data")
    proto = onnx.load(str(source / "decoder.onnx"), load_external_data=False)
    nodes = list(proto.graph.node)
    concat = next(i for i, n in enumerate(nodes) if n.output[0] == "present.0.key")
    nodes.insert(concat + 1, onnx.helper.make_node("Shape", ["present.0.key"], ["keys_shape"]))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    proto.graph.output.append(onnx.helper.make_tensor_value_info("keys_shape", onnx.TensorProto.INT64, [4]))
    onnx.save(proto, str(target / "decoder.onnx"))
    assert fold_file(target / "decoder.onnx") == N_LAYERS
    onnx.checker.check_model(str(target / "decoder.onnx"))  # topologically sorted
    feeds = feeds_for(ort.InferenceSession(str(source / "decoder.onnx")))
    got, want = run(target / "decoder.onnx", feeds), run(source / "decoder.onnx", feeds)
    assert list(got["keys_shape"]) == list(want["present.0.key"].shape)
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-5, atol=1e-5)


def test_grouped_heads_are_shared_in_sdpa_not_copied_and_compute_the_same(monkeypatch):
    """PyTorch side of the same idea: the built-in attention hands SDPA the key/value heads as they
    are (``enable_gqa``) instead of repeating each for its group; an ``attend`` set on the instance
    (as a plugin's override) still receives them repeated, and both give the same logits."""
    import torch
    import torch.nn.functional as F

    from zoo.plugins.attention import multi_head

    model = zoo.build("gpt2", seed=0, **tiny_overrides("gpt2", n_layers=N_LAYERS, **VARIANTS["rotary-gqa"])).eval()
    ids = torch.randint(0, 90, (2, 6), generator=torch.Generator().manual_seed(0))
    heads = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(multi_head.F, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: heads.append((q.shape[1], k.shape[1])) or sdpa(q, k, v, **kw))
    with torch.no_grad():
        shared = model(ids)
        assert heads and set(heads) == {(4, 2)}
        heads.clear()
        override_attend(model)
        repeated = model(ids)
    assert set(heads) == {(4, 4)}
    torch.testing.assert_close(shared, repeated, rtol=1e-5, atol=1e-5)
