"""Every registered model and every component combination builds, trains and decodes."""

import itertools

import pytest
import torch

import zoo
from conftest import tiny_overrides
from zoo.core.builder import build
from zoo.core.spec import load_spec

POSITIONAL = ["learned", "sinusoidal", "rotary", "alibi", "none"]
ATTENTION = {"mha": {}, "gqa": {"attention.n_kv_heads": 2}, "mqa": {"attention.n_kv_heads": 1}}
BLOCKS = ["pre_norm", "post_norm", "parallel"]


def tiny_decoder(positional="learned", attention="mha", block="pre_norm", **extra):
    overrides = tiny_overrides("gpt2", positional=positional, block=block, **ATTENTION[attention], **extra)
    return build("gpt2", seed=0, **overrides)


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_registered_model_trains_at_tiny_size(name):
    model = build(name, seed=0, **tiny_overrides(name)).train()
    ids = torch.randint(3, 97, (2, 9))
    logits = model(ids, ids) if model.spec.is_encoder_decoder else model(ids)
    assert logits.shape == (2, 9, 97) and torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


COMBOS = list(itertools.product(POSITIONAL, ATTENTION, BLOCKS))


@pytest.mark.parametrize("positional,attention,block", COMBOS)
def test_decoder_combination(positional, attention, block):
    torch.manual_seed(0)
    model = tiny_decoder(positional, attention, block)
    ids = torch.randint(0, 97, (2, 12))

    # forward and backward
    model.train()
    model(ids).square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()

    with torch.no_grad():
        full = model(ids)
        # causality: a changed future token leaves earlier logits unchanged
        changed = ids.clone()
        changed[:, 8] = (changed[:, 8] + 1) % 97
        torch.testing.assert_close(model(changed)[:, :8], full[:, :8])
        assert not torch.allclose(model(changed)[:, 8:], full[:, 8:])

        # incremental decoding with the cache equals the full pass
        cache = model.new_cache(2, 4)  # small capacity: exercises growth
        steps = [model(ids[:, :5], cache=cache)] + [model(ids[:, t : t + 1], cache=cache) for t in range(5, 12)]
        torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
        assert cache.length == 12


@pytest.mark.parametrize("positional", POSITIONAL)
def test_left_padding_does_not_change_real_tokens(positional):
    model = tiny_decoder(positional, "gqa")
    ids = torch.randint(3, 97, (1, 6))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask)[:, 3:], model(ids), atol=1e-5, rtol=1e-4)
        # and through the cache, one token at a time after a padded prompt
        cache = model.new_cache(1, 16)
        first = model(padded, attention_mask=mask, cache=cache)
        nxt = torch.tensor([[5]])
        step = model(nxt, attention_mask=torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], 1), cache=cache)
        torch.testing.assert_close(step[:, -1], model(torch.cat([ids, nxt], 1))[:, -1], atol=1e-5, rtol=1e-4)
        assert torch.isfinite(first).all()


def test_bidirectional_decoder_sees_the_future():
    model = tiny_decoder(**{"attention.causal": False})
    ids = torch.randint(0, 97, (1, 8))
    changed = ids.clone()
    changed[0, 7] = (changed[0, 7] + 1) % 97
    with torch.no_grad():
        assert not torch.allclose(model(ids)[:, :7], model(changed)[:, :7])


@pytest.mark.parametrize("positional,block", list(itertools.product(POSITIONAL, BLOCKS)))
def test_encoder_decoder_combination(positional, block):
    torch.manual_seed(0)
    model = build("transformer-en-it", seed=0, **tiny_overrides("transformer-en-it", positional=positional, block=block))
    src = torch.randint(3, 97, (2, 7))
    src_mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    tgt = torch.randint(3, 97, (2, 6))
    model.train()
    model(src, tgt, src_mask).square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        full = model(src, tgt, src_mask)
        # the decoder is causal
        changed = tgt.clone()
        changed[:, 4] = (changed[:, 4] + 1) % 97
        torch.testing.assert_close(model(src, changed, src_mask)[:, :4], full[:, :4])
        # padding in the source is ignored
        garbage = src.clone()
        garbage[1, 5:] = 42
        torch.testing.assert_close(model(garbage, tgt, src_mask)[1], full[1])
        # incremental decoding with self- and cross-attention caches
        memory = model.encode(src, src_mask)
        cache = model.new_cache(2, 8)
        steps = [model.decode(tgt[:, t : t + 1], memory, src_mask, cache=cache) for t in range(6)]
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
        # beams reorder the cache
        cache.reorder(torch.tensor([1, 1]))
        assert cache.k[0].shape[0] == 2 and torch.equal(cache.memory[0][0][0], cache.memory[0][0][1])


def test_custom_components_by_class():
    from zoo.plugins.mlp import SwiGLU

    spec = load_spec("gpt2", tiny_overrides("gpt2", mlp="swiglu", norm="rms_norm"))
    model = build(spec, seed=0)
    assert isinstance(model.stack.h[0].mlp, SwiGLU)
    assert zoo.get_registry().get("mlp", SwiGLU) is SwiGLU  # a class passes through lookups


