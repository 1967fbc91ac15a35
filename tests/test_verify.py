"""``zoo verify --against hf`` and the ``hf`` exporter: parity reports, exit codes, round trips."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

import zoo
from zoo.core.model_dir import state_dict_for_saving
from zoo.cli import cli
from zoo.generation.tokenizer import gpt2_tokenizer
from zoo.hf.verify import verify_against_hf
from zoo.hf.checkpoint import load_weights
from zoo.hf.formats import to_hf_model

# The registry's gpt2 cut to 2 layers of width 64, GPT-2's vocabulary (the prompts are real text).
SMALL = {"n_layers": 2, "d_model": 64, "attention.n_heads": 4, "mlp.d_ff": 128, "context_length": 128}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def set_args(overrides: dict) -> list[str]:
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]


def test_verify_random_weights_passes_with_a_report():
    result = run("verify", "gpt2", *set_args(SMALL), "--steps", 6)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("gpt2 vs transformers GPT2LMHeadModel; weights: random init (seed 0); float32")
    for check in ("prompt 1 (", "prompt 4 (", "padded batch (4x", "greedy 6 steps vs generate()",
                  "greedy 6 steps, cache vs none"):
        assert any(line.startswith(check) and " ok" in line for line in lines), check
    assert lines[-1] == "PASS"


def test_verify_a_hugging_face_directory_loaded_by_transformers_itself(tmp_path):
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=96, n_head=3, n_positions=128, initializer_range=0.1)).save_pretrained(tmp_path)
    overrides = {"n_layers": 2, "d_model": 96, "attention.n_heads": 3, "mlp.d_ff": 384, "context_length": 128}
    result = run("verify", "gpt2", *set_args(overrides), "--weights", tmp_path, "--steps", 5,
                 "--prompt", "Hello world", "--prompt", "A much longer prompt than the first one")
    assert result.exit_code == 0, result.output
    assert f"weights: {tmp_path}" in result.stdout and "padded batch (2x" in result.stdout


def test_verify_exits_1_when_out_of_tolerance():
    result = run("verify", "gpt2", *set_args(SMALL), "--steps", 2, "--atol", 0)
    assert result.exit_code == 1
    assert "FAIL" in result.stdout.splitlines()[-1]


def test_verify_reports_diverging_tokens_and_logits():
    model = zoo.build("gpt2", seed=0, **SMALL)
    reference = to_hf_model(zoo.build("gpt2", seed=0, **SMALL))
    with torch.no_grad():
        reference.transformer.h[1].mlp.c_fc.bias.add_(0.5)  # a real disagreement
    report = verify_against_hf(model, reference, gpt2_tokenizer(), prompts=("One two three", "four"), steps=4)
    assert not report.passed
    failed = [c for c in report.checks if not c.passed]
    assert any(c.name.startswith("prompt") and c.max_abs > 1e-4 for c in failed)


def test_verify_refuses_a_spec_that_is_not_gpt2_shaped():
    result = run("verify", "gpt2", *set_args(SMALL), "--set", "positional=rotary")
    assert result.exit_code == 1
    assert result.output.strip() == ("error: cannot verify against hf: gpt2 has positional.type 'rotary'; "
                                     "a gpt2 checkpoint needs 'learned'")


# --------------------------------------------------------------------------- the hf exporter


def test_round_trip_zoo_hf_zoo_is_bit_identical(tmp_path):
    result = run("export", "gpt2", *set_args(SMALL), "--format", "hf", "-o", tmp_path / "hf", "--seed", 4)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "hf" / "manifest.json").read_text())
    assert manifest["verification"]["round_trip"] == "bit-identical"
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(manifest["files"])

    original = zoo.build("gpt2", seed=4, **SMALL)
    hf_model = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 50257, (2, 10))
    with torch.inference_mode():
        torch.testing.assert_close(hf_model(ids).logits, original(ids), atol=1e-4, rtol=0)
    back = load_weights(original.spec, str(tmp_path / "hf"))
    ours, theirs = state_dict_for_saving(original), state_dict_for_saving(back)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert len(gpt2_tokenizer(tmp_path / "hf")("Hello").input_ids) == 1


def test_round_trip_hf_zoo_hf_is_bit_identical(tmp_path):
    torch.manual_seed(1)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_inner=128, n_positions=128)).save_pretrained(tmp_path / "a")
    zoo_args = ["gpt2", *set_args(SMALL), "--weights", tmp_path / "a"]
    assert run("export", *zoo_args, "--format", "hf", "-o", tmp_path / "b").exit_code == 0
    before, after = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_fp16_export_loads_in_transformers(tmp_path):
    from transformers import GPT2LMHeadModel

    assert run("export", "gpt2", *set_args(SMALL), "--format", "hf", "--dtype", "fp16", "-o", tmp_path / "hf").exit_code == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "float16"
    assert all(t.dtype == torch.float16 for t in load_file(tmp_path / "hf" / "model.safetensors").values())
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    ours = zoo.build("gpt2", seed=0, **SMALL).eval()  # what zoo export built (seed 0)
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        theirs = model.float()(ids).logits
        torch.testing.assert_close(theirs, ours(ids), rtol=0, atol=2e-2)  # fp16 weights: rounding only


@pytest.mark.parametrize("extra,message", [
    (["--set", "positional=rotary"], "error: no Hugging Face GPT2LMHeadModel can hold this model: gpt2 has positional.type 'rotary'"),
    (["--opset", "17"], "error: --opset is not an option of --format hf: --opset is an ONNX setting"),
])
def test_export_refusals_leave_nothing(tmp_path, extra, message):
    result = run("export", "gpt2", *set_args(SMALL), *extra, "--format", "hf", "-o", tmp_path / "hf")
    assert result.exit_code == 1 and result.output.startswith(message)
    assert list(tmp_path.iterdir()) == []
