"""A real plugin distribution, installed by pip during the test, found through its entry point.

The package's norm sets its gain in its constructor and its MLP initialises its own scale
in ``reset_parameters()``: ``zoo build`` must keep the first and call the second.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zoo.core import registry

D_MODEL = 32
BUILD_ARGS = ["--set", "norm=gain_norm", "--set", "mlp=scaled_mlp", "--set", "n_layers=2",
              "--set", f"d_model={D_MODEL}", "--set", "attention.n_heads=4", "--set", "vocab_size=97",
              "--set", "context_length=16", "--set", "bos_token_id=96", "--set", "eos_token_id=96"]

PYPROJECT = """\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "zoo-gain"
version = "0.2"

[tool.setuptools]
py-modules = ["zoo_gain"]

[project.entry-points.zoo]
gain = "zoo_gain"
"""

MODULE = '''\
"""A norm with a constructor-set gain and an MLP with its own reset_parameters()."""

import torch
from torch import nn

import zoo


class GainNorm(zoo.Norm):
    """x / rms(x) times one learned scalar, sqrt(d) at the start (as ScaleNorm)."""

    def __init__(self, spec, options):
        super().__init__()
        self.d_model = spec.d_model
        self.g = nn.Parameter(torch.empty(()))

    def reset_parameters(self):
        nn.init.constant_(self.g, self.d_model ** 0.5)

    def forward(self, x):
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp(min=1e-5)


class ScaledMLP(zoo.MLP):
    """A ReLU MLP whose output is scaled per channel, 0.5 at the start."""

    def __init__(self, spec, options):
        super().__init__()
        self.c_fc = nn.Linear(spec.d_model, 2 * spec.d_model)
        self.c_proj = nn.Linear(2 * spec.d_model, spec.d_model)
        self.scale = nn.Parameter(torch.empty(spec.d_model))

    def reset_parameters(self):
        nn.init.constant_(self.scale, 0.5)

    def forward(self, x):
        return self.scale * self.c_proj(torch.relu(self.c_fc(x)))


@zoo.hookimpl
def zoo_register_components(registry):
    registry.add("norm", "gain_norm", GainNorm)
    registry.add("mlp", "scaled_mlp", ScaledMLP)
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The package installed by pip (offline, no build isolation) into its own directory."""
    import setuptools  # noqa: F401 - the package's build backend, without build isolation (the test extra declares it)

    root = tmp_path_factory.mktemp("zoo-gain")
    package, target = root / "pkg", root / "site"
    package.mkdir()
    (package / "pyproject.toml").write_text(PYPROJECT)
    (package / "zoo_gain.py").write_text(MODULE)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(package)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert list(target.glob("zoo_gain-0.2.dist-info/entry_points.txt"))
    return target


def zoo_cli(site: Path, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ZOO_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "zoo.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=site.parent)


def test_plugins_lists_the_package_as_origin(site):
    result = zoo_cli(site, "plugins")
    assert result.returncode == 0, result.stderr
    assert re.search(r"norm\s+gain_norm\s+zoo_gain\.GainNorm\s+package zoo-gain 0\.2", result.stdout)
    assert re.search(r"mlp\s+scaled_mlp\s+zoo_gain\.ScaledMLP\s+package zoo-gain 0\.2", result.stdout)


def test_build_calls_every_reset_parameters_and_the_scheme(site, tmp_path, monkeypatch, fresh_registry):
    out = tmp_path / "gain"
    result = zoo_cli(site, "build", "gpt2", *BUILD_ARGS, "--seed", "3", "-o", out)
    assert result.returncode == 0, result.stderr
    tensors = load_file(out / "model.safetensors")
    gains = {name: t for name, t in tensors.items() if name.endswith(".g")}
    assert len(gains) == 2 * 2 + 1  # ln_1 and ln_2 per block, ln_f
    for name, gain in gains.items():
        assert gain.item() == pytest.approx(D_MODEL ** 0.5), name
    scales = [t for name, t in tensors.items() if name.endswith("mlp.scale")]
    assert len(scales) == 2 and all(torch.equal(s, torch.full((D_MODEL,), 0.5)) for s in scales)
    # the layers the zoo knows still get the spec's scheme: N(0, 0.02), zero biases
    assert tensors["stack.h.0.mlp.c_fc.weight"].std().item() == pytest.approx(0.02, rel=0.2)
    assert not tensors["stack.h.0.mlp.c_fc.bias"].any()

    # the same seed gives the same tensors
    again = tmp_path / "again"
    assert zoo_cli(site, "build", "gpt2", *BUILD_ARGS, "--seed", "3", "-o", again).returncode == 0
    second = load_file(again / "model.safetensors")
    assert tensors.keys() == second.keys() and all(torch.equal(tensors[k], second[k]) for k in tensors)

    # in this process too, entry points find the package; its logits are not all zero
    monkeypatch.syspath_prepend(str(site))
    from zoo.core.model_dir import load_model

    try:
        model = load_model(out)
        assert registry.get_registry().entry("norm", "gain_norm").origin == "package zoo-gain 0.2"
        with torch.no_grad():
            logits = model(torch.tensor([[5, 17, 42, 3]]))  # (1, 4, 97)
        assert logits.abs().amax(dim=-1).min() > 1e-3
    finally:
        sys.modules.pop("zoo_gain", None)
