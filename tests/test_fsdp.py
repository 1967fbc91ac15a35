"""FSDP2 (--strategy fsdp): 2 processes equal 1 with the same global batch, sharded DCP snapshots
resume (also with another process count), published weights are an ordinary model directory,
the translator trains sharded, and bad requests are one line."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from click.testing import CliRunner
from safetensors.torch import load_file
from torch.distributed.fsdp import FSDPModule

from synthetic_pairs import TINY_MODEL, one_thread, write_tsv
from test_lm_training import records, write_text
from zoo.cli import cli
from zoo.core.model_dir import load_model

single_thread = pytest.fixture(autouse=True)(one_thread)

TINY = ["--set", "d_model=32", "--set", "n_layers=2", "--set", "attention.n_heads=2", "--set", "mlp.d_ff=64",
        "--set", "context_length=32", "--seq-len", "16", "--eval-every", "1000", "--eval-tokens", "64",
        "--warmup", "2", "--amp", "off", "--device", "cpu"]


def torchrun(*args, processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "zoo.cli", "train", *map(str, args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if "Error" in line or "zoo/" in line]
    # a child killed by a signal leaves no Python traceback: its last words are in the tail
    assert done.returncode == 0, "\n".join(errors[:40]) + "\n--- stderr, last lines ---\n" + done.stderr[-6000:]
    return done


def train(*args, expect: int = 0):
    result = CliRunner().invoke(cli, ["train", *map(str, args)])
    assert result.exit_code == expect, result.output
    return result


def test_two_sharded_processes_equal_one_process_and_resume_with_one(tmp_path):
    data = write_text(tmp_path / "input.txt")
    common = ["baby-gpt-cpu", "--data", data, *TINY, "--max-steps", "6", "--checkpoint-every", "3"]
    torchrun(*common, "--batch-size", "2", "--strategy", "fsdp", "-o", tmp_path / "two")
    train(*common, "--batch-size", "4", "-o", tmp_path / "one")
    two, one = tmp_path / "two", tmp_path / "one"
    assert records(two, "start")[0]["world"] == 2
    assert [r["loss"] for r in records(two, "train")] == pytest.approx([r["loss"] for r in records(one, "train")],
                                                                       rel=1e-5)
    theirs, ours = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert theirs.keys() == ours.keys()  # gathered from the shards: an ordinary model directory
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6)
    snapshot = two / "checkpoints" / "step-00000006"
    assert sorted(p.name for p in snapshot.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # one shard each
    assert json.loads((snapshot / "state.json").read_text())["strategy"] == "fsdp"
    assert [c["step"] for c in records(two, "checkpoint")] == [3, 6]
    # DCP reshards: the two processes' snapshot continues in one process (batch 2: half the global batch)
    (snapshot.parent / ".tmp-step-00000009").mkdir()  # what a run killed while writing leaves behind
    train("--resume", two, "--max-steps", "8")
    assert json.loads((two / "manifest.json").read_text())["training"]["step"] == 8
    assert not (snapshot.parent / ".tmp-step-00000009").exists()
    assert load_model(two)(torch.tensor([[1, 2, 3]])).isfinite().all()


def test_a_sharded_run_resumes_where_it_would_have_gone(tmp_path):
    data = write_text(tmp_path / "input.txt")
    common = ["baby-gpt-cpu", "--data", data, *TINY, "--batch-size", "4", "--strategy", "fsdp",
              "--schedule", "constant", "--set", "dropout=0.1"]
    train(*common, "--max-steps", "6", "-o", tmp_path / "straight")
    train(*common, "--max-steps", "3", "-o", tmp_path / "halves")
    train("--resume", tmp_path / "halves", "--max-steps", "6")
    straight, halves = (load_file(tmp_path / run / "model.safetensors") for run in ("straight", "halves"))
    assert all(torch.equal(straight[name], halves[name]) for name in straight)


def test_the_sharded_model_is_gone_before_the_group_is(tmp_path, monkeypatch):
    """FSDP's modules outlive their trainer in reference cycles; left to interpreter exit they are
    freed after the process group, where gloo can abort the process (once in CI: SIGABRT)."""
    destroy, alive = dist.destroy_process_group, []

    def counting(*args, **kwargs):
        alive.append(sum(isinstance(o, FSDPModule) for o in gc.get_objects()))
        destroy(*args, **kwargs)

    monkeypatch.setattr(dist, "destroy_process_group", counting)
    data = write_text(tmp_path / "input.txt")
    train("baby-gpt-cpu", "--data", data, *TINY, "--max-steps", "2", "--strategy", "fsdp", "-o", tmp_path / "run")
    assert alive == [0]


def test_the_translator_trains_sharded_with_averaging(tmp_path):
    data = write_tsv(tmp_path / "pairs.tsv")
    run = tmp_path / "run"
    done = torchrun("transformer-en-it-small", "--data", data, "-o", run, *TINY_MODEL, "--vocab-size", "120",
                    "--batch-tokens", "256", "--max-steps", "8", "--average-last", "3", "--average-every", "2",
                    "--eval-sentences", "4", "--device", "cpu", "--strategy", "fsdp")
    assert "trained transformer-en-it-small: 8 steps" in done.stdout
    assert records(run, "start")[0]["world"] == 2
    final = [r for r in records(run, "validation")]
    assert final and all("bleu" in r for r in final)
    assert load_model(run).spec.family == "encoder-decoder"


@pytest.mark.parametrize("extra, message", [
    (["--amp", "fp16"], "--strategy fsdp with --amp fp16"),
])
def test_bad_sharded_requests_are_one_line(tmp_path, extra, message):
    data = write_text(tmp_path / "input.txt")
    run = tmp_path / "run"
    result = train("baby-gpt-cpu", "--data", data, *TINY, "--strategy", "fsdp", *extra, "-o", run, expect=1)
    assert message in result.output and "Traceback" not in result.output
    assert not run.exists()


def test_a_resume_with_another_strategy_is_refused(tmp_path):
    data = write_text(tmp_path / "input.txt")
    run = tmp_path / "run"
    train("baby-gpt-cpu", "--data", data, *TINY, "--max-steps", "2", "-o", run)
    changed = train("--resume", run, "--strategy", "fsdp", "--max-steps", "4", expect=1)
    assert "--strategy differs from the run's setting" in changed.output
    config = json.loads((run / "train.json").read_text())
    (run / "train.json").write_text(json.dumps({**config, "strategy": "fsdp"}))  # a snapshot the other strategy wrote
    edited = train("--resume", run, "--max-steps", "4", expect=1)
    assert "was written by --strategy ddp" in edited.output and "Traceback" not in edited.output
