"""Plugin discovery: built-ins, local files, entry points, duplicates, broken plugins."""

import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import zoo
from conftest import REPO, local_plugin, tiny_overrides
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


# --------------------------------------------------------------------------- the contract

BASES = {"positional": zoo.PositionalScheme, "attention": zoo.Attention, "block": zoo.Block,
         "norm": zoo.Norm, "mlp": zoo.MLP}


def test_builtins_subclass_the_public_base_classes(fresh_registry):
    for entry in zoo.get_registry().entries():
        if entry.kind == "exporter":
            assert isinstance(entry.component, zoo.Exporter), entry.name
        elif entry.kind == "checkpoint_format":
            assert isinstance(entry.component, zoo.CheckpointFormat), entry.name
        elif entry.kind == "runtime":
            assert callable(entry.component), entry.name
        else:
            assert issubclass(entry.component, BASES[entry.kind]), entry.name


def test_builtin_plugins_import_only_the_public_namespace():
    import ast

    files = [*(REPO / "plugins").rglob("*.py"), REPO / "exporters" / "__init__.py"]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not [n for n in names if n.startswith("zoo.core")], f"{path.relative_to(REPO)} imports {names}"


def test_parameter_names_keep_gpt2s():
    names = set(zoo.build("gpt2", seed=0, **tiny_overrides("gpt2")).state_dict())
    assert {"wte.weight", "positional.weight", "stack.h.0.ln_1.weight", "stack.h.0.ln_1.bias",
            "stack.h.0.attn.c_attn.weight", "stack.h.0.attn.c_proj.bias", "stack.h.0.ln_2.weight",
            "stack.h.0.mlp.c_fc.weight", "stack.h.0.mlp.c_proj.weight", "stack.ln_f.weight"} <= names


INIT_PLUGIN = '''
from dataclasses import dataclass

import torch
from torch import nn

import zoo


class PlainGainNorm(nn.Module):
    """Not a zoo.Norm subclass: a plain module, as older third-party plugins are."""

    def __init__(self, spec, options):  # runs on the meta device: shapes only
        super().__init__()
        self.g = nn.Parameter(torch.empty(spec.d_model))
        self.register_buffer("eps", torch.empty(()))
        self.register_buffer("arange", torch.empty(4), persistent=False)
        self.noise = nn.Parameter(torch.empty(spec.d_model))

    def reset_parameters(self):
        with torch.no_grad():
            self.g.fill_(3.0)
            self.eps.fill_(1e-3)
            self.arange.copy_(torch.arange(4.0))
            self.noise.copy_(torch.randn(self.noise.shape) * 0.1)  # a factory draw: the build's generator

    def forward(self, x):
        return (self.g + self.noise) * x / x.norm(dim=-1, keepdim=True).clamp(min=self.eps)


class FixedLinear(nn.Linear):
    """A Linear with its own reset_parameters(): not a layer the zoo's scheme touches."""

    def reset_parameters(self):
        nn.init.constant_(self.weight, 0.01)
        nn.init.constant_(self.bias, 1.0)


class OwnInitMLP(zoo.MLP):
    @dataclass
    class Options:
        d_ff: int = 64

    def __init__(self, spec, options):
        super().__init__()
        self.c_fc = nn.Linear(spec.d_model, options.d_ff)
        self.c_proj = nn.Linear(options.d_ff, spec.d_model)
        self.gate = FixedLinear(spec.d_model, options.d_ff)

    def reset_parameters(self):
        nn.init.constant_(self.c_proj.bias, 0.25)  # after the zoo's scheme zeroed it

    def forward(self, x):
        return self.c_proj(torch.relu(self.c_fc(x)) * self.gate(x))


@zoo.hookimpl
def zoo_register_components(registry):
    registry.add("norm", "plain_gain", PlainGainNorm)
    registry.add("mlp", "own_init", OwnInitMLP)
'''


@pytest.fixture
def init_plugin(fresh_registry, tmp_path):
    local_plugin(tmp_path, "init_plugin.py", INIT_PLUGIN)


def init_model(seed=0, **extra):
    return zoo.build("gpt2", seed=seed, **tiny_overrides("gpt2", norm="plain_gain", mlp="own_init", **extra))


def test_build_runs_every_reset_parameters_and_the_scheme(init_plugin):
    model = init_model()
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    norm, mlp = model.stack.h[0].ln_1, model.stack.h[0].mlp
    assert torch.equal(norm.g, torch.full((32,), 3.0)) and norm.eps.item() == pytest.approx(1e-3)
    assert torch.equal(norm.arange, torch.arange(4.0))  # a non-persistent buffer too
    assert 0.02 < norm.noise.std() < 0.3
    assert torch.equal(mlp.gate.weight, torch.full((64, 32), 0.01)) and torch.equal(mlp.gate.bias, torch.ones(64))
    assert torch.equal(mlp.c_proj.bias, torch.full((32,), 0.25))  # the component's reset_parameters() wins
    assert not mlp.c_fc.bias.any() and 0.015 < mlp.c_fc.weight.std() < 0.025  # the gpt2 scheme
    assert 0.015 < model.positional.weight.std() < 0.025  # LearnedPositions.reset_parameters()
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).abs().amax() > 1e-3


