"""onnxruntime-genai runs zoo's ONNX exports as they are: the real client, nothing edited.

onnxruntime-genai replaces onnxruntime-gpu wherever it is installed, so it lives in its
own environment (``.venv-genai``, made by ``.ci/install``); each test exports with zoo
here, then runs ``tests/genai_client.py`` with that interpreter and compares genai's
greedy tokens (one prompt at a time, and all prompts in one right-padded batch) and
first logits with zoo's. ``ZOO_GENAI_PYTHON`` names the interpreter (``.ci/run`` sets
it, so CI never skips); without it the tests use ``.venv-genai`` when present, else skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import zoo
from conftest import REPO, tiny_overrides
from zoo.cli import cli
from zoo.core import registry
from zoo.exporters.onnx import runtime
from zoo import export

CLIENT = Path(__file__).with_name("genai_client.py")
NEW_TOKENS = 8


def genai_python() -> Path:
    """The interpreter with onnxruntime-genai, or a skip saying how to get one."""
    named = os.environ.get("ZOO_GENAI_PYTHON")
    path = Path(named) if named else REPO / ".venv-genai" / "bin" / "python"
    if not path.is_file():
        if named:  # CI asked for it: a missing interpreter is a failure, not a skip
            pytest.fail(f"ZOO_GENAI_PYTHON={named} does not exist; run .ci/install")
        pytest.skip("no onnxruntime-genai environment: run `python3 -m venv .venv-genai && "
                    ".venv-genai/bin/python -m pip install onnxruntime-genai numpy` or set ZOO_GENAI_PYTHON")
    return path


def run_genai(directory: Path, prompts: list, tokenizer: bool = True) -> dict:
    """What genai did with ``prompts`` (texts or token-id lists) on the export in ``directory``."""
    request = directory.parent / f"{directory.name}-request.json"
    request.write_text(json.dumps({"prompts": prompts, "new_tokens": NEW_TOKENS, "tokenizer": tokenizer}))
    done = subprocess.run([str(genai_python()), str(CLIENT), str(directory), str(request)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def until_eos(tokens: list[int], prompt: int, eos: int | None) -> list[int]:
    """``tokens`` up to the first ``eos`` generated after ``prompt`` tokens, without it:
    zoo keeps the ``eos`` it generates, genai's sequence ends before it."""
    new = tokens[prompt:]
    return tokens[:prompt] + (new[: new.index(eos)] if eos in new else new)


def zoo_greedy(model, ids: list[int]) -> list[int]:
    """zoo.generate's greedy continuation of one prompt."""
    out = zoo.generate(model, torch.tensor([ids]), max_new_tokens=NEW_TOKENS, eos_token_id=model.spec.eos_token_id)
    return until_eos(out[0].tolist(), len(ids), model.spec.eos_token_id)


def check_against_zoo(model, directory: Path, answer: dict) -> float:
    """genai's tokens equal zoo's for each prompt, alone and batched; return the max
    |difference| of the first logits of genai and of zoo's PyTorch model."""
    eos, width = model.spec.eos_token_id, max(map(len, answer["ids"]))
    worst = 0.0
    for i, ids in enumerate(answer["ids"]):
        want = zoo_greedy(model, ids)
        assert until_eos(answer["tokens"][i], len(ids), eos) == want, f"prompt {i} alone"
        if answer["batch"]:  # genai pads each row on the right to the longest prompt
            row = answer["batch"][i]
            assert until_eos(row[: len(ids)] + row[width:], len(ids), eos) == want, f"prompt {i} in the batch"
        with torch.inference_mode():
            logits = model(torch.tensor([ids]))[0, -1]  # (V,)
        worst = max(worst, float((torch.tensor(answer["logits"][i]) - logits).abs().max()))
    lm = runtime.load(directory)  # zoo's runtime reads the same directory
    with torch.inference_mode():
        ids = torch.tensor([answer["ids"][0]])
        assert zoo.generate(lm, ids, max_new_tokens=NEW_TOKENS).tolist() == zoo.generate(
            model, ids, max_new_tokens=NEW_TOKENS).tolist()
    return worst


# --------------------------------------------------------------------------- GPT-2 with its tokenizer


