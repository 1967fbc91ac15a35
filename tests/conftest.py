"""Shared fixtures: tiny specs, a clean registry per test that installs plugins."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zoo.core import registry
from zoo.core.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def tiny_overrides(name: str | None = None, **extra) -> dict:
    """Overrides that shrink any registered model to a few thousand parameters."""
    out = {"vocab_size": 97, "context_length": 64, "d_model": 32, "n_layers": 2,
           "attention.n_heads": 4, "mlp.d_ff": 64, "dropout": 0.0}
    if name is not None and name.startswith("transformer-en-it"):
        out["n_decoder_layers"] = 2
        out.update({"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2})
    elif name is not None:
        out.update({"bos_token_id": 96, "eos_token_id": 96})
        if load_spec(name).attention.options.n_kv_heads:  # grouped-query models stay grouped
            out["attention.n_kv_heads"] = 2
    out.update(extra)
    return out


class Killed(KeyboardInterrupt):
    """Raised from a training run's ``on_step`` to stop it as a kill would."""


@pytest.fixture
def fresh_registry(monkeypatch):
    """Forget cached plugin managers before and after the test (for plugin tests)."""
    monkeypatch.delenv("ZOO_PLUGINS", raising=False)
    registry.reset()
    registry.use_local_plugins(())
    yield
    registry.use_local_plugins(())
    registry.reset()


def local_plugin(directory: Path, file_name: str, source: str) -> Path:
    """Write ``source`` as plugin file ``directory/file_name`` and name it with ``--plugin``
    for every later registry look-up (use with the ``fresh_registry`` fixture)."""
    path = directory / file_name
    path.write_text(source)
    registry.use_local_plugins([str(path)])
    return path
