"""The memory plan (zoo train --plan N): its counts against a real step's tensors, its table,
and a run too large for the machine refused before anything is written."""

from __future__ import annotations

import torch
from click.testing import CliRunner

import zoo
from test_lm_training import write_text
from zoo.cli import cli
from zoo.core.spec import load_spec
from zoo.training.plan import activation_bytes, plan

SHAPE = {"n_layers": 2, "d_model": 64, "attention.n_heads": 4, "context_length": 32, "vocab_size": 100}


def test_the_plan_counts_what_a_real_step_holds():
    spec = load_spec("baby-gpt-cpu", SHAPE)
    model = zoo.build(spec, seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 100, (3, 17))
    loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    params = list(model.parameters())
    measured = {"weights": sum(p.nbytes for p in params), "gradients": sum(p.grad.nbytes for p in params),
                "optimizer": sum(t.nbytes for s in optimizer.state.values() for k, t in s.items() if k != "step")}
    planned = plan(spec, "ddp", 1, 16, 3, torch.float32)
    assert (planned.weights, planned.gradients, planned.optimizer) == tuple(measured.values())
    sharded = plan(spec, "fsdp", 4, 16, 3, torch.float32)
    assert sharded.optimizer == measured["optimizer"] // 4 and sharded.total < planned.total
    assert activation_bytes(spec, 16, 3, 4, checkpointing=True) < activation_bytes(spec, 16, 3, 4, checkpointing=False)


def test_plan_prints_both_strategies_and_writes_nothing(tmp_path):
    result = CliRunner().invoke(cli, ["train", "gpt2-xl", "--weights", "hf", "--data", "x", "--plan", "4"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[3:]}
    assert set(rows) == {"ddp", "fsdp"} and float(rows["fsdp"][6]) < 0.5 * float(rows["ddp"][6])
    lora = CliRunner().invoke(cli, ["train", "gpt2-xl", "--weights", "hf", "--data", "x", "--plan", "1", "--lora", "8"])
    assert lora.exit_code == 0 and lora.output.splitlines()[3].startswith("lora"), lora.output


def test_a_run_too_large_for_the_machine_is_refused_up_front(tmp_path):
    data = write_text(tmp_path / "input.txt")
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "baby-gpt-cpu", "--data", str(data), "-o", str(run),
                                      "--set", "n_layers=64", "--set", "d_model=8192", "--set", "attention.n_heads=64"])
    assert result.exit_code == 1 and "a process" in result.output and "--plan N" in result.output, result.output
    assert "Traceback" not in result.output and not run.exists()
