"""The core commands through click's CliRunner: list, plugins, describe, build, errors."""

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from click.testing import CliRunner

from zoo.core.meta import assemble, count_parameters, parameter_table
from zoo.core.model_dir import load_model
from zoo.core.spec import load_spec
from zoo.cli import cli
from zoo.core.files import sha256_file


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_list_shows_every_model_with_parameters():
    result = run("list", "--parameters")
    assert result.exit_code == 0
    import zoo
    from zoo.core.meta import assemble

    small = zoo.count_parameters(assemble(zoo.load_spec("transformer-en-it-small")))  # the whole model, on meta
    for name, count in [("gpt2 ", "124,439,808"), ("gpt2-xl", "1,557,611,200"), ("transformer-en-it-small", f"{small:,}")]:
        line = next(line for line in result.output.splitlines() if line.startswith(name))
        assert count in line, line
    plain = run("list")
    assert plain.exit_code == 0 and "gpt2-xl" in plain.output and "124,439,808" not in plain.output


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
    assert "total " in result.output and total in result.output.splitlines()[-1]
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


# --------------------------------------------------------------------------- default output directory


def test_build_without_output_writes_under_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZOO_HOME", raising=False)
    result = run("build", "gpt2", "--set", "n_layers=1")
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith(f"-> {Path('models') / 'gpt2'}")
    assert (tmp_path / "models" / "gpt2" / "model.safetensors").is_file()
    again = run("build", "gpt2", "--set", "n_layers=1")
    assert again.exit_code == 1 and "models/gpt2 already exists" in again.output and "pass --force" in again.output
    assert run("build", "gpt2", "--set", "n_layers=1", "--force").exit_code == 0


def test_build_without_output_honours_zoo_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    result = run("build", "gpt2", "--set", "n_layers=1", "--set", "d_model=64", "--set", "attention.n_heads=4")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "home" / "models" / "gpt2" / "spec.yaml").is_file()
    assert str(tmp_path / "home" / "models" / "gpt2") in result.output
    assert not (tmp_path / "models").exists()


# --------------------------------------------------------------------------- limits before work

HUGE = [
    (["--set", "n_layers=1000000000"], "gpt2 with n_layers=1000000000 needs 25.2 PiB of float32 weights"),
    (["--set", f"context_length={2 ** 63}"], "models.gpt2.context_length: 9223372036854775808 does not fit in 64 bits"),
    (["--set", f"context_length={2 ** 62}"], "has a tensor too large for any machine"),
]


@pytest.mark.parametrize("args,message", HUGE)
def test_build_refuses_what_cannot_fit_in_one_line_and_fast(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    result = run("build", "gpt2", *args)
    assert time.perf_counter() - start < 30
    assert result.exit_code == 1
    assert message in result.output and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # nothing written, not even ./models


def test_memory_limit_names_the_need_and_what_is_available(tmp_path, monkeypatch):
    from zoo.core import limits

    monkeypatch.setattr(limits, "host_memory_available", lambda: 100 * 2 ** 20)
    result = run("build", "gpt2", "--set", "n_layers=2", "-o", tmp_path / "m")
    assert result.exit_code == 1
    assert ("gpt2 with n_layers=2 needs 204.3 MiB of float32 weights (5.36e+07 parameters); "
            "this machine has 100.0 MiB of memory available") in result.output
    half = run("build", "gpt2", "--set", "n_layers=2", "--dtype", "bfloat16", "-o", tmp_path / "m")
    assert half.exit_code == 1 and "needs 102.2 MiB of bfloat16 weights" in half.output
    assert not (tmp_path / "m").exists()


def test_describe_answers_a_huge_spec_from_shapes():
    start = time.perf_counter()
    result = run("describe", "gpt2", "--set", "n_layers=1000000000")
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - start < 30
    one, two = (count_parameters(assemble(load_spec("gpt2", {"n_layers": n}))) for n in (1, 2))
    total = result.output.splitlines()[-2]
    assert total.split()[:2] == ["total", f"{one + (10 ** 9 - 1) * (two - one):,}"]
    assert "extrapolated" in result.output.splitlines()[-1]


def test_describe_of_an_impossible_tensor_is_one_line():
    result = run("describe", "gpt2", "--set", f"context_length={2 ** 62}")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "has a tensor too large for any machine" in result.output


@pytest.mark.parametrize("name,overrides", [("gpt2", {"n_layers": 50}),
                                            ("transformer-en-it", {"n_layers": 40, "n_decoder_layers": 30}),
                                            ("gpt2", {"n_layers": 9, "tie_embeddings": False, "positional": "rotary",
                                                      "attention.n_kv_heads": 4, "mlp": "swiglu"})])
def test_extrapolated_table_equals_the_assembled_one(monkeypatch, name, overrides):
    from zoo.core import limits

    spec = load_spec(name, overrides)
    exact = parameter_table(spec)
    monkeypatch.setattr(limits, "EXACT_LAYERS", 2)
    rows, is_exact = limits.parameter_rows(spec)
    assert not is_exact
    assert rows == exact
    assert limits.model_size(spec).parameters == count_parameters(assemble(spec)) == sum(r.count for r in rows)


@pytest.mark.parametrize("command", [["build", "--weights", "hf"], ["export", "-o", "out"], ["generate", "--", "Hi"],
                                     ["verify", "--weights", "hf"]])
def test_every_command_that_allocates_refuses_first(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    name, *rest = command
    result = run(name, "gpt2", "--set", "n_layers=1000000000", *rest)
    assert result.exit_code == 1, result.output
    assert "gpt2 with n_layers=1000000000 needs 25.2 PiB of float32 weights" in result.output
    assert list(tmp_path.iterdir()) == []
