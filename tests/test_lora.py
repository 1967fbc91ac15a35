"""LoRA fine-tuning through PEFT: merged weights are base + scale·B·A, only the adapter trains,
PEFT loads the exported adapter on transformers' base with the zoo's logits, resume continues
the adapter, base + adapter directories load merged, and bad input is refused up front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from conftest import local_plugin
from synthetic_pairs import one_thread
from test_lm_training import make_checkpoint, records, write_text
from zoo.cli import cli
from zoo.core.model_dir import load_model

single_thread = pytest.fixture(autouse=True)(one_thread)

SHAPES = {
    "gpt2": ("gpt2", ["--set", "d_model=32", "--set", "n_layers=1", "--set", "attention.n_heads=2",
                      "--set", "context_length=64", "--set", "mlp.d_ff=128"]),
    "llama": ("smollm2-135m", ["--set", "d_model=32", "--set", "n_layers=1", "--set", "attention.n_heads=2",
                               "--set", "context_length=64", "--set", "mlp.d_ff=64", "--set", "vocab_size=300",
                               "--set", "attention.n_kv_heads=1", "--set", "tie_embeddings=false",
                               "--set", "positional.base=10000.0"]),
}
# a large learning rate, so that a few steps move the adapter well away from zero
STEPS = ["--seq-len", "32", "--eval-every", "1000", "--eval-tokens", "64", "--lr", "3e-2", "--warmup", "1",
         "--amp", "off", "--lora", "4"]


def invoke(args, expect: int = 0):
    result = CliRunner().invoke(cli, [*map(str, args)])
    assert result.exit_code == expect, result.output
    return result


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny GPT-2 checkpoint and a text, shared by the module's tests."""
    root = tmp_path_factory.mktemp("lora")
    return make_checkpoint(root / "checkpoint", "gpt2"), write_text(root / "input.txt")


def lora_run(source, run: Path, *extra, family: str = "gpt2", checkpoint: Path | None = None):
    model, shape = SHAPES[family]
    checkpoint = checkpoint or source[0]
    return invoke(["train", model, "--data", source[1], "--weights", checkpoint, "-o", run, *shape, *STEPS, *extra])


def test_merged_weights_are_base_plus_scaled_b_a_and_only_the_adapter_trains(tmp_path, source):
    import zoo

    run = tmp_path / "run"
    result = lora_run(source, run, "--max-steps", "6", "--lora-alpha", "16")
    assert "trained gpt2: 6 steps" in result.output
    checkpoint = zoo.load(source[0]).state_dict()
    base = load_file(run / "base" / "model.safetensors")
    assert all(torch.equal(base[name], checkpoint[name]) for name in base)  # the base is the checkpoint, untouched
    merged, adapter = load_file(run / "model.safetensors"), load_file(run / "adapter" / "adapter_model.safetensors")
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 16
    targets = sorted(config["target_modules"])
    assert targets == ["stack.h.0.attn.c_attn", "stack.h.0.attn.c_proj", "stack.h.0.mlp.c_fc", "stack.h.0.mlp.c_proj"]
    for module in targets:
        a = adapter[f"base_model.model.{module}.lora_A.weight"]
        b = adapter[f"base_model.model.{module}.lora_B.weight"]
        assert b.abs().max() > 1e-3  # trained away from its zero start
        assert torch.equal(merged[f"{module}.weight"], base[f"{module}.weight"] + (b @ a) * (16 / 4))
    adapted = {f"{m}.weight" for m in targets}
    assert all(torch.equal(merged[n], base[n]) for n in base if n not in adapted)  # biases, norms, embeddings
    start = records(run, "start")[0]
    assert start["trainable_parameters"] == sum(t.numel() for t in adapter.values())
    assert start["parameters"] == start["trainable_parameters"] + sum(t.numel() for t in base.values())
    snapshot = next((run / "checkpoints").iterdir())
    assert load_file(snapshot / "model.safetensors").keys() == adapter.keys()  # snapshots keep the adapter only
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["lora"]["merged"] and manifest["training"]["step"] == 6


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_peft_loads_the_exported_adapter_on_transformers_base_with_zoo_logits(tmp_path, source, family):
    import transformers
    from peft import PeftModel

    checkpoint = source[0] if family == "gpt2" else make_checkpoint(tmp_path / "checkpoint", "llama")
    run = tmp_path / "run"
    lora_run(source, run, "--max-steps", "6", family=family, checkpoint=checkpoint)
    out = tmp_path / "hf"
    invoke(["export", run, "--format", "hf", "--adapter", "-o", out])
    base = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    theirs = PeftModel.from_pretrained(base, out / "adapter").eval()
    ours = load_model(run).eval()
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = theirs(ids).logits
        torch.testing.assert_close(logits, ours(ids), rtol=1e-5, atol=1e-5)
        with theirs.disable_adapter():
            assert (theirs(ids).logits - logits).abs().max() > 1e-2  # the adapter matters: the check is not vacuous
    merged = tmp_path / "merged"
    invoke(["export", run, "--format", "hf", "-o", merged])  # the merged model, an ordinary transformers export
    hf = transformers.AutoModelForCausalLM.from_pretrained(merged).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, logits, rtol=1e-4, atol=1e-4)