def test_seeded_build_is_deterministic():
    a, b = tiny_decoder(), tiny_decoder()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    assert a.lm_head.weight is a.wte.weight  # tied once


@pytest.mark.parametrize("positional", POSITIONAL)
def test_static_masks_and_logit_index_match_the_eager_fast_paths(positional):
    """What the exported graphs ask of the model (``static_mask``, ``logit_index``)
    gives the eager pass's logits, padded or not, with and without a cache."""
    model = tiny_decoder(positional, "gqa").eval()
    ids = torch.randint(3, 97, (2, 9))
    padded = torch.ones_like(ids)
    padded[1, :3] = 0
    index = torch.tensor([8, 6, 2])
    with torch.no_grad():
        for mask in (None, torch.ones_like(ids), padded):
            full = model(ids, attention_mask=mask)
            torch.testing.assert_close(model(ids, attention_mask=mask, static_mask=True), full)
            torch.testing.assert_close(model(ids, attention_mask=mask, logit_index=index), full[:, index])
            cache = model.new_cache(2, 9)
            model(ids[:, :6], attention_mask=None if mask is None else mask[:, :6], cache=cache, static_mask=True)
            step = model(ids[:, 6:], attention_mask=mask, cache=cache, static_mask=True, logit_index=index[:2] - 6)
            torch.testing.assert_close(step, full[:, index[:2]], atol=1e-5, rtol=1e-4)

    model = build("transformer-en-it", seed=0, **tiny_overrides("transformer-en-it", positional=positional)).eval()
    src, tgt = torch.randint(3, 97, (2, 7)), torch.randint(3, 97, (2, 6))
    src_mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    with torch.no_grad():
        memory = model.encode(src, src_mask)
        torch.testing.assert_close(model.encode(src, src_mask, static_mask=True), memory)
        full = model.decode(tgt, memory, src_mask)
        torch.testing.assert_close(model.decode(tgt, memory, src_mask, static_mask=True), full)
        cache = model.new_cache(2, 6)
        cache.memory.update(model.cross_attention_kv(memory))  # what the cross_attention_kv graph computes
        model.decode(tgt[:, :4], None, src_mask, cache=cache, static_mask=True)
        step = model.decode(tgt[:, 4:], None, src_mask, cache=cache, static_mask=True, last_only=True)
        torch.testing.assert_close(step, full[:, -1:], atol=1e-5, rtol=1e-4)


def test_build_mask_static_is_always_materialised():
    from zoo.core.masks import build_mask

    ones = torch.ones(2, 5, dtype=torch.long)  # nothing padded
    assert build_mask(1, 4, ones, True, None, torch.float32, "cpu") == (None, False)  # one query sees all
    assert build_mask(3, 0, None, True, None, torch.float32, "cpu") == (None, True)  # SDPA's is_causal
    mask, is_causal = build_mask(1, 4, ones, True, None, torch.float32, "cpu", static=True)
    assert not is_causal and mask.shape == (2, 1, 1, 5) and bool(mask.all())
    mask, is_causal = build_mask(3, 0, None, True, None, torch.float32, "cpu", static=True)
    assert not is_causal and torch.equal(mask[0, 0], torch.ones(3, 3, dtype=torch.bool).tril())
    bias = torch.randn(1, 4, 3, 5)
    padded = ones.clone()
    padded[1, :2] = 0
    for padding in (None, ones, padded):
        fast, _ = build_mask(3, 2, padding, True, bias, torch.float32, "cpu")
        static, _ = build_mask(3, 2, padding, True, bias, torch.float32, "cpu", static=True)
        torch.testing.assert_close(static, fast.expand_as(static))


@pytest.mark.parametrize("n_heads", [1, 4, 6, 12, 20, 32])
def test_alibi_attends_as_transformers_bloom(n_heads):
    """An independent reference: BLOOM's build_alibi_tensor (slope_h * key position) in
    transformers. zoo's bias, -slope_h * |i - j|, differs from it by -slope_h * i along each causal
    row, a constant that softmax removes; so the slopes and the causal attention weights agree."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    T = 9
    model = zoo.build("gpt2", seed=0, positional="alibi", d_model=4 * n_heads, n_layers=1,
                      **{"attention.n_heads": n_heads, "context_length": 16})
    positions = torch.arange(T)
    ours = model.positional.attention_bias(positions, positions, True)[0]  # (H, T, T)
    bloom = build_alibi_tensor(torch.ones(1, T), n_heads, torch.float32)[:, 0]  # (H, T)
    torch.testing.assert_close(-ours[:, 1, 0], bloom[:, 1], rtol=1e-6, atol=0)  # slope_h, both ways
    scores = torch.randn(n_heads, T, T, generator=torch.Generator().manual_seed(n_heads))
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    theirs = (scores + bloom[:, None, :]).masked_fill(~causal, float("-inf")).softmax(-1)
    torch.testing.assert_close((scores + ours).masked_fill(~causal, float("-inf")).softmax(-1), theirs,
                               rtol=1e-5, atol=1e-6)
