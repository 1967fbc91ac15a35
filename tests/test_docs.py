"""docs/plugins.md runs: every ```python example is loaded as a local plugin file and used.

Components are built into tiny models (decoder and encoder-decoder) that run forward,
backward and cached decoding; exporters export a tiny model; pictures are drawn through
``zoo show positional``. Every hook in ``zoo.core.hookspecs`` must be documented and
implemented by some example.
"""

from __future__ import annotations

import inspect
import json
import re
import tomllib

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import zoo
from conftest import REPO, local_plugin, tiny_overrides
from zoo.cli import cli
from zoo.core import hookspecs, registry

DOC = (REPO / "docs" / "plugins.md").read_text()
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC, re.S)
HOOKS = [name for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("zoo_")]


def file_name(source: str) -> str:
    first = source.splitlines()[0]
    assert re.fullmatch(r"# \w+\.py", first), f"an example starts with its file name, not {first!r}"
    return first[2:]


def load_example(source: str, tmp_path):
    """``source`` as a local plugin file: (path, its registry entries, its module)."""
    path = local_plugin(tmp_path, file_name(source), source)
    entries = [e for e in zoo.get_registry().entries() if e.origin == f"local file {path}"]
    return path, entries, registry.get_plugin_manager().get_plugin(f"local:{path}")


@pytest.fixture(params=EXAMPLES, ids=[file_name(s) for s in EXAMPLES])
def example(request, fresh_registry, tmp_path):
    return load_example(request.param, tmp_path)


def check_decoder(model: torch.nn.Module) -> None:
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(0))
    model.train()
    logits = model(ids)  # (2, 10, 97)
    assert torch.isfinite(logits).all() and logits.abs().amax() > 1e-4
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, 4)
        steps = [model(ids[:, :6], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(6, 10)]
        torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)


def check_component(kind: str, name: str, component: type) -> None:
    model = zoo.build("gpt2", seed=0, **tiny_overrides("gpt2", **{kind: name}))
    assert any(type(m) is component for m in model.modules())
    check_decoder(model)
    translator = zoo.build("transformer-en-it", seed=0, **tiny_overrides("transformer-en-it", **{kind: name}))
    src, tgt = torch.randint(3, 97, (2, 7)), torch.randint(3, 97, (2, 5))
    logits = translator(src, tgt)  # (2, 5, 97)
    assert logits.shape == (2, 5, 97) and torch.isfinite(logits).all()


def test_every_hook_is_documented_and_has_an_example():
    assert HOOKS == ["zoo_positional_picture", "zoo_register_checkpoint_formats", "zoo_register_components",
                     "zoo_register_exporters"]
    for hook in HOOKS:
        assert re.search(rf"^- `{hook}\(", DOC, re.M), f"docs/plugins.md has no line on {hook}"
        assert any(f"def {hook}(" in source for source in EXAMPLES), f"no example implements {hook}"


def test_every_kind_has_an_example():
    kinds = {m for s in EXAMPLES for m in re.findall(r'registry\.add\("(\w+)"', s)}
    assert kinds == set(registry.KINDS)


def test_the_entry_point_example_is_valid_toml():
    toml = re.search(r"```toml\n(.*?)```", DOC, re.S).group(1)
    project = tomllib.loads(re.sub(r"(?m)^  ", "", toml))["project"]
    assert project["entry-points"]["zoo"] == {"scalenorm": "zoo_scalenorm"}