def test_cli_export_of_gpt2_runs_in_genai_with_its_tokenizer(tmp_path):
    """`zoo export gpt2 --format onnx --kv-cache` (GPT-2's vocabulary, tiny layers), then
    og.Model + og.Tokenizer + og.Generator: the same tokens as zoo.generate."""
    from zoo.generation.tokenizer import gpt2_tokenizer

    sizes = {"context_length": 64, "d_model": 32, "n_layers": 2, "attention.n_heads": 4, "mlp.d_ff": 64}
    out = tmp_path / "gpt2-onnx"
    sets = [arg for key, value in sizes.items() for arg in ("--set", f"{key}={value}")]
    result = CliRunner().invoke(cli, ["export", "gpt2", *sets, "--seed", "0", "--format", "onnx", "--kv-cache",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["genai"] == {"config": "genai_config.json", "tokenizer": ["tokenizer.json", "tokenizer_config.json"]}
    assert {"genai_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(manifest["files"])
    names = [i["name"] for i in manifest["graphs"]["decoder"]["inputs"] if not i.get("optional")]
    assert names == ["input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.0.value",
                     "past_key_values.1.key", "past_key_values.1.value"]  # genai feeds these, and not logits_start
    prompts = ["The zoo keeper said", "Hi", "A much longer prompt than the other two, by far"]
    answer = run_genai(out, prompts)
    assert answer["ids"] == [gpt2_tokenizer()(p)["input_ids"] for p in prompts]  # genai's tokenizer is GPT-2's
    model = zoo.build("gpt2", seed=0, **sizes)
    assert check_against_zoo(model.eval(), out, answer) < 1e-4


# --------------------------------------------------------------------------- every decoder, and plugins


def decoder_forms() -> dict[str, list[str]]:
    """Every registered decoder, grouped by its tiny form (gpt2 to gpt2-xl are one)."""
    groups: dict[str, list[str]] = {}
    for name in zoo.list_models():
        spec = zoo.load_spec(name, tiny_overrides(name))
        if not spec.is_encoder_decoder:
            form = {k: v for k, v in spec.to_dict().items() if k not in ("name", "description", "weights")}
            groups.setdefault(json.dumps(form, sort_keys=True), []).append(name)
    return {names[0]: names for names in groups.values()}


DECODERS = decoder_forms()
ID_PROMPTS = [[5, 17, 33, 2], [40], [9, 8, 7, 6, 5, 4, 3]]  # the tiny vocabulary has no tokenizer


def export_and_compare(model, out: Path) -> float:
    manifest = export(model, out, kv_cache=True)
    assert manifest["genai"]["config"] == "genai_config.json" and manifest["genai"]["tokenizer"] == []
    assert "generator.append_tokens" in manifest["genai"]["tokenizer_reason"]
    return check_against_zoo(model, out, run_genai(out, ID_PROMPTS, tokenizer=False))


@pytest.mark.parametrize("name", DECODERS, ids=["+".join(names) for names in DECODERS.values()])
def test_every_registered_decoder_runs_in_genai(tmp_path, name):
    model = zoo.build(name, seed=0, **tiny_overrides(name)).eval()
    assert export_and_compare(model, tmp_path / name) < 1e-4


SCALE_NORM = textwrap.dedent('''
    """ScaleNorm (Nguyen & Salazar, 2019): one learned scale over the L2-normalised vector."""

    import torch
    from torch import nn

    import zoo


    @zoo.hookimpl
    def zoo_register_components(registry):
        registry.add("norm", "scale_norm", ScaleNorm)


    class ScaleNorm(zoo.Norm):
        def __init__(self, spec, options):
            super().__init__()
            self.d_model = spec.d_model
            self.scale = nn.Parameter(torch.empty(()))

        def reset_parameters(self):
            nn.init.constant_(self.scale, float(self.d_model) ** 0.5)  # sqrt(D), as the paper starts

        def forward(self, x):  # (B, T, D)
            return self.scale * x / x.norm(dim=-1, keepdim=True).clamp(min=1e-5)
''')


def test_a_decoder_with_a_local_plugin_and_grouped_query_rotary_attention_runs_in_genai(fresh_registry, tmp_path):
    plugin = tmp_path / "scale_norm.py"
    plugin.write_text(SCALE_NORM)
    registry.use_local_plugins([str(plugin)])
    overrides = {"norm": "scale_norm", "positional": "rotary", "attention.n_kv_heads": 2, "mlp": "swiglu"}
    model = zoo.build("gpt2", seed=0, **tiny_overrides("gpt2", **overrides)).eval()
    out = tmp_path / "plugin"
    assert export_and_compare(model, out) < 1e-4
    config = json.loads((out / "genai_config.json").read_text())["model"]["decoder"]
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_size"]) == (4, 2, 8)


# --------------------------------------------------------------------------- what genai does not run


def test_an_uncached_export_says_why_genai_is_not_configured(tmp_path):
    model = zoo.build("gpt2", seed=0, **tiny_overrides("gpt2", n_layers=1))
    manifest = export(model, tmp_path / "plain", kv_cache=False, verify=False)
    assert manifest["genai"]["config"] is None and "--kv-cache" in manifest["genai"]["reason"]
    assert not (tmp_path / "plain" / "genai_config.json").exists()
