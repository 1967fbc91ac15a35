"""Llama, Qwen2 and GPT-NeoX checkpoints through the checkpoint-format registry.

Random transformers models at each family's published widths, depth cut to 2 layers and
the vocabulary cut to 512 (so that embeddings stay small), saved with ``save_pretrained``
beside a ``tokenizer.json`` and read through the real ``--weights PATH`` path.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import zoo
from zoo.cli import cli
from zoo.core.meta import assemble, count_parameters
from zoo.errors import WeightsError
from zoo.hf.formats import format_for_spec, formats, to_hf_model, to_hf_state_dict
from zoo.hf.verify import PROMPTS

from conftest import tiny_overrides

# config.json values as published on the hub (the fields that size each model).
PUBLISHED = {
    "smollm2-135m": dict(
        model_type="llama", vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, intermediate_size=1536, rms_norm_eps=1e-5, rope_theta=100000.0,
        max_position_embeddings=8192, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, head_dim=64),
    "qwen2.5-0.5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, intermediate_size=4864, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=32768, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643,
        use_sliding_window=False),
    "pythia-160m": dict(
        model_type="gpt_neox", vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, layer_norm_eps=1e-5, rotary_pct=0.25, rotary_emb_base=10000,
        max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
        use_parallel_residual=True, hidden_act="gelu"),
}
PARAMETERS = {"smollm2-135m": 134_515_008, "qwen2.5-0.5b": 494_032_768, "pythia-160m": 162_322_944}
CUT = dict(num_hidden_layers=2, vocab_size=512, bos_token_id=0, eos_token_id=0)
# An odd shape per family: few heads, one key/value head, uneven widths, the other tying.
ODD = {
    "smollm2-135m": dict(hidden_size=48, num_attention_heads=3, num_key_value_heads=1, head_dim=16,
                         intermediate_size=40, vocab_size=61, tie_word_embeddings=False),
    "qwen2.5-0.5b": dict(hidden_size=40, num_attention_heads=5, num_key_value_heads=5, intermediate_size=24,
                         vocab_size=61, tie_word_embeddings=False),
    "pythia-160m": dict(hidden_size=48, num_attention_heads=4, intermediate_size=100, rotary_pct=0.5,
                        vocab_size=61, tie_word_embeddings=True),
}
NAMES = list(PUBLISHED)


def hf_model(config: dict, seed: int = 0):
    """A random transformers model of ``config`` (config.json values), in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(config)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(values.pop("model_type"), **values)).eval()


