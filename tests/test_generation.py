"""Generation: cache vs no cache, zoo vs Hugging Face greedy, padding, sampling, stopping, streaming, CLI."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import zoo
from zoo.cli import cli
from zoo.errors import DataError
from zoo.generation.sampling import generate, next_tokens, prepare_for_decode
from zoo.hf.formats import to_hf_model

# The registry's gpt2 cut to 2 layers of width 64; GPT-2's vocabulary, so real text tokenizes.
SMALL = {"n_layers": 2, "d_model": 64, "attention.n_heads": 4, "mlp.d_ff": 128, "context_length": 96}
EOS = 50256


@pytest.fixture(scope="module")
def model():
    net = zoo.build("gpt2", seed=0, **SMALL)
    with torch.no_grad():  # larger weights than GPT-2's init: distinct logits, no near-ties in argmax
        for p in net.parameters():
            p.mul_(6.0)
    return net


@pytest.fixture(scope="module")
def hf_model(model):
    return to_hf_model(model)


def padded_batch():
    """Three prompts of 9, 6 and 3 tokens, left-padded with <|endoftext|>."""
    ids = torch.randint(0, EOS, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :6] = 0
    return ids.masked_fill(mask == 0, EOS), mask


def test_greedy_is_identical_with_and_without_cache(model):
    ids, mask = padded_batch()
    cached = generate(model, ids, mask, max_new_tokens=16)
    assert cached.shape == (3, 25)
    assert torch.equal(cached, generate(model, ids, mask, max_new_tokens=16, use_cache=False))


def test_greedy_matches_hugging_face_generate(model, hf_model):
    ids, mask = padded_batch()
    ours = generate(model, ids, mask, max_new_tokens=16, eos_token_id=EOS)
    with torch.inference_mode():
        theirs = hf_model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                                   eos_token_id=EOS, pad_token_id=EOS)
    assert torch.equal(ours, theirs)


def test_left_padding_gives_each_row_its_unpadded_continuation(model):
    ids, mask = padded_batch()
    batch = generate(model, ids, mask, max_new_tokens=10)
    for row in range(3):
        alone = generate(model, ids[row: row + 1, mask[row].bool()], max_new_tokens=10)
        assert torch.equal(batch[row, 9:], alone[0, -10:])


class CountingLM:
    """Not a torch module: the bare call protocol an ONNX Runtime wrapper provides.

    Its logits always favour (last token + 1) mod V; it records the shape of each call."""

    vocab = 11

    class Cache:
        def __init__(self) -> None:
            self.length = 0

    def __init__(self) -> None:
        self.calls = []

    def new_cache(self, batch, capacity):
        return self.Cache()

    def __call__(self, input_ids, attention_mask=None, cache=None, last_only=False):
        self.calls.append(tuple(input_ids.shape))
        if cache is not None:
            cache.length += input_ids.shape[1]
        logits = torch.nn.functional.one_hot((input_ids[:, -1:] + 1) % self.vocab, self.vocab).float()
        return logits  # (B, 1, V)


def test_any_object_with_the_call_protocol_generates_and_streams():
    lm = CountingLM()
    streamed = []
    out = generate(lm, torch.tensor([[1, 2], [5, 6]]), max_new_tokens=4, stream=lambda t: streamed.append(t.tolist()))
    assert out.tolist() == [[1, 2, 3, 4, 5, 6], [5, 6, 7, 8, 9, 10]]
    assert streamed == [[3, 7], [4, 8], [5, 9], [6, 10]]
    assert lm.calls == [(2, 2), (2, 1), (2, 1), (2, 1)]  # the prompt once, then one token per step


def test_eos_finishes_a_row_and_all_rows_stop_generation():
    out = generate(CountingLM(), torch.tensor([[6], [1]]), max_new_tokens=9, eos_token_id=8)
    assert out.tolist() == [[6, 7, 8, 8, 8, 8, 8, 8], [1, 2, 3, 4, 5, 6, 7, 8]]  # stops once both rows ended


def test_sampling_is_reproducible_with_a_seed(model):
    ids, mask = padded_batch()
    kwargs = dict(max_new_tokens=12, temperature=0.8, top_k=40, top_p=0.95)
    first = generate(model, ids, mask, seed=7, **kwargs)
    assert torch.equal(first, generate(model, ids, mask, seed=7, **kwargs))
    assert not torch.equal(first, generate(model, ids, mask, seed=8, **kwargs))


def test_top_k_one_and_tiny_top_p_are_greedy(model):
    ids, mask = padded_batch()
    greedy = generate(model, ids, mask, max_new_tokens=8)
    assert torch.equal(greedy, generate(model, ids, mask, max_new_tokens=8, temperature=1.5, top_k=1, seed=0))
    assert torch.equal(greedy, generate(model, ids, mask, max_new_tokens=8, temperature=1.5, top_p=1e-6, seed=0))


def test_top_k_and_top_p_keep_only_their_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(2000, 4)  # (2000, V)
    generator = torch.Generator().manual_seed(0)
    top2 = next_tokens(logits, temperature=1.0, top_k=2, generator=generator)
    assert set(top2.tolist()) == {0, 1}
    nucleus = next_tokens(logits, temperature=1.0, top_p=0.7, generator=generator)  # 0.5 + 0.3 reach 0.7
    assert set(nucleus.tolist()) == {0, 1}
    everything = next_tokens(logits, temperature=1.0, generator=generator)
    assert set(everything.tolist()) == {0, 1, 2, 3}
    assert abs(everything.eq(0).float().mean().item() - 0.5) < 0.05


def test_prompt_plus_new_tokens_beyond_the_context_is_an_error(model):
    with pytest.raises(DataError, match="exceed the context length of 96; ask for at most 6 new tokens"):
        generate(model, torch.zeros(1, 90, dtype=torch.long), max_new_tokens=10)


@pytest.mark.parametrize("kwargs, message", [(dict(max_new_tokens=-1), "max_new_tokens must be >= 0, got -1"),
                                             (dict(temperature=-0.1), "temperature must be >= 0"),
                                             (dict(top_k=0), "top_k must be >= 1, got 0"),
                                             (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0")])
def test_settings_out_of_range_are_refused(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model, torch.zeros(1, 3, dtype=torch.long), **{"max_new_tokens": 2, **kwargs})


def test_prepare_for_decode_keeps_values_ties_and_training(monkeypatch):
    from zoo.generation.sampling import _packed, inference_linear

    net = zoo.build("gpt2", seed=1, **SMALL)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0, 0.1)  # GPT-2's init zeroes biases: give them values to get right
    layer = net.stack.h[0].attn.c_attn
    layer.weight.data = layer.weight.data.t().contiguous().t()  # stored [in, out], as a loaded Conv1D weight is
    ids = torch.randint(0, EOS, (2, 7))
    with torch.no_grad():
        before = net(ids)
    with_grad = net(ids).detach()
    prepare_for_decode(net)
    assert net.lm_head.weight is net.wte.weight
    assert layer.weight.is_contiguous()  # stored [out, in] again
    assert layer.forward.func is inference_linear and "forward" not in vars(torch.nn.Linear(2, 2))  # this layer only
    assert layer not in _packed  # batch 1: no packed copies
    storage, forward = layer.weight.data_ptr(), layer.forward
    prepare_for_decode(net)  # already done: nothing moves
    assert layer.weight.data_ptr() == storage and layer.forward is forward
    with torch.no_grad():  # oneDNN: the same values up to rounding
        torch.testing.assert_close(net(ids), before, rtol=1e-5, atol=1e-5)
        x = torch.randn(3, 5, layer.in_features)
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    prepare_for_decode(net, batch=2)  # several rows: a packed copy of every weight, used by the layer
    packed = _packed[layer][1]
    assert packed.is_mkldnn and _packed[net.lm_head][1].is_mkldnn
    with torch.no_grad():
        torch.testing.assert_close(net(ids), before, rtol=1e-5, atol=1e-5)
    assert torch.equal(net(ids).detach(), with_grad)  # recording gradients: F.linear itself
    generate(net, ids, max_new_tokens=2)
    net.train()
    net(ids).sum().backward()  # weights touched by generate still train
    assert net.wte.weight.grad is not None
    with torch.no_grad():
        layer.weight.add_(1.0)  # a training step changes the weight in place: its packed copy is stale
        x = torch.randn(2, 1, layer.in_features)
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    prepare_for_decode(net, batch=2)
    assert _packed[layer][1] is not packed  # packed again from the new values
    with torch.no_grad():
        layer.weight.add_(1.0)
    monkeypatch.setattr("zoo.core.limits.host_memory_available", lambda: 0)  # no room: no copies made,
    prepare_for_decode(net, batch=2)
    assert layer not in _packed  # and the stale one dropped


def test_weights_oneDNN_cannot_pack_on_this_cpu_stay_plain_and_still_generate(monkeypatch):
    """oneDNN refuses a bfloat16 packed layout on a CPU without AVX-512 (an AMD EPYC Zen 3): no
    layer keeps a copy, and generation runs from the plain weights."""
    from zoo.generation.sampling import _packed

    net = zoo.build("gpt2", seed=1, **SMALL).to(torch.bfloat16)
    ids = torch.randint(0, EOS, (1, 5))
    expected = generate(net, ids, max_new_tokens=3)
    calls = []
    def refuse(weight, *args):
        calls.append(weight)
        if len(calls) > 2:  # fails part-way: the copies made before go too
            raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx512bw")
        return weight.to_mkldnn()
    monkeypatch.setattr("zoo.core.limits.cpu_has_bf16", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    _packed.clear()
    assert torch.equal(generate(net, ids, max_new_tokens=3), expected)
    assert len(calls) == 3 and not any(m in _packed for m in net.modules())


def test_bfloat16_weights_are_packed_at_batch_1_where_the_cpu_computes_bfloat16():
    from zoo.core.limits import cpu_has_bf16
    from zoo.generation.sampling import _packed

    net = zoo.build("gpt2", seed=1, **SMALL).to(torch.bfloat16)
    ids = torch.randint(0, EOS, (2, 7))
    with torch.no_grad():
        before = net(ids).float()
    prepare_for_decode(net)
    layer = net.stack.h[0].mlp.c_fc
    assert (layer in _packed) == cpu_has_bf16()
    if layer in _packed:
        assert _packed[layer][1].is_mkldnn and _packed[layer][1].dtype == torch.bfloat16
    with torch.no_grad():  # bfloat16 products in another order: equal up to bfloat16 rounding
        torch.testing.assert_close(net(ids).float(), before, rtol=0.05, atol=0.05)
        x = torch.randn(1, 1, layer.in_features, dtype=torch.bfloat16)
        torch.testing.assert_close(layer(x).float(), torch.nn.functional.linear(x, layer.weight, layer.bias).float(),
                                   rtol=0.02, atol=0.02)


# --------------------------------------------------------------------------- CLI


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def set_args(overrides: dict) -> list[str]:
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]


def test_cli_streams_one_prompt_and_matches_the_api():
    result = run("generate", "gpt2", "Once upon a time", *set_args(SMALL), "--max-new-tokens", 12, "--seed", 0)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Once upon a time") and len(lines[0]) > len("Once upon a time")
    assert "tokens in" in result.stderr and "random weights" in result.stderr
    tokenizer = zoo.generation.tokenizer.gpt2_tokenizer()
    ids = torch.tensor([tokenizer("Once upon a time").input_ids])
    expected = generate(zoo.build("gpt2", seed=0, **SMALL), ids, max_new_tokens=12, eos_token_id=EOS)
    assert result.stdout == "Once upon a time" + tokenizer.decode(expected[0, ids.shape[1]:], skip_special_tokens=True) + "\n"


def test_cli_batch_of_prompts_same_with_and_without_cache():
    args = ["generate", "gpt2", "Hello, my name is", "The capital of France", *set_args(SMALL),
            "--max-new-tokens", 8]
    cached, uncached = run(*args), run(*args, "--no-cache")
    assert cached.exit_code == 0 and uncached.exit_code == 0
    assert cached.stdout == uncached.stdout
    assert "Hello, my name is" in cached.stdout and "\n\nThe capital of France" in cached.stdout


@pytest.mark.parametrize("native", [False, True])
def test_cli_bfloat16_on_a_cpu_without_native_bf16_says_so_once_and_runs_float32(monkeypatch, native):
    import importlib

    import zoo.core.limits

    monkeypatch.setattr(zoo.core.limits, "cpu_has_bf16", lambda: native)
    command = importlib.import_module("zoo.cli.generate")
    built = []
    def model_from_args(*args, dtype, **kwargs):
        built.append(dtype)
        return build_model(*args, dtype=dtype, **kwargs)
    build_model = command.model_from_args
    monkeypatch.setattr(command, "model_from_args", model_from_args)
    args = ["generate", "gpt2", "Once upon a time", *set_args(SMALL), "--max-new-tokens", 6, "--seed", 0]
    fp32, bf16 = run(*args), run(*args, "--dtype", "bfloat16")
    assert fp32.exit_code == 0 and bf16.exit_code == 0, bf16.output
    notes = [line for line in bf16.stderr.splitlines() if "bfloat16" in line]
    if native:
        assert notes == [] and built == [torch.float32, torch.bfloat16]
    else:
        assert built == [torch.float32, torch.float32]
        assert notes == ["note: this CPU has no native bfloat16 (AVX512-BF16 or AMX), so bfloat16 would run slower "
                         "than float32; generating in float32"]
        assert bf16.stdout == fp32.stdout  # float32 weights: the same tokens


def test_cli_sampling_with_a_seed_repeats():
    args = ["generate", "gpt2", "It was a dark", *set_args(SMALL), "--max-new-tokens", 8, "--temperature", 0.9,
            "--top-k", 50, "--top-p", 0.9, "--seed", 5]
    assert run(*args).stdout == run(*args).stdout


def test_cli_empty_prompt_and_bad_settings_are_errors():
    empty = run("generate", "gpt2", "", *set_args(SMALL))
    assert empty.exit_code == 1 and empty.output.strip() == "error: prompt 1 is empty; give each prompt some text"
    assert run("generate", "gpt2", "hi", "--top-p", 1.5).exit_code == 2
    mixed = run("generate", "some-dir", "hi", "--runtime", "onnxruntime", "--set", "n_layers=2")
    assert mixed.exit_code == 1 and "do not apply to --runtime onnxruntime" in mixed.output


def test_cli_onnxruntime_runtime_gives_the_torch_tokens(tmp_path):
    exported = run("export", "gpt2", *set_args(SMALL), "--format", "onnx", "--kv-cache", "-o", tmp_path / "onnx")
    assert exported.exit_code == 0, exported.output
    common = ["--max-new-tokens", 10, "Once upon a time", "In the beginning"]
    torch_run = run("generate", "gpt2", *set_args(SMALL), *common)
    onnx_run = run("generate", tmp_path / "onnx", "--runtime", "onnxruntime", *common)
    assert onnx_run.exit_code == 0, onnx_run.output
    assert onnx_run.stdout == torch_run.stdout
