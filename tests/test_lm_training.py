"""Decoder training: loss falls, evaluation against an independent reference, resume, torchrun,
fine-tuning a checkpoint and exporting it to transformers, plugins, comparing runs, bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import load_file

from conftest import Killed, local_plugin
from synthetic_pairs import one_thread
import zoo
from zoo.cli import cli
from zoo.errors import ZooError
from zoo.core.model_dir import load_model
from zoo.lm.evaluate import score_tokens, windows

single_thread = pytest.fixture(autouse=True)(one_thread)

TINY = ("--set", "d_model=32", "--set", "n_layers=1", "--set", "attention.n_heads=2", "--set", "mlp.d_ff=64",
        "--set", "context_length=32")
FAST = ("--seq-len", "16", "--batch-size", "4", "--eval-every", "1000", "--checkpoint-every", "1000",
        "--eval-tokens", "256", "--warmup", "5")


def write_text(path: Path, lines: int = 600, seed: int = 0) -> Path:
    """A text with structure to learn: short lines from a small vocabulary of words."""
    rng = np.random.default_rng(seed)
    words = ["the", "king", "queen", "shall", "speak", "and", "my", "lord", "to", "thee", "of", "love", "night"]
    text = "\n".join(" ".join(rng.choice(words, size=rng.integers(3, 8))).capitalize() + "." for _ in range(lines))
    path.write_text(text + "\n", encoding="utf-8")
    return path


def records(run_dir: Path, event: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == event]


def train(args, expect: int = 0):
    result = CliRunner().invoke(cli, ["train", *map(str, args)])
    assert result.exit_code == expect, result.output
    return result


def test_char_model_learns_the_text_and_leaves_a_complete_run(tmp_path):
    data = write_text(tmp_path / "input.txt")
    run = tmp_path / "run"
    result = train(["baby-gpt-cpu", "--data", data, "-o", run, *TINY, *FAST, "--max-steps", "60", "--lr", "3e-3"])
    assert "trained baby-gpt-cpu: 60 steps" in result.output and "bits per character" in result.output
    losses = [r["loss"] for r in records(run, "train")]
    model = load_model(run)
    assert losses[-1] < 0.8 * losses[0] < 0.8 * math.log(model.spec.vocab_size)  # far below guessing
    text = data.read_text(encoding="utf-8")
    train_text = text[: int(len(text) * 0.9)]
    assert model.spec.vocab_size == len(set(train_text)) + 1 and model.spec.tokenizer == "char"
    config = json.loads((run / "train.json").read_text(encoding="utf-8"))
    assert config["task"] == "language-modelling" and config["seq_len"] == 16
    start = records(run, "start")[0]
    assert start["train_characters"] == len(train_text) == start["train_tokens"]
    final = records(run, "validation")[-1]
    assert final["whole_split"] and final["scored_tokens"] == len(text) - len(train_text)
    assert final["bits_per_character"] == pytest.approx(final["loss"] / math.log(2), rel=1e-4)
    assert (run / "tokenizer.json").is_file() and (run / "curves.png").stat().st_size > 1000
    generated = CliRunner().invoke(cli, ["generate", str(run), "The king", "--max-new-tokens", "20"])
    assert generated.exit_code == 0, generated.output
    assert generated.output.startswith("The king") and len(generated.output.splitlines()[0]) > len("The king")


def test_evaluation_equals_cross_entropy_computed_independently(tmp_path):
    data = write_text(tmp_path / "input.txt", lines=60)
    run = tmp_path / "run"
    train(["baby-gpt-cpu", "--data", data, "-o", run, *TINY, "--set", "context_length=256", *FAST,
           "--seq-len", "256", "--max-steps", "3"])
    text = data.read_text(encoding="utf-8")
    val_text = text[int(len(text) * 0.9):]
    assert len(val_text) < 256  # one window: the model reads the whole split at once
    result = CliRunner().invoke(cli, ["evaluate", str(run)])
    assert result.exit_code == 0, result.output
    scored = json.loads((run / "eval" / "validation.json").read_text(encoding="utf-8"))
    from tokenizers import Tokenizer

    ids = [0] + Tokenizer.from_file(str(run / "tokenizer.json")).encode(val_text).ids  # end-of-text, then the text
    model = load_model(run).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]))[0]
    nll = F.cross_entropy(logits, torch.tensor(ids[1:]))
    assert scored["perplexity"] == pytest.approx(math.exp(nll.item()), rel=1e-4)
    assert scored["bits_per_character"] == pytest.approx(nll.item() * len(val_text) / len(val_text) / math.log(2), rel=1e-4)
    assert f"perplexity {scored['perplexity']:.2f}" in result.output
    api = zoo.evaluate(run, progress=False)  # the same from Python
    assert api["perplexity"] == scored["perplexity"] and api["path"] == str(run / "eval" / "validation.json")
    with pytest.raises(ZooError, match="--beam is for translation runs"):
        zoo.evaluate(run, beam=4)


def test_train_profile_works_for_a_decoder(tmp_path):
    data = write_text(tmp_path / "input.txt", lines=60)
    result = CliRunner().invoke(cli, ["train", "baby-gpt-cpu", "--data", str(data), *TINY, *FAST, "--profile",
                                      "--profile-steps", "2"])
    assert result.exit_code == 0, result.output
    assert "(language-modelling)" in result.output and "tokens/s, MFU" in result.output and "aten::" in result.output


def test_windows_predict_every_token_once_and_a_limit_spreads_them():
    for n, length in ((100, 16), (97, 16), (17, 16), (2, 16)):
        predicted = [t for start, size in windows(n, length) for t in range(start + 1, start + size + 1)]
        assert predicted == list(range(1, n)), (n, length)
    spread = windows(1000, 10, limit=100)
    assert len(spread) == 10 and spread[0][0] == 0 and spread[-1][0] >= 980


def test_score_tokens_matches_a_direct_computation_over_several_windows():
    torch.manual_seed(0)
    from zoo.core.builder import build
    from zoo.core.spec import load_spec

    model = build(load_spec("baby-gpt-cpu", {"d_model": 16, "n_layers": 1, "attention.n_heads": 2, "mlp.d_ff": 32,
                                             "vocab_size": 11, "context_length": 8})).eval()
    ids = np.random.default_rng(0).integers(0, 11, size=30)
    score = score_tokens(model, ids, characters=29, seq_len=8, batch_size=2)
    total = 0.0
    with torch.no_grad():
        for start, size in windows(30, 8):
            chunk = torch.tensor(ids[start : start + size + 1])
            total += F.cross_entropy(model(chunk[None, :-1])[0], chunk[1:], reduction="sum").item()
    assert score.scored_tokens == 29 and score.loss == pytest.approx(total / 29, rel=1e-5)


def test_resume_reaches_the_weights_of_an_uninterrupted_run(tmp_path):
    from zoo.training.config import TrainConfig
    from zoo.training.run import settings_for, train_run

    data = write_text(tmp_path / "input.txt")
    overrides = {"d_model": 32, "n_layers": 1, "attention.n_heads": 2, "mlp.d_ff": 64, "context_length": 32,
                 "dropout": 0.1}
    config = settings_for("baby-gpt-cpu", str(data), overrides, dict(seq_len=16, batch_size=4, eval_every=1000,
                          eval_tokens=128, warmup_steps=5, max_steps=12, checkpoint_every=7))
    train_run(config, tmp_path / "straight", progress=False)

    def kill_at_step_9(step):
        if step == 9:
            raise Killed

    with pytest.raises(Killed):
        train_run(config, tmp_path / "killed", progress=False, on_step=kill_at_step_9)
    summary = train_run(TrainConfig.load(tmp_path / "killed"), tmp_path / "killed", resume=True, progress=False)
    assert summary["steps"] == 12
    straight = load_file(tmp_path / "straight/model.safetensors")
    resumed = load_file(tmp_path / "killed/model.safetensors")
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    data = write_text(tmp_path / "input.txt")
    common = ["baby-gpt-cpu", "--data", str(data), *TINY, "--seq-len", "16", "--eval-every", "1000",
              "--eval-tokens", "64", "--warmup", "2", "--max-steps", "6", "--amp", "off", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "zoo.cli", "train", *common, "--batch-size", "2", "-o", str(tmp_path / "two")]
    done = subprocess.run(two, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    train([*common, "--batch-size", "4", "-o", tmp_path / "one"])
    assert records(tmp_path / "two", "start")[0]["world"] == 2
    one_loss = [r["loss"] for r in records(tmp_path / "one", "train")]
    two_loss = [r["loss"] for r in records(tmp_path / "two", "train")]
    assert two_loss == pytest.approx(one_loss, rel=1e-4)
    one, two = load_file(tmp_path / "one/model.safetensors"), load_file(tmp_path / "two/model.safetensors")
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5)


def make_checkpoint(directory: Path, family: str) -> Path:
    """A tiny Hugging Face checkpoint with its tokenizer, as save_pretrained writes one."""
    import transformers

    from zoo.lm.tokenizers import END_OF_TEXT, train_tokenizer

    if family == "gpt2":
        config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64)
        transformers.GPT2LMHeadModel(config).save_pretrained(directory)
        return directory
    tokenizer = train_tokenizer("bpe", [write_text(directory.parent / "corpus.txt").read_text()], 300)
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                      rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=0,
                                      tie_word_embeddings=False)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save(str(directory / "tokenizer.json"))
    assert tokenizer.token_to_id(END_OF_TEXT) == 0
    return directory


@pytest.mark.parametrize("family, model, hf_class", [("gpt2", "gpt2", "GPT2LMHeadModel"),
                                                      ("llama", "smollm2-135m", "LlamaForCausalLM")])
def test_fine_tuned_checkpoint_exports_to_transformers_with_zoo_logits(tmp_path, family, model, hf_class):
    import transformers

    checkpoint = make_checkpoint(tmp_path / "checkpoint", family)
    data = write_text(tmp_path / "input.txt")
    run = tmp_path / "run"
    shape = ["--set", "d_model=32", "--set", "n_layers=1", "--set", "attention.n_heads=2", "--set", "context_length=64"]
    if family == "gpt2":
        shape += ["--set", "mlp.d_ff=128"]
    else:
        shape += ["--set", "mlp.d_ff=64", "--set", "vocab_size=300", "--set", "attention.n_kv_heads=1",
                  "--set", "tie_embeddings=false", "--set", "positional.base=10000.0"]
    result = train([model, "--data", data, "--weights", checkpoint, "-o", run, *shape, "--seq-len", "32",
                    "--max-steps", "4", "--eval-every", "1000", "--eval-tokens", "64"])
    config = json.loads((run / "train.json").read_text(encoding="utf-8"))
    assert config["lr"] == 1e-4 and config["batch_size"] == 4  # the fine-tuning defaults
    before = transformers.AutoModelForCausalLM.from_pretrained(checkpoint)
    tuned = load_model(run).eval()
    assert any(not torch.equal(p, q) for p, q in zip(before.state_dict().values(), load_file(run / "model.safetensors").values()))
    exported = tmp_path / "hf"
    done = CliRunner().invoke(cli, ["export", str(run), "--format", "hf", "-o", str(exported)])
    assert done.exit_code == 0, done.output
    hf = getattr(transformers, hf_class).from_pretrained(exported).eval()
    from tokenizers import Tokenizer

    text = "The king shall speak to thee."
    ours = Tokenizer.from_file(str(run / "tokenizer.json")).encode(text).ids
    assert transformers.AutoTokenizer.from_pretrained(exported)(text)["input_ids"] == ours  # the tokenizer travels
    ids = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, tuned(ids), rtol=1e-4, atol=1e-4)
    assert "trained" in result.output


def test_a_local_plugin_trains_like_a_built_in(tmp_path, fresh_registry):
    plugin = local_plugin(tmp_path, "scaled_attention.py", '''
import zoo
from zoo.plugins.attention.multi_head import MultiHeadAttention


class Scaled(MultiHeadAttention):
    """Multi-head attention under another name: a stand-in for a user's own."""


