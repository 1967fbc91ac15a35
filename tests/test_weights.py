"""Hugging Face GPT-2 checkpoints through the zoo's real loader: parity, layouts, round trip, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from zoo.core.model_dir import load_model
from zoo.cli import cli
from zoo.errors import WeightsError
from zoo.generation.sampling import generate
from zoo.core.spec import load_spec
from zoo.hf.checkpoint import load_weights

# A tiny GPT-2; initializer_range 0.2 spreads the logits so greedy choices are never near-ties.
TINY = dict(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=64,
            bos_token_id=96, eos_token_id=96, initializer_range=0.2)


def hf_checkpoint(directory, seed: int = 0, **config) -> GPT2LMHeadModel:
    """A random GPT2LMHeadModel saved with save_pretrained into ``directory``."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**{**TINY, **config})).eval()
    model.save_pretrained(directory)
    return model


def spec_overrides(hf_model: GPT2LMHeadModel) -> dict:
    """The ``--set`` overrides that make the registry's gpt2 match ``hf_model``'s config."""
    c = hf_model.config
    out = {"vocab_size": c.vocab_size, "context_length": c.n_positions, "d_model": c.n_embd, "n_layers": c.n_layer,
           "attention.n_heads": c.n_head, "mlp.d_ff": c.n_inner or 4 * c.n_embd,
           "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "tie_embeddings": c.tie_word_embeddings}
    if c.activation_function == "gelu":
        out["mlp"] = {"type": "gelu", "d_ff": out.pop("mlp.d_ff")}
    return out


def spec_for(hf_model: GPT2LMHeadModel, **extra):
    return load_spec("gpt2", {**spec_overrides(hf_model), **extra})


def assert_same_logits(model, hf_model, ids, atol=1e-4):
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), hf_model(ids).logits, atol=atol, rtol=0)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def set_args(overrides: dict) -> list[str]:
    return [arg for key, value in overrides.items() if not isinstance(value, dict)
            for arg in ("--set", f"{key}={value}")]


# --------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def gpt2_small(tmp_path_factory):
    """A random GPT2LMHeadModel with the exact GPT-2 Small config, saved with save_pretrained."""
    directory = tmp_path_factory.mktemp("gpt2-small")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    model.save_pretrained(directory)
    return model, directory


def test_gpt2_small_logits_and_greedy_tokens_match(gpt2_small):
    hf_model, directory = gpt2_small
    model = load_weights(load_spec("gpt2"), str(directory))
    ids = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(1))
    assert_same_logits(model, hf_model, ids)
    prompt = ids[:1, :12]  # (1, 12)
    ours = generate(model, prompt, max_new_tokens=6)
    theirs = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, min_new_tokens=6,
                               do_sample=False, pad_token_id=50256)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("width,heads", [(1024, 16), (1280, 20), (1600, 25)], ids=["medium", "large", "xl"])
def test_medium_large_xl_widths_match(tmp_path, width, heads):
    hf_model = hf_checkpoint(tmp_path, n_embd=width, n_head=heads, n_inner=None, initializer_range=0.02)
    model = load_weights(spec_for(hf_model), str(tmp_path))
    assert_same_logits(model, hf_model, torch.randint(0, 97, (2, 16)))


def test_odd_shape_three_heads_of_32_exact_gelu(tmp_path):
    hf_model = hf_checkpoint(tmp_path, n_embd=96, n_head=3, n_inner=200, activation_function="gelu",
                             layer_norm_epsilon=1e-6)
    model = load_weights(spec_for(hf_model, **{"norm.eps": 1e-6}), str(tmp_path))
    assert model.stack.h[0].attn.head_dim == 32
    assert_same_logits(model, hf_model, torch.randint(0, 97, (3, 20)))


def test_untied_lm_head_loads(tmp_path):
    hf_model = hf_checkpoint(tmp_path, tie_word_embeddings=False)
    model = load_weights(spec_for(hf_model), str(tmp_path))
    assert model.lm_head.weight is not model.wte.weight
    assert_same_logits(model, hf_model, torch.randint(0, 97, (2, 12)))