def test_a_plugin_whose_values_live_in_its_constructor_is_refused_in_one_line(fresh_registry, tmp_path):
    """zoo constructs on the meta device (torch's contract, as in timm and litgpt): values a
    constructor gives are not kept, so a module holding some without reset_parameters() is refused."""
    plugin = local_plugin(tmp_path, "constructor_norm.py", textwrap.dedent('''
        import torch
        from torch import nn
        import zoo

        class ConstructorNorm(nn.Module):
            def __init__(self, spec, options):
                super().__init__()
                self.g = nn.Parameter(torch.full((spec.d_model,), 3.0))

            def forward(self, x):
                return self.g * x

        @zoo.hookimpl
        def zoo_register_components(registry):
            registry.add("norm", "constructor_norm", ConstructorNorm)
    '''))
    result = CliRunner().invoke(cli, ["--plugin", str(plugin), "build", "gpt2", "--set", "n_layers=1",
                                      "--set", "norm=constructor_norm"])
    assert result.exit_code != 0 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: ConstructorNorm (stack.h.0.ln_1) holds g but defines no "
                                    "reset_parameters()")


def test_seeded_builds_repeat_every_draw(init_plugin):
    a, b, c = init_model(seed=1), init_model(seed=1), init_model(seed=2)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert not torch.equal(a.stack.h[0].ln_1.noise, c.stack.h[0].ln_1.noise)
    assert not torch.equal(a.wte.weight, c.wte.weight)


def test_half_precision_build_casts_constructor_values(init_plugin):
    model = zoo.build("gpt2", seed=0, dtype=torch.float16,
                      **tiny_overrides("gpt2", norm="plain_gain", mlp="own_init", init="xavier"))
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert model.lm_head.weight is model.wte.weight
    assert torch.equal(model.stack.ln_f.g, torch.full((32,), 3.0, dtype=torch.float16))
    bound = (6 / (32 + 96)) ** 0.5  # xavier-uniform on c_attn (96, 32)
    weight = model.stack.h[0].attn.c_attn.weight.float()
    assert weight.abs().max() <= bound and weight.abs().max() > 0.8 * bound


def test_an_exporter_subclass_lists_by_class_name(fresh_registry, tmp_path):
    plugin = tmp_path / "count_exporter.py"
    plugin.write_text(textwrap.dedent("""
        import zoo

        class CountExporter(zoo.Exporter):
            def __call__(self, model, spec, out_dir, **options):
                (out_dir / "count.txt").write_text(str(sum(p.numel() for p in model.parameters())))
                return {"files": {"count.txt": {}}}

        @zoo.hookimpl
        def zoo_register_exporters(registry):
            registry.add("exporter", "count", CountExporter())
    """))
    runner = CliRunner()
    result = runner.invoke(cli, ["--plugin", str(plugin), "plugins"])
    assert re.search(r"exporter\s+count\s+zoo_local_plugin_count_exporter\.CountExporter\s+local file", result.output)
    out = tmp_path / "counted"
    result = runner.invoke(cli, ["--plugin", str(plugin), "export", "gpt2", "--set", "n_layers=1", "--format", "count",
                                 "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert int((out / "count.txt").read_text()) > 1000
    with pytest.raises(NotImplementedError, match="must define __call__"):
        zoo.Exporter()(None, None, out)


def test_seeded_builds_in_two_threads_at_once_give_the_tensors_of_one_at_a_time():
    """A build draws from its own generator (zoo.core.meta.InitMode, per thread), never torch's global one."""
    import threading

    def build(name, out):
        out[name] = zoo.build(name, seed=3, **tiny_overrides(name)).state_dict()

    names = ("gpt2", "transformer-en-it-small")
    alone, together = {}, {}
    for name in names:
        build(name, alone)
    for _ in range(3):  # the draws of two builds interleave differently each time
        threads = [threading.Thread(target=build, args=(name, together)) for name in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for name in names:
            assert alone[name].keys() == together[name].keys()
            for key, tensor in alone[name].items():
                assert torch.equal(tensor, together[name][key]), (name, key)


def test_the_gpt2_scheme_scales_the_declared_residual_projection(fresh_registry, tmp_path):
    """Scaled by 1/sqrt(2 * layers) because an attention or MLP names it, not because of its name."""
    local_plugin(tmp_path, "down_mlp.py", textwrap.dedent('''
        import torch
        from torch import nn
        import zoo

        class DownMLP(zoo.MLP):
            residual_projection = "down"

            def __init__(self, spec, options):
                super().__init__()
                self.up = nn.Linear(spec.d_model, 4 * spec.d_model)
                self.down = nn.Linear(4 * spec.d_model, spec.d_model)
                self.c_proj = nn.Linear(spec.d_model, spec.d_model)  # GPT-2's name, but not the declared one

            def forward(self, x):
                return self.down(torch.relu(self.up(x))) + 0 * self.c_proj(x)

        @zoo.hookimpl
        def zoo_register_components(registry):
            registry.add("mlp", "down", DownMLP)
    '''))
    model = zoo.build("gpt2", seed=0, n_layers=8, d_model=64, **{"attention.n_heads": 4, "mlp": "down"})
    scaled = 0.02 / (2 * 8) ** 0.5
    for layer in model.stack.h:
        assert layer.mlp.down.weight.std().item() == pytest.approx(scaled, rel=0.1)
        assert layer.mlp.c_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert layer.mlp.up.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert layer.attn.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.1)  # zoo.Attention's default
