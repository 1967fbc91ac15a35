"""The public face: ``import zoo`` is light, every name in ``zoo.__all__`` resolves, and
``zoo.load`` / ``zoo.verify`` do what the README shows."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import zoo
from conftest import tiny_overrides

@pytest.mark.parametrize("name", zoo.__all__)
def test_every_public_name_resolves(name):
    import importlib

    module, _, attribute = zoo._API[name].partition(":")
    assert getattr(zoo, name) is getattr(importlib.import_module(module), attribute)  # the object the table names
    assert name in dir(zoo)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        zoo.no_such_thing  # noqa: B018


def test_import_zoo_imports_no_torch():
    code = "import sys, zoo; heavy = [m for m in ('torch', 'transformers', 'onnx') if m in sys.modules]; print(heavy)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


TINY = dict(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=64,
            bos_token_id=96, eos_token_id=96, initializer_range=0.2)


@pytest.fixture(scope="module")
def hf_directory(tmp_path_factory):
    """A random GPT2LMHeadModel saved with save_pretrained, and the model itself."""
    directory = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**TINY)).eval()
    model.save_pretrained(directory)
    return directory, model


def logits(model, ids):
    with torch.inference_mode():
        out = model(ids)
    return getattr(out, "logits", out)


def test_load_a_hugging_face_directory(hf_directory):
    directory, hf_model = hf_directory
    model = zoo.load(directory)
    assert model.spec.name == str(directory)  # no catalog model has this shape
    assert (model.spec.d_model, model.spec.n_layers, model.spec.vocab_size) == (32, 2, 97)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(logits(model, ids), logits(hf_model, ids), atol=1e-4, rtol=0)


def test_load_a_zoo_model_directory(hf_directory, tmp_path):
    directory, hf_model = hf_directory
    model = zoo.load(directory)
    zoo.save(model, tmp_path / "zoo")
    again = zoo.load(tmp_path / "zoo")
    assert again.spec.name == model.spec.name
    ids = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(2))
    # the Hugging Face load keeps GPT-2's Conv1D weights as transposed views of the file; the saved
    # copy is contiguous, and on some CPUs (AMD Zen 4) the two layouts take different matmul kernels
    torch.testing.assert_close(logits(again, ids), logits(model, ids), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(again, ids), logits(hf_model, ids), atol=1e-4, rtol=0)


def test_load_a_catalog_shaped_checkpoint_gets_the_catalog_spec(tmp_path):
    from zoo.hf.checkpoint import read_config
    from zoo.plugins.checkpoints.gpt2 import GPT2

    GPT2Config().save_pretrained(tmp_path)  # GPT-2 small's config; no weights needed to name the spec
    assert GPT2.spec_from_config(read_config(tmp_path), str(tmp_path)).name == "gpt2"
    GPT2Config(n_layer=3, n_embd=64, n_head=4, activation_function="relu").save_pretrained(tmp_path)
    read = GPT2.spec_from_config(read_config(tmp_path), str(tmp_path))  # no catalog model: the template, sized
    assert (read.name, read.n_layers, read.d_model, read.mlp.type, read.mlp.options.d_ff) == \
        (str(tmp_path), 3, 64, "relu", 256)


def test_load_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(zoo.ZooError, match="no such directory, and not a Hugging Face hub id"):
        zoo.load(tmp_path / "missing" / "x y")
    (tmp_path / "config.json").write_text('{"model_type": "mamba"}', encoding="utf-8")
    with pytest.raises(zoo.ZooError, match="model_type 'mamba' is not supported; the zoo reads gpt2, gpt_neox"):
        zoo.load(tmp_path)
    with pytest.raises(zoo.ZooError, match="give the hub id itself"):
        zoo.load("hf")


def test_verify_returns_a_passing_report(tmp_path):
    torch.manual_seed(0)  # GPT-2's vocabulary: the prompts are real text
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=4, n_positions=64, initializer_range=0.1)).save_pretrained(tmp_path)
    model = zoo.load(tmp_path)
    report = zoo.verify(model, "hf", weights=str(tmp_path), prompts=("Hello world", "Once upon a time"), steps=4)
    assert report.passed, "\n".join(report.lines())
    assert report.lines()[0].startswith(f"{tmp_path} vs transformers GPT2LMHeadModel; weights: {tmp_path}; float32")
    assert report.lines()[-1] == "PASS"


def test_verify_refuses_a_model_gpt2_cannot_hold():
    spec = zoo.load_spec("gpt2", {"n_layers": 1, "d_model": 32, "attention.n_heads": 4, "mlp.d_ff": 64,
                                  "positional": "rotary"})
    with pytest.raises(zoo.ZooError, match="cannot verify against hf: .* positional.type 'rotary'"):
        zoo.verify(zoo.build(spec))


def test_generate_and_export_through_the_public_face(tmp_path):
    spec = zoo.load_spec("gpt2", {"n_layers": 1, "d_model": 32, "attention.n_heads": 4, "mlp.d_ff": 64,
                                  "vocab_size": 97, "context_length": 64, "bos_token_id": 96,
                                  "eos_token_id": 96})
    model = zoo.build(spec, seed=0)
    ids = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(3))
    tokens = zoo.generate(model, ids, max_new_tokens=4)
    assert tokens.shape == (1, 9) and torch.equal(tokens[:, :5], ids)
    manifest = zoo.export(model, tmp_path / "onnx", "onnx", kv_cache=True)
    assert (tmp_path / "onnx" / "manifest.json").is_file() and manifest["files"]
    from zoo.exporters.onnx.runtime import load as load_onnx

    runtime_tokens = zoo.generate(load_onnx(tmp_path / "onnx"), ids, max_new_tokens=4)
    assert torch.equal(runtime_tokens, tokens)


def test_load_refuses_a_model_directory_whose_spec_cannot_fit(tmp_path):
    """A hand-edited spec.yaml is checked against free memory before any weight is read."""
    model = zoo.build(zoo.load_spec("gpt2", {"n_layers": 1, "d_model": 32, "attention.n_heads": 2, "mlp.d_ff": 64,
                                             "vocab_size": 64, "context_length": 16, "bos_token_id": 0,
                                             "eos_token_id": 0}))
    zoo.save(model, tmp_path / "small")
    spec_file = tmp_path / "small" / "spec.yaml"
    spec_file.write_text(spec_file.read_text(encoding="utf-8").replace("n_layers: 1", "n_layers: 1000000000"),
                         encoding="utf-8")
    (tmp_path / "small" / "model.safetensors").write_bytes(b"not read")  # refused before reading it
    with pytest.raises(zoo.ZooError, match=r"needs .* of float32 weights .*; make the model smaller"):
        zoo.load(tmp_path / "small")


def test_export_options_are_the_formats_own_from_python_too(tmp_path):
    """zoo.export takes what the format declares: another format's option is refused in one
    line before anything is written, and a bad value by the format's own check."""
    from zoo.errors import ExportError

    model = zoo.build("gpt2", seed=0, **tiny_overrides("gpt2"))
    with pytest.raises(ExportError, match=r"^--variants is not an option of --format onnx: --format onnx writes one"):
        zoo.export(model, tmp_path / "a", "onnx", variants="q4")
    with pytest.raises(ExportError, match=r"^--quantize 'int3' is not supported by --format onnx; choose one of: "):
        zoo.export(model, tmp_path / "b", "onnx", quantize="int3")
    with pytest.raises(ExportError, match=r"^--block-size 48: ONNX Runtime's quantizer needs a power of two"):
        zoo.export(model, tmp_path / "c", "web", variants="q4", block_size=48)
    assert not list(tmp_path.iterdir())