def test_resume_continues_the_same_adapter(tmp_path, source):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    same = ("--lora-dropout", "0.1", "--schedule", "constant")  # the learning rate does not depend on the budget
    lora_run(source, straight, "--max-steps", "6", *same)
    lora_run(source, halves, "--max-steps", "3", *same)
    invoke(["train", "--resume", halves, "--max-steps", "6"])
    one, two = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (straight, halves))
    assert one.keys() == two.keys() and all(torch.equal(one[n], two[n]) for n in one)
    assert records(straight, "validation")[-1]["loss"] == records(halves, "validation")[-1]["loss"]


def test_no_merge_keeps_base_and_adapter_and_every_command_applies_it(tmp_path, source):
    merged_run, kept = tmp_path / "merged", tmp_path / "kept"
    lora_run(source, merged_run, "--max-steps", "4")
    lora_run(source, kept, "--max-steps", "4", "--no-merge")
    assert not (kept / "model.safetensors").exists() and (kept / "adapter" / "adapter_model.safetensors").is_file()
    assert not json.loads((kept / "manifest.json").read_text())["lora"]["merged"]
    ids = torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(load_model(kept)(ids), load_model(merged_run)(ids), rtol=1e-6, atol=1e-6)
    for run in (kept, merged_run):
        invoke(["evaluate", run])
    scored = [json.loads((run / "eval" / "validation.json").read_text())["loss"] for run in (kept, merged_run)]
    assert scored[0] == pytest.approx(scored[1], abs=1e-5)
    generated = [invoke(["generate", run, "The king", "--max-new-tokens", "8"]).output for run in (kept, merged_run)]
    assert generated[0].splitlines()[0] == generated[1].splitlines()[0]  # the text; the timing line differs


def test_a_bf16_base_is_stored_and_held_in_bf16_and_publishes_one_dtype(tmp_path, source, monkeypatch):
    from zoo.core import tensor_files
    from zoo.training.weights import LoRAWeights

    monkeypatch.setattr(tensor_files, "READ_CHUNK", 1024)  # every matrix read in slices, each cast as it arrives
    held = {}
    model_of = LoRAWeights.model
    monkeypatch.setattr(LoRAWeights, "model", lambda self, *a: held.setdefault("model", model_of(self, *a)))
    run = tmp_path / "run"
    lora_run(source, run, "--max-steps", "3", "--lora-base", "bfloat16", "--amp", "bf16")
    import zoo
    from zoo.core.model_dir import state_dict_for_saving

    checkpoint = state_dict_for_saving(zoo.load(source[0]))  # the Hugging Face checkpoint in zoo's names
    base = load_file(run / "base" / "model.safetensors")  # the checkpoint cast once, as the run holds it
    assert base.keys() == checkpoint.keys()
    assert all(torch.equal(base[name], checkpoint[name].to(torch.bfloat16)) for name in checkpoint)
    frozen = {name.replace(".base_layer", "").removeprefix("base_model.model."): p.dtype
              for name, p in held["model"].named_parameters() if ".lora_" not in name}
    assert frozen["stack.h.0.attn.c_attn.weight"] == frozen["stack.h.0.mlp.c_fc.weight"] == torch.bfloat16
    assert frozen["wte.weight"] == frozen["positional.weight"] == torch.bfloat16
    assert frozen["stack.h.0.ln_1.weight"] == frozen["stack.h.0.attn.c_attn.bias"] == torch.float32
    merged = load_file(run / "model.safetensors")
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}
    assert load_model(run)(torch.tensor([[1, 2, 3]])).isfinite().all()


