"""Plugin discovery: built-ins, local files, entry points, duplicates, broken plugins."""

import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import zoo
from conftest import REPO, tiny_overrides
from zoo.core import registry
from zoo.cli import cli
from zoo.errors import PluginError, RegistryError


def readme_plugin() -> str:
    """The custom-attention plugin exactly as the README shows it."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```python\n(# cosine_attention.py\n.*?)```", text, re.S)
    assert block, "README lost its plugin example"
    return block.group(1)


@pytest.fixture
def cosine_file(tmp_path):
    path = tmp_path / "cosine_attention.py"
    path.write_text(readme_plugin())
    return path


def test_builtins_come_from_the_builtin_plugins(fresh_registry):
    entries = zoo.get_registry().entries()
    assert {e.kind for e in entries} >= {"positional", "attention", "block", "norm", "mlp"}
    assert all(e.origin.startswith("built-in (zoo.") for e in entries)


def test_readme_plugin_builds_through_local_file(fresh_registry, cosine_file):
    registry.use_local_plugins([str(cosine_file)])
    entry = zoo.get_registry().entry("attention", "cosine")
    assert entry.origin == f"local file {cosine_file}"
    model = zoo.build("gpt2", seed=0, **tiny_overrides("gpt2", attention="cosine", **{"attention.temperature": 5.0}))
    attn = model.stack.h[0].attn
    assert type(attn).__name__ == "CosineAttention" and attn.temperature == 5.0 and attn.n_heads == 4
    ids = torch.randint(0, 97, (1, 6))
    cache = model.new_cache(1, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.cat([model(ids[:, :3], cache=cache), model(ids[:, 3:], cache=cache)], 1),
                                   model(ids), atol=1e-5, rtol=1e-4)


def test_readme_plugin_through_cli_and_env(fresh_registry, cosine_file, tmp_path, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(cli, ["--plugin", str(cosine_file), "plugins"])
    assert result.exit_code == 0 and re.search(r"attention\s+cosine\s+.*local file", result.output)
    registry.reset()
    monkeypatch.setenv("ZOO_PLUGINS", str(cosine_file))
    out = tmp_path / "built"
    result = runner.invoke(cli, ["build", "gpt2", "--set", "n_layers=1", "--set", "attention=cosine", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "type: cosine" in (out / "spec.yaml").read_text()


def write_distribution(site: Path, name: str, module: str, source: str) -> None:
    """A real installed distribution: a module plus a .dist-info with a zoo entry point."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{name.replace('-', '_')}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[zoo]\n{module} = {module}\n")


def test_entry_point_discovery(fresh_registry, tmp_path, monkeypatch):
    write_distribution(tmp_path, "zoo-cosine", "zoo_cosine_ep", readme_plugin())
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = zoo.get_registry().entry("attention", "cosine")
    assert entry.origin == "package zoo-cosine 0.3"
    model = zoo.build("gpt2", **tiny_overrides("gpt2", attention="cosine"))
    assert type(model.stack.h[0].attn).__name__ == "CosineAttention"
    sys.modules.pop("zoo_cosine_ep", None)


def test_duplicate_names_are_refused_naming_both(fresh_registry, tmp_path):
    dup = tmp_path / "dup_norm.py"
    dup.write_text(textwrap.dedent("""
        import zoo
        from zoo.plugins.norms import RMSNorm

        @zoo.hookimpl
        def zoo_register_components(registry):
            registry.add("norm", "layer_norm", RMSNorm)
    """))
    registry.use_local_plugins([str(dup)])
    with pytest.raises(RegistryError, match=r"norm 'layer_norm' is registered twice: by built-in \(zoo.plugins.norms\) and by local file .*dup_norm.py"):
        zoo.get_registry()


def test_exporter_hook_registers_a_format(fresh_registry, tmp_path):
    plugin = tmp_path / "names_exporter.py"
    plugin.write_text(textwrap.dedent("""
        import zoo

        def export_names(model, spec, out_dir, **options):
            (out_dir / "names.txt").write_text("\\n".join(n for n, _ in model.named_parameters()))
            return {"files": {"names.txt": {}}}

        @zoo.hookimpl
        def zoo_register_exporters(registry):
            registry.add("exporter", "names", export_names)
    """))
    out = tmp_path / "exported"
    result = CliRunner().invoke(cli, ["--plugin", str(plugin), "export", "gpt2", "--set", "n_layers=1",
                                      "--format", "names", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "stack.h.0.attn.c_attn.weight" in (out / "names.txt").read_text()


@pytest.mark.parametrize("source,message", [
    ("raise RuntimeError('boom')", "failed to import: RuntimeError: boom"),
    ("import zoo_no_such_dependency", "failed to import: ModuleNotFoundError"),
    ("import zoo\n@zoo.hookimpl\ndef zoo_register_everything(registry): pass", "implements an unknown hook"),
])
def test_broken_plugin_is_one_line_error(fresh_registry, tmp_path, source, message):
    bad = tmp_path / "bad_plugin.py"
    bad.write_text(source)
    result = CliRunner().invoke(cli, ["--plugin", str(bad), "list"])
    assert result.exit_code == 1
    assert message in result.output and result.output.count("\n") == 1
    assert "Traceback" not in result.output


def test_missing_plugin_module(fresh_registry):
    with pytest.raises(PluginError, match="plugin module 'zoo_nowhere' not found"):
        registry.plugin_manager(["zoo_nowhere"])