def test_example_runs(example, tmp_path):
    path, entries, module = example
    assert entries, f"{path.name} registers nothing"
    for entry in entries:
        if entry.kind == "exporter":
            out = tmp_path / "exported"
            args = ["--plugin", str(path), "export", "gpt2", "--set", "n_layers=1", "--set", "d_model=32",
                    "--set", "attention.n_heads=4", "--format", entry.name]
            result = CliRunner().invoke(cli, [*args, "-o", str(out)])
            assert result.exit_code == 0, result.output
            assert [p.name for p in out.iterdir()] == ["shapes.json"]
            shapes = json.loads((out / "shapes.json").read_text())["shapes"]
            assert shapes["wte.weight"] == [50257, 32] and shapes["stack.h.0.attn.c_attn.weight"] == [96, 32]
            assert (out / "shapes.json").read_text().startswith('{\n "model"')  # the default indent, 1
            indented = tmp_path / "indented"
            result = CliRunner().invoke(cli, [*args, "--indent", "4", "-o", str(indented)])
            assert result.exit_code == 0 and (indented / "shapes.json").read_text().startswith('{\n    "model"')
            for extra, message in ((["--opset", "17"], "--opset is not an option of --format shapes: --opset is an "
                                                       "ONNX setting; the shapes format has none, leave it out"),
                                   (["--indent", "9"], "--indent 9: choose 0 to 8 spaces")):
                result = CliRunner().invoke(cli, [*args, *extra, "-o", str(tmp_path / "refused")])
                assert result.exit_code == 1 and result.output == f"error: {message}\n", result.output
            assert not (tmp_path / "refused").exists()
            assert "--indent INTEGER" in CliRunner().invoke(cli, ["--plugin", str(path), "export", "--help"]).output
        elif entry.kind == "runtime":
            model_dir = tmp_path / "model"
            zoo.save(zoo.build("gpt2", seed=0, **tiny_overrides("gpt2", vocab_size=50257)), model_dir)
            result = CliRunner().invoke(cli, ["--plugin", str(path), "generate", str(model_dir), "--runtime",
                                              entry.name, "--max-new-tokens", "3", "Hello"])
            assert result.exit_code == 0, result.output
            opened = entry.component(model_dir)
            assert opened.token_table.weight.dtype == torch.bfloat16
        elif entry.kind == "checkpoint_format":
            check_checkpoint_format(entry.component, tmp_path)
        else:
            check_component(entry.kind, entry.name, entry.component)
    if hasattr(module, "zoo_positional_picture"):
        scheme = next(e.name for e in entries if e.kind == "positional")
        out = tmp_path / "picture.png"
        result = CliRunner().invoke(cli, ["--plugin", str(path), "show", "positional", scheme, "--length", "20",
                                          "--dpi", "20", "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert Image.open(out).size == (8 * 20, 3 * 20)  # the example's own size, not the built-in picture's


def check_checkpoint_format(fmt, tmp_path) -> None:
    """A random transformers model of the format's family, saved and read by ``zoo.load``."""
    name = next(n for n in zoo.list_models() if fmt.spec_problem(zoo.load_spec(n)) is None)
    spec = zoo.load_spec(name, tiny_overrides(name))
    torch.manual_seed(0)
    reference = fmt.hf_class()(fmt.hf_config(spec)).eval()
    reference.save_pretrained(tmp_path / "hf")
    assert reference.config.model_type == fmt.model_type
    model = zoo.load(tmp_path / "hf")
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(ids).logits, atol=1e-4, rtol=0)


def example_named(name: str) -> str:
    return next(source for source in EXAMPLES if file_name(source) == name)


@pytest.mark.parametrize("name", ["scale_norm.py", "geglu.py", "learned_slopes.py"])
def test_init_contract_examples(name, fresh_registry, tmp_path):
    """Constructor values (the norm's gain, the slopes) and reset_parameters() (GeGLU's
    zero output projection) survive a build."""
    _, entries, _ = load_example(example_named(name), tmp_path)
    (entry,) = entries
    model = zoo.build("gpt2", seed=0, **tiny_overrides("gpt2", **{entry.kind: entry.name}))
    if entry.kind == "norm":
        assert all(m.g.item() == pytest.approx(32 ** 0.5) for m in model.modules() if type(m) is entry.component)
    elif entry.kind == "mlp":
        mlp = model.stack.h[0].mlp
        assert not mlp.c_proj.weight.any() and mlp.c_fc.weight.std() > 0.01
    else:
        torch.testing.assert_close(model.positional.slopes.detach(), 2.0 ** (-8.0 * torch.arange(1, 5) / 4))