def test_reading_tensor_by_tensor_in_slices_gives_the_file_cast(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from zoo.core import tensor_files

    tensors = {"matrix": torch.randn(37, 11), "vector": torch.randn(5), "scalar": torch.tensor(2.5),
               "ids": torch.arange(40).reshape(20, 2)}
    save_file(tensors, tmp_path / "t.safetensors")
    monkeypatch.setattr(tensor_files, "READ_CHUNK", 100)  # 2 rows of the matrix a slice
    read = tensor_files.read_tensors(tmp_path / "t.safetensors", torch.bfloat16)
    assert all(torch.equal(read[n], t.to(torch.bfloat16) if t.is_floating_point() else t) for n, t in tensors.items())
    assert read["ids"].dtype == torch.int64
    chosen = tensor_files.read_tensors(tmp_path / "t.safetensors", lambda name, shape: torch.float16 if len(shape) == 2 else None)
    assert chosen["matrix"].dtype == torch.float16 and torch.equal(chosen["vector"], tensors["vector"])


RAW_ATTENTION = '''
import torch
import torch.nn.functional as F
import zoo
from zoo.plugins.attention.multi_head import MultiHeadAttention


class Projection(torch.nn.Module):
    """A projection that is not an nn.Linear."""

    def __init__(self, rows, columns):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(rows, columns))

    def forward(self, x):
        return F.linear(x, self.weight)


class Raw(MultiHeadAttention):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.c_attn = Projection(*self.c_attn.weight.shape)
        self.c_proj = Projection(*self.c_proj.weight.shape)


@zoo.hookimpl
def zoo_register_components(registry):
    registry.add("attention", "raw", Raw)
'''


@pytest.mark.parametrize("args, message", [
    (["--lora", "4"], "give --weights"),
    (["--weights", "CHECKPOINT", "--lora", "0"], "the rank must be at least 1"),
    (["--weights", "CHECKPOINT", "--lora", "4", "--lora-targets", "q_proj"],
     "matches no linear layer of gpt2; give attention, mlp or one of its linear layers: stack.h.{i}.attn.c_attn"),
    (["--weights", "CHECKPOINT", "--lora", "4", "--lora-targets", "lm_head"], "shares its weight"),
    (["--weights", "CHECKPOINT", "--lora-alpha", "8"], "--lora-alpha applies to a LoRA run; add --lora RANK"),
    (["--weights", "CHECKPOINT", "--lora", "4", "--lora-base", "bfloat16", "--amp", "off"], "--lora-base bfloat16 needs"),
    (["--weights", "CHECKPOINT", "--lora", "4", "--average-last", "3"], "--average-last averages whole models"),
    (["--weights", "CHECKPOINT", "--lora", "4", "--set", "attention=raw"],
     "the attention plugin 'raw' (stack.h.0.attn) computes its projections without nn.Linear"),
])
def test_bad_lora_requests_are_one_line_and_write_nothing(tmp_path, source, fresh_registry, args, message):
    plugin = local_plugin(tmp_path, "raw_attention.py", RAW_ATTENTION)
    run = tmp_path / "run"
    args = [str(source[0]) if a == "CHECKPOINT" else a for a in args]
    result = invoke(["--plugin", plugin, "train", "gpt2", "--data", source[1], "-o", run, *SHAPES["gpt2"][1], *args], expect=2
                    if "applies to" in message else 1)
    assert message in result.output and "Traceback" not in result.output
    assert not run.exists()


def test_publishing_merged_weights_leaves_the_base_bit_for_bit(tmp_path):
    import zoo
    from zoo.core.adapters import add_lora, merged, plain_state

    model = zoo.build("gpt2", seed=1, n_layers=1, d_model=32, **{"attention.n_heads": 2, "context_length": 16})
    zoo.save(model, tmp_path / "base")
    base = load_file(tmp_path / "base" / "model.safetensors")
    peft_model = add_lora(model, 4, 8.0, 0.0, "attention,mlp")
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)  # a trained adapter: B away from zero
    with merged(peft_model, tmp_path / "base" / "model.safetensors"):
        state = plain_state(peft_model)
        assert not torch.equal(state["stack.h.0.attn.c_attn.weight"], base["stack.h.0.attn.c_attn.weight"])
    after = plain_state(peft_model)
    assert all(torch.equal(after[name], base[name]) for name in base)