def test_old_checkpoint_with_mask_buffers_and_no_prefix_loads(tmp_path):
    """Like the original openai-community/gpt2 file: no "transformer." prefix, attn.bias and
    attn.masked_bias buffers, a copy of the tied head."""
    hf_model = hf_checkpoint(tmp_path)
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(tmp_path / "model.safetensors").items()}
    for i in range(TINY["n_layer"]):
        tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    tensors["lm_head.weight"] = tensors["wte.weight"].clone()
    save_file(tensors, tmp_path / "model.safetensors")
    model = load_weights(spec_for(hf_model), str(tmp_path))
    assert_same_logits(model, hf_model, torch.randint(0, 97, (2, 12)))


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path):
    hf_model = hf_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    model = load_weights(spec_for(hf_model), str(tmp_path))
    assert_same_logits(model, hf_model, torch.randint(0, 97, (2, 12)))


def test_pickle_with_code_is_refused(tmp_path):
    hf_model = hf_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    torch.save({"wte.weight": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="refused to unpickle"):
        load_weights(spec_for(hf_model), str(tmp_path))


def test_sharded_safetensors_load(tmp_path):
    hf_model = hf_checkpoint(tmp_path / "full")
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    model = load_weights(spec_for(hf_model), str(tmp_path / "sharded"))
    assert_same_logits(model, hf_model, torch.randint(0, 97, (2, 12)))


def test_conv1d_weights_are_loaded_as_views_not_copies(tmp_path):
    """Conv1D weights [in, out] become the zoo's [out, in] by a transposed view: no copy."""
    hf_model = hf_checkpoint(tmp_path)
    model = load_weights(spec_for(hf_model), str(tmp_path))
    weight = model.stack.h[0].mlp.c_fc.weight  # (d_ff, d_model)
    assert weight.shape == (64, 32) and weight.t().is_contiguous()
    assert torch.equal(weight.t(), hf_model.transformer.h[0].mlp.c_fc.weight)


def test_name_table_covers_every_hf_parameter():
    hf_model = GPT2LMHeadModel(GPT2Config(**TINY))
    spec = spec_for(hf_model)
    from zoo.plugins.checkpoints.gpt2 import GPT2

    theirs = {k for k in hf_model.state_dict() if k != "lm_head.weight"}
    assert {name for transform in GPT2.table(spec).values() for name in transform.sources()} == theirs


# --------------------------------------------------------------------------- sources and the CLI


def test_build_with_weights_path_writes_the_checkpoint(tmp_path):
    hf_model = hf_checkpoint(tmp_path / "hf")
    overrides = spec_overrides(hf_model)
    result = run("build", "gpt2", *set_args(overrides), "--weights", tmp_path / "hf", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert f"weights from {tmp_path / 'hf'}" in result.output
    assert_same_logits(load_model(tmp_path / "out"), hf_model, torch.randint(0, 97, (2, 12)))


def test_zoo_model_directory_is_a_source(tmp_path):
    overrides = spec_overrides(GPT2LMHeadModel(GPT2Config(**TINY)))
    assert run("build", "gpt2", *set_args(overrides), "-o", tmp_path / "zoo", "--seed", 3).exit_code == 0
    spec = load_spec("gpt2", overrides)
    model = load_weights(spec, str(tmp_path / "zoo"))
    assert torch.equal(model.wte.weight, load_model(tmp_path / "zoo").wte.weight)
    with pytest.raises(WeightsError, match="d_model"):
        load_weights(load_spec("gpt2", {**overrides, "d_model": 64}), str(tmp_path / "zoo"))


def fake_hub_cache(cache, repo_id: str, hf_dir) -> None:
    """Lay ``hf_dir``'s files out as huggingface_hub's cache holds a downloaded snapshot."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((hf_dir / name).read_bytes())


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache in ``tmp_path/hub`` with the hub switched off."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_weights_hf_reads_the_spec_hub_id_from_the_cache_offline(tmp_path, offline_hub):
    hf_model = hf_checkpoint(tmp_path / "hf")
    fake_hub_cache(offline_hub, "openai-community/gpt2", tmp_path / "hf")
    spec = spec_for(hf_model)
    assert spec.weights["hf"] == "openai-community/gpt2"
    assert_same_logits(load_weights(spec, "hf"), hf_model, torch.randint(0, 97, (2, 12)))
    assert_same_logits(load_weights(spec, "openai-community/gpt2"), hf_model, torch.randint(0, 97, (2, 12)))


def test_uncached_hub_id_offline_is_one_clear_line(tmp_path, offline_hub):
    overrides = spec_overrides(GPT2LMHeadModel(GPT2Config(**TINY)))
    result = run("build", "gpt2", *set_args(overrides), "--weights", "openai-community/gpt2", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert result.output.startswith("error: openai-community/gpt2: not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- bad input


def build_error(tmp_path, weights, overrides) -> str:
    """Run ``zoo build --weights`` expecting a one-line error and no output directory."""
    result = run("build", "gpt2", *set_args(overrides), "--weights", weights, "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp directory left
    return result.output.strip()


def test_wrong_size_is_named_before_any_tensor_is_read(tmp_path):
    hf_model = hf_checkpoint(tmp_path / "hf", n_embd=64)
    overrides = {**spec_overrides(hf_model), "d_model": 32}
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"not even a safetensors file")
    message = build_error(tmp_path, tmp_path / "hf", overrides)
    assert "n_embd is 64 but gpt2 has d_model 32" in message


def test_wrong_vocab_names_the_field(tmp_path):
    hf_model = hf_checkpoint(tmp_path / "hf", vocab_size=120)
    overrides = {**spec_overrides(hf_model), "vocab_size": 97}
    assert "vocab_size is 120 but gpt2 has vocab_size 97" in build_error(tmp_path, tmp_path / "hf", overrides)


def test_a_medium_checkpoint_for_small_says_which_model_fits(tmp_path):
    (tmp_path / "hf").mkdir()
    GPT2Config(n_embd=1024, n_layer=24, n_head=16).save_pretrained(tmp_path / "hf")
    message = build_error(tmp_path, tmp_path / "hf", {})
    assert "n_embd is 1024 but gpt2 has d_model 768" in message and "fits gpt2-medium" in message


def test_tensor_shape_that_disagrees_with_config_is_named(tmp_path):
    hf_model = hf_checkpoint(tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(path)
    tensors["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(32, 65)
    save_file(tensors, path)
    message = build_error(tmp_path, tmp_path / "hf", spec_overrides(hf_model))
    assert "transformer.h.1.mlp.c_fc.weight has shape (32, 65), gpt2 needs (32, 64)" in message


def test_missing_and_unexpected_keys_are_named(tmp_path):
    hf_model = hf_checkpoint(tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(path)
    del tensors["transformer.h.1.ln_2.bias"]
    tensors["transformer.h.1.adapter.weight"] = torch.zeros(2)
    save_file(tensors, path)
    message = build_error(tmp_path, tmp_path / "hf", spec_overrides(hf_model))
    assert "missing transformer.h.1.ln_2.bias" in message and "unexpected transformer.h.1.adapter.weight" in message


def test_truncated_safetensors_is_one_line(tmp_path):
    hf_model = hf_checkpoint(tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = build_error(tmp_path, tmp_path / "hf", spec_overrides(hf_model))
    assert "cannot read safetensors file" in message and "truncated" in message


def test_directory_without_weights(tmp_path):
    hf_model = hf_checkpoint(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    assert "no weights found" in build_error(tmp_path, tmp_path / "hf", spec_overrides(hf_model))


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no config.json" in build_error(tmp_path, tmp_path / "empty", {})


def test_path_that_does_not_exist(tmp_path):
    message = build_error(tmp_path, tmp_path / "nowhere" / "at-all", {})
    assert "no such directory, and not a Hugging Face hub id" in message


def test_non_gpt2_config_is_refused(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert "model_type is 'llama'" in build_error(tmp_path, tmp_path / "hf", {})


def test_spec_that_is_not_gpt2_shaped_is_refused(tmp_path):
    hf_model = hf_checkpoint(tmp_path)
    with pytest.raises(WeightsError, match="positional.type 'rotary'; a gpt2 checkpoint needs 'learned'"):
        load_weights(spec_for(hf_model, positional="rotary"), str(tmp_path))


def test_truncated_pytorch_model_bin_is_one_line(tmp_path):
    hf_model = hf_checkpoint(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(hf_model.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    path = tmp_path / "hf" / "pytorch_model.bin"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = build_error(tmp_path, tmp_path / "hf", spec_overrides(hf_model))
    assert "cannot read PyTorch checkpoint" in message