def write_tokenizer(directory) -> None:
    """A small byte-level BPE ``tokenizer.json`` (vocabulary 400) trained on the verify prompts."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(PROMPTS * 5, trainer)
    tokenizer.save(str(directory / "tokenizer.json"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """``checkpoint(name)`` -> directory of the 2-layer, published-width random checkpoint."""
    made = {}

    def get(name: str):
        if name not in made:
            directory = tmp_path_factory.mktemp(name)
            hf_model({**PUBLISHED[name], **CUT}).save_pretrained(directory)
            write_tokenizer(directory)
            made[name] = directory
        return made[name]

    return get


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def cut_args(name: str) -> list[str]:
    return ["--set", "n_layers=2", "--set", "vocab_size=512", "--set", "bos_token_id=0", "--set", "eos_token_id=0"]


# --------------------------------------------------------------------------- published sizes


@pytest.mark.parametrize("name", NAMES)
def test_published_parameter_counts_equal_transformers(name):
    spec = zoo.load_spec(name)
    ours = count_parameters(assemble(spec))
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(PUBLISHED[name])
    with torch.device("meta"):
        theirs = AutoModelForCausalLM.from_config(AutoConfig.for_model(values.pop("model_type"), **values))
    assert ours == PARAMETERS[name] == sum(p.numel() for p in theirs.parameters())
    fmt = format_for_spec(spec)
    assert fmt.model_type == PUBLISHED[name]["model_type"]
    assert fmt.spec_from_config(PUBLISHED[name], "some/dir").name == name  # the catalog entry it fits
    fmt.check_config(PUBLISHED[name], spec, "config.json")


# --------------------------------------------------------------------------- real checkpoints, real loader


@pytest.mark.parametrize("name", NAMES)
def test_verify_against_transformers_through_weights_path(name, checkpoint):
    directory = checkpoint(name)
    result = run("verify", name, *cut_args(name), "--weights", directory, "--steps", 4)
    assert result.exit_code == 0, result.output
    assert f"vs transformers {format_for_spec(zoo.load_spec(name)).architecture}" in result.output
    assert "greedy 4 steps vs generate()" in result.output and "PASS" in result.output


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_is_bit_identical_both_ways(name, checkpoint, tmp_path):
    directory = checkpoint(name)
    model = zoo.load(directory)  # no catalog entry has this shape: the spec comes from config.json
    assert model.spec.name == str(directory)
    out = tmp_path / "hf"
    manifest = zoo.export(model, out, "hf")  # verified: the zoo reads it back bit-identical
    assert manifest["verification"]["round_trip"] == "bit-identical"
    original, exported = load_file(directory / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(original) == set(exported)
    assert all(torch.equal(original[k], exported[k]) for k in original)


@pytest.mark.parametrize("name", NAMES)
def test_odd_shape_matches_transformers(name, tmp_path):
    config = {**PUBLISHED[name], **CUT, **ODD[name]}
    reference = hf_model(config, seed=1)
    reference.save_pretrained(tmp_path)
    model = zoo.load(tmp_path)
    ids = torch.randint(0, 61, (2, 11))
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), reference(ids).logits, atol=1e-4, rtol=0)
    theirs = to_hf_state_dict(model)
    assert all(torch.equal(t, reference.state_dict()[k]) for k, t in theirs.items())


def test_describe_and_build_an_unregistered_directory(checkpoint, tmp_path):
    directory = checkpoint("smollm2-135m")
    described = run("describe", directory)
    assert described.exit_code == 0, described.output
    assert "n_kv_heads: 3" in described.output and "type: swiglu" in described.output
    built = run("build", directory, "-o", tmp_path / "out")
    assert built.exit_code == 0, built.output
    model = zoo.load(tmp_path / "out")
    reference = zoo.load(directory)
    assert all(torch.equal(t, reference.state_dict()[k]) for k, t in model.state_dict().items())


# --------------------------------------------------------------------------- every registered format


@pytest.mark.parametrize("model_type", sorted(formats()))
def test_every_format_writes_what_transformers_runs(model_type):
    fmt = formats()[model_type]
    fits = [n for n in zoo.list_models() if fmt.spec_problem(zoo.load_spec(n)) is None]
    assert fits, f"no catalog model has the {model_type} layout"
    encoder_decoder = zoo.load_spec(fits[0]).is_encoder_decoder
    exact = {"norm.eps": 1e-5} if encoder_decoder else {}  # Marian's eps has no config field
    model = zoo.build(fits[0], seed=0, **tiny_overrides(fits[0], **exact)).eval()
    reference = to_hf_model(model)
    assert type(reference).__name__ == fmt.architecture
    ids = torch.randint(3, 97, (2, 9))
    with torch.inference_mode():
        if encoder_decoder:
            tgt = torch.randint(3, 97, (2, 5))
            ours, theirs = model(ids, tgt), reference(input_ids=ids, decoder_input_ids=tgt).logits
        else:
            ours, theirs = model(ids), reference(ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- bad input


def build_error(tmp_path, *args) -> str:
    out = tmp_path / "never"
    result = run("build", *args, "-o", out)
    assert result.exit_code != 0 and not out.exists(), result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output, result.output
    return result.output


def edit_config(directory, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture
def small(tmp_path):
    """A small random Llama directory to break."""
    directory = tmp_path / "llama"
    hf_model({**PUBLISHED["smollm2-135m"], **CUT, **ODD["smollm2-135m"]}).save_pretrained(directory)
    return directory


def test_unsupported_model_type_names_the_supported(small, tmp_path):
    edit_config(small, model_type="mamba")
    message = build_error(tmp_path, small)
    assert "model_type 'mamba' is not supported" in message
    assert all(t in message for t in ("gpt2", "llama", "qwen2", "gpt_neox"))


def test_config_contradicting_the_spec_names_the_field(checkpoint, tmp_path):
    message = build_error(tmp_path, "qwen2.5-0.5b", *cut_args("qwen2.5-0.5b"), "--set", "attention.n_kv_heads=7",
                          "--weights", checkpoint("qwen2.5-0.5b"))
    assert "num_key_value_heads is 2 but qwen2.5-0.5b has attention.n_kv_heads 7" in message


def test_missing_and_unexpected_tensors_are_named(small, tmp_path):
    path = small / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.1.adapter.weight"] = torch.zeros(2)
    save_file(tensors, path)
    message = build_error(tmp_path, small)
    assert "missing model.layers.1.mlp.up_proj.weight" in message
    assert "unexpected model.layers.1.adapter.weight" in message


def test_rope_scaling_is_refused_by_name(small, tmp_path):
    edit_config(small, rope_scaling={"rope_type": "linear", "factor": 2.0})
    message = build_error(tmp_path, small)
    assert "rope_scaling 'linear' is not implemented" in message
    edit_config(small, rope_scaling={"rope_type": "default"}, rope_parameters=None)  # plain rotary, spelled out
    assert run("describe", small).exit_code == 0


def test_a_wrong_layout_is_refused_before_reading(checkpoint, monkeypatch):
    from zoo.hf import checkpoint as reading

    directory = str(checkpoint("smollm2-135m"))
    opened = []
    monkeypatch.setattr(reading.CheckpointReader, "__enter__", lambda self: opened.append(self) or self)
    spec = zoo.load_spec("smollm2-135m", {"n_layers": 2, "vocab_size": 512, "bos_token_id": 0, "eos_token_id": 0,
                                          "mlp.type": "gelu"})
    with pytest.raises(WeightsError, match="a llama checkpoint needs 'swiglu'"):
        zoo.load_weights(spec, directory)
    assert not opened  # refused from config.json: the weights file was never opened
    wide = zoo.load_spec("smollm2-135m", {"n_layers": 2, "vocab_size": 512, "bos_token_id": 0, "eos_token_id": 0,
                                          "d_model": 96, "attention.n_heads": 3, "attention.n_kv_heads": 1})
    with pytest.raises(WeightsError):
        zoo.load_weights(wide, directory)  # the right layout, the wrong size: refused by config.json too
    assert not opened


def test_generate_uses_the_checkpoints_tokenizer_json(checkpoint):
    directory = checkpoint("smollm2-135m")
    result = run("generate", directory, "Once upon a time", "--max-new-tokens", 3)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Once upon a time") and "3 tokens in" in result.output


def test_export_a_directory_to_hf(tmp_path):
    """``zoo export DIR``: the weights come from DIR itself (ONNX export of every family is in test_onnx.py)."""
    directory = tmp_path / "pythia"
    hf_model({**PUBLISHED["pythia-160m"], **CUT, **ODD["pythia-160m"]}).save_pretrained(directory)
    result = run("export", directory, "--format", "hf", "-o", tmp_path / "hf")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "hf" / "manifest.json").read_text())
    assert manifest["architecture"] == "GPTNeoXForCausalLM" and manifest["verification"]["round_trip"] == "bit-identical"