# ------------------------------------------------------------------ the translator


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    """A tiny translation run (the checkpoint) and its pairs."""
    from synthetic_pairs import TINY_OVERRIDES, write_tsv
    from zoo.training.run import train

    root = tmp_path_factory.mktemp("translator")
    pairs = write_tsv(root / "pairs.tsv")
    train("transformer-en-it-small", str(pairs), root / "checkpoint", overrides=dict(TINY_OVERRIDES), progress=False,
          vocab_size=120, batch_tokens=256, lr=3e-3, warmup_steps=10, max_steps=20, eval_every=1000,
          eval_sentences=4, eval_pairs=20)
    return root / "checkpoint", pairs


def translator_run(translator, run: Path, *extra, expect: int = 0):
    from synthetic_pairs import TINY_MODEL

    return invoke(["train", "transformer-en-it-small", *TINY_MODEL, "--data", translator[1], "--weights", translator[0],
                   "-o", run, "--batch-tokens", "256", "--eval-every", "1000", "--eval-sentences", "4",
                   "--lr", "3e-2", "--warmup", "1", "--amp", "off", *extra], expect=expect)


def test_a_translator_fine_tunes_a_lora_adapter_on_self_and_cross_attention(tmp_path, translator):
    run = tmp_path / "run"
    result = translator_run(translator, run, "--lora", "4", "--max-steps", "6")
    assert "trained transformer-en-it-small: 6 steps" in result.output
    checkpoint = load_file(translator[0] / "model.safetensors")
    base, merged = load_file(run / "base" / "model.safetensors"), load_file(run / "model.safetensors")
    assert base.keys() == checkpoint.keys() and all(torch.equal(base[n], checkpoint[n]) for n in base)
    assert (run / "tokenizer.json").read_bytes() == (translator[0] / "tokenizer.json").read_bytes()  # its vocabulary
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    targets = sorted(json.loads((run / "adapter" / "adapter_config.json").read_text())["target_modules"])
    assert "decoder.h.0.crossattention.q_attn" in targets and "encoder.h.0.attn.c_attn" in targets
    assert "decoder.h.0.mlp.c_fc" in targets
    for module in targets:
        a = adapter[f"base_model.model.{module}.lora_A.weight"]
        b = adapter[f"base_model.model.{module}.lora_B.weight"]
        assert b.abs().max() > 1e-3
        assert torch.equal(merged[f"{module}.weight"], base[f"{module}.weight"] + (b @ a) * 2.0)  # alpha 2 x rank
    adapted = {f"{m}.weight" for m in targets}
    assert all(torch.equal(merged[n], base[n]) for n in base if n not in adapted)


def test_a_translators_unmerged_adapter_translates_as_its_merged_weights(tmp_path, translator):
    merged_run, kept = tmp_path / "merged", tmp_path / "kept"
    translator_run(translator, merged_run, "--lora", "4", "--max-steps", "6")
    translator_run(translator, kept, "--lora", "4", "--max-steps", "6", "--no-merge")
    assert not (kept / "model.safetensors").exists()
    sentences = ["Tom sees the red cat.", "She has the old book."]
    outputs = [invoke(["translate", run, *sentences]).output for run in (merged_run, kept)]
    assert outputs[0] == outputs[1] and len(outputs[0].splitlines()) == 2
    untuned = invoke(["translate", translator[0], *sentences]).output
    assert untuned != outputs[0]  # the adapter changed the translations: the comparison is not vacuous
    result = invoke(["export", kept, "--format", "hf", "--adapter", "-o", tmp_path / "hf"], expect=1)
    assert "--adapter writes PEFT adapters for decoders only" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("args, message", [
    (["--weights", "PAIRS", "--lora", "4"], "not a zoo model directory"),
    (["--weights", "NO_VOCABULARY", "--lora", "4"], "no tokenizer.json beside the weights"),
    (["--lora", "4", "--vocab-size", "100"], "keeps the vocabulary of its --weights"),
    (["--lora", "4", "--set", "mlp.d_ff=128"], "mlp"),
])
def test_bad_translator_fine_tuning_is_one_line_and_writes_nothing(tmp_path, translator, args, message):
    import zoo
    from synthetic_pairs import TINY_OVERRIDES

    no_vocabulary = tmp_path / "built"
    zoo.save(zoo.build("transformer-en-it-small", **TINY_OVERRIDES, vocab_size=120), no_vocabulary)
    args = [{"PAIRS": translator[1], "NO_VOCABULARY": no_vocabulary}.get(a, a) for a in args]
    if "--weights" in args:
        weights = args.index("--weights")
        translator = (args[weights + 1], translator[1])
        args = args[:weights] + args[weights + 2:]
    run = tmp_path / "run"
    result = translator_run(translator, run, "--max-steps", "2", *args, expect=1)
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not run.exists()
