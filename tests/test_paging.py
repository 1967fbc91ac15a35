"""Weights that wait on disk (zoo.core.paging) while an export's ONNX side has the memory."""

from __future__ import annotations

import shutil
import weakref

import pytest
import torch
from torch import nn

import zoo
from conftest import tiny_overrides
from zoo.core import paging
from zoo.core.paging import weights_on_disk


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def test_weights_wait_on_disk_and_come_back_in_place(tmp_path):
    model = zoo.build("gpt2", seed=0, **tiny_overrides("gpt2"))
    before, params = snapshot(model), list(model.parameters())
    storages = [weakref.ref(p.untyped_storage()) for p in params]
    with weights_on_disk(model, tmp_path) as paged:
        assert paged
        assert all(p.numel() == 0 for p in model.parameters())
        assert all(ref() is None for ref in storages)  # the memory itself was freed
        assert len(list(tmp_path.glob("*.safetensors"))) == 1
    assert list(model.parameters()) == params  # the same Parameter objects
    assert all(torch.equal(t, before[name]) for name, t in model.state_dict().items())
    assert model.lm_head.weight is model.token_table.weight  # still tied
    assert not list(tmp_path.iterdir())


def test_weights_come_back_when_the_block_fails(tmp_path):
    model = zoo.build("gpt2", seed=0, **tiny_overrides("gpt2"))
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        with weights_on_disk(model, tmp_path):
            raise RuntimeError("boom")
    assert all(torch.equal(t, before[name]) for name, t in model.state_dict().items())
    assert not list(tmp_path.iterdir())


def test_a_caller_holding_the_tensors_still_gets_them_back_unchanged(tmp_path):
    model = zoo.build("gpt2", seed=0, **tiny_overrides("gpt2"))
    held = model.state_dict()  # shares memory with the parameters, so nothing is freed
    before = snapshot(model)
    with weights_on_disk(model, tmp_path):
        pass
    assert all(torch.equal(held[name], before[name]) for name in before)
    assert all(torch.equal(t, before[name]) for name, t in model.state_dict().items())


def test_parameters_viewing_one_buffer_stay_in_memory(tmp_path):
    model = nn.Linear(4, 4)
    model.extra = nn.Parameter(model.weight.data[0])  # a second Parameter over the weight's buffer
    with weights_on_disk(model, tmp_path) as paged:
        assert not paged and model.weight.numel() == 16


def test_too_little_disk_keeps_the_weights_in_memory_and_says_so(tmp_path, monkeypatch):
    model = zoo.build("gpt2", seed=0, **tiny_overrides("gpt2"))
    monkeypatch.setattr(paging.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 0))
    notes = []
    with weights_on_disk(model, tmp_path, notice=notes.append) as paged:
        assert not paged and all(p.numel() for p in model.parameters())
    assert not list(tmp_path.iterdir())
    assert len(notes) == 1 and "\n" not in notes[0]
    assert notes[0].startswith(f"note: {tmp_path} has 0 B free, too little to page out the model's ")