@zoo.hookimpl
def zoo_register_components(registry):
    registry.add("attention", "scaled", Scaled)
''')
    data = write_text(tmp_path / "input.txt")
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["--plugin", str(plugin), "train", "baby-gpt-cpu", "--data", str(data), "-o",
                                      str(run), *TINY, *FAST, "--set", "attention=scaled", "--max-steps", "40"])
    assert result.exit_code == 0, result.output
    assert load_model(run).spec.attention.type == "scaled"
    losses = [r["loss"] for r in records(run, "train")]
    assert losses[-1] < losses[0]
    other = tmp_path / "builtin"
    train(["baby-gpt-cpu", "--data", data, "-o", other, *TINY, *FAST, "--max-steps", "20"])
    compared = CliRunner().invoke(cli, ["--plugin", str(plugin), "compare", str(run), str(other),
                                        "-o", str(tmp_path / "compare.png")])
    assert compared.exit_code == 0, compared.output
    assert "scaled" in compared.output and (tmp_path / "compare.png").stat().st_size > 1000
    elsewhere = tmp_path / "elsewhere"
    train(["baby-gpt-cpu", "--data", write_text(tmp_path / "other.txt", seed=1), "-o", elsewhere, *TINY, *FAST,
           "--max-steps", "2"])
    refused = CliRunner().invoke(cli, ["compare", str(other), str(elsewhere)])
    assert refused.exit_code == 1 and "compare runs on the same data" in refused.output


@pytest.mark.parametrize("case, message", [
    ("empty", "empty"),
    ("binary", "not UTF-8"),
    ("short", "shorter than one sequence"),
    ("seq-len", "above baby-gpt-cpu's context length (32)"),
    ("char-with-weights", "the checkpoint's (--weights"),
    ("bpe-without-size", "--tokenizer bpe needs --vocab-size"),
    ("translator-option", "--batch-tokens does not apply to language-modelling"),
])
def test_bad_input_gets_one_line_and_leaves_nothing_behind(tmp_path, case, message):
    data = write_text(tmp_path / "input.txt")
    extra: list = []
    if case == "empty":
        data.write_text("  \n", encoding="utf-8")
    elif case == "binary":
        data.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    elif case == "short":
        data.write_text("To be or not.\n", encoding="utf-8")
    elif case == "seq-len":
        extra = ["--seq-len", "64"]
    elif case == "char-with-weights":
        extra = ["--weights", str(tmp_path), "--tokenizer", "char"]
    elif case == "bpe-without-size":
        extra = ["--tokenizer", "bpe"]
    else:
        extra = ["--batch-tokens", "512"]
    args = ["baby-gpt-cpu", "--data", data, "-o", tmp_path / "run", *TINY, "--max-steps", "2", *extra]
    if case != "seq-len":
        args += ["--seq-len", "16"]
    result = train(args, expect=1)
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "run").exists()


def test_generate_refuses_a_run_killed_before_its_first_snapshot(tmp_path):
    from zoo.training.run import settings_for, train_run

    data = write_text(tmp_path / "input.txt")
    config = settings_for("baby-gpt-cpu", str(data), {"d_model": 32, "n_layers": 1, "attention.n_heads": 2,
                                                      "mlp.d_ff": 64, "context_length": 32},
                          dict(seq_len=16, batch_size=4, max_steps=10))

    def kill(step):
        raise Killed

    with pytest.raises(Killed):
        train_run(config, tmp_path / "run", progress=False, on_step=kill)
    result = CliRunner().invoke(cli, ["generate", str(tmp_path / "run"), "The king"])
    assert result.exit_code == 1 and "has no trained weights yet (step 0" in result.output
    assert "Traceback" not in result.output


def test_a_fine_tuned_run_exported_to_onnx_runs_in_onnxruntime_genai(tmp_path):
    from test_genai import ID_PROMPTS, check_against_zoo, run_genai

    checkpoint = make_checkpoint(tmp_path / "checkpoint", "gpt2")
    run = tmp_path / "run"
    train(["gpt2", "--data", write_text(tmp_path / "input.txt"), "--weights", checkpoint, "-o", run,
           "--set", "d_model=32", "--set", "n_layers=1", "--set", "attention.n_heads=2", "--set", "mlp.d_ff=128",
           "--set", "context_length=64", "--seq-len", "32", "--max-steps", "4", "--eval-every", "1000",
           "--eval-tokens", "64"])
    out = tmp_path / "onnx"
    done = CliRunner().invoke(cli, ["export", str(run), "--format", "onnx", "--kv-cache", "-o", str(out)])
    assert done.exit_code == 0, done.output
    worst = check_against_zoo(load_model(run).eval(), out, run_genai(out, ID_PROMPTS, tokenizer=False))
    assert worst < 1e-3
