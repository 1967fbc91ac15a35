"""The core commands through click's CliRunner: list, plugins, describe, build, errors."""

import json

import pytest
import torch
from safetensors.torch import load_file
from click.testing import CliRunner

from zoo.core.model_dir import load_model
from zoo.cli.main import cli
from zoo.core.files import sha256_file


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_list_shows_every_model_with_parameters():
    result = run("list")
    assert result.exit_code == 0
    for name, count in [("gpt2 ", "124,439,808"), ("gpt2-xl", "1,557,611,200"), ("transformer-en-it-small", "")]:
        assert name in result.output and count in result.output


def test_plugins_lists_kinds_and_origins():
    result = run("plugins")
    assert result.exit_code == 0
    for kind, name in [("positional", "rotary"), ("attention", "multi_head"), ("block", "post_norm"),
                       ("norm", "rms_norm"), ("mlp", "swiglu")]:
        assert kind in result.output and name in result.output
    assert "built-in (zoo.plugins.attention)" in result.output


@pytest.mark.parametrize("name,total", [("gpt2", "124,439,808"), ("gpt2-medium", "354,823,168"),
                                        ("gpt2-large", "774,030,080"), ("gpt2-xl", "1,557,611,200")])
def test_describe_totals(name, total):
    result = run("describe", name)
    assert result.exit_code == 0
    assert f"total " in result.output and total in result.output.splitlines()[-1]
    assert "d_model:" in result.output and "tied to token embedding" in result.output


def test_build_writes_weights_spec_and_manifest(tmp_path):
    out = tmp_path / "tiny"
    result = run("build", "gpt2", "--set", "n_layers=2", "--set", "d_model=64", "--set", "attention.n_heads=4",
                 "--set", "positional=rotary", "--set", "attention.n_kv_heads=2", "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.safetensors", "spec.yaml"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["model.safetensors"]["sha256"] == sha256_file(out / "model.safetensors")
    model = load_model(out)
    assert manifest["parameters"] == sum(p.numel() for p in model.parameters())
    assert model.spec.positional.type == "rotary" and model.spec.n_kv_heads == 2
    # building from the written spec gives the same weights for the same seed
    again = tmp_path / "again"
    assert run("build", out / "spec.yaml", "-o", again).exit_code == 0
    # (compare tensors, not file hashes: safetensors orders its metadata map arbitrarily)
    first, second = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    with torch.no_grad():
        ids = torch.randint(0, 50257, (1, 5))
        torch.testing.assert_close(load_model(again)(ids), model(ids))


def test_build_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "m"
    assert run("build", "gpt2", "--set", "n_layers=1", "-o", out).exit_code == 0
    result = run("build", "gpt2", "--set", "n_layers=1", "-o", out)
    assert result.exit_code == 1 and "pass --force" in result.output
    assert run("build", "gpt2", "--set", "n_layers=1", "--seed", "3", "-o", out, "--force").exit_code == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def bad_file(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("make_args,message", [
    (lambda t: ["gpt7"], "error: unknown model 'gpt7'; choose one of: gpt2"),
    (lambda t: [bad_file(t, "extends: gpt2\nn_layers: [1\n")], "bad.yaml:3:1: invalid YAML"),
    (lambda t: [bad_file(t, "extends: gpt2\nmlp: {d_hidden: 3}\n")], "mlp.d_hidden: unknown field; valid fields are bias, d_ff"),
    (lambda t: [bad_file(t, "extends: gpt2\nd_model: 100\n")], "attention.n_heads: d_model 100 is not divisible by 12 heads"),
    (lambda t: [bad_file(t, "extends: gpt2\nattention: {n_kv_heads: 7}\n")], "attention.n_kv_heads: 7 does not divide n_heads 12"),
    (lambda t: [bad_file(t, "extends: gpt2\nattention: {type: sparse}\n")], "unknown attention 'sparse'; choose one of: cross, multi_head"),
    (lambda t: [bad_file(t, f"extends: {t / 'bad.yaml'}\n")], "cycle"),
    (lambda t: ["gpt2", "--set", "n_layers=-1"], "models.gpt2.n_layers: -1 must be positive"),
    (lambda t: ["gpt2", "--set", "nlayers"], "expected PATH=VALUE"),
])
def test_errors_are_one_line_and_leave_nothing(tmp_path, make_args, message):
    out = tmp_path / "out"
    result = run("build", *make_args(tmp_path), "-o", out)
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] in ([], ["bad.yaml"])


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    import zoo.core.model_dir

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo.core.model_dir, "save_file", explode)
    result = run("build", "gpt2", "--set", "n_layers=1", "-o", tmp_path / "out")
    assert result.exit_code == 130
    assert list(tmp_path.iterdir()) == []
