"""Training: schedule, loss going down, kill-and-resume reproducibility, torchrun with 2 processes."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from conftest import Killed
from synthetic_pairs import TINY_MODEL, TINY_OVERRIDES, one_thread, write_tsv
from zoo.core.model_dir import load_model
from zoo.cli import cli
from zoo.translation.vocabulary import Vocabulary
from zoo.training.loop import learning_rate
from zoo.training.run import train_run as train
from zoo.translation.train_config import TranslationConfig as TrainConfig

single_thread = pytest.fixture(autouse=True)(one_thread)


def tiny_config(data: Path, **changes) -> TrainConfig:
    base = dict(model="transformer-en-it-small", data=str(data), overrides=dict(TINY_OVERRIDES), vocab_size=120,
                batch_tokens=256, lr=3e-3, warmup_steps=10, validation_fraction=0.05, test_fraction=0.05,
                checkpoint_every=4, eval_every=1000, eval_sentences=8, eval_pairs=40, log_every=2)
    base.update(changes)
    return TrainConfig(**base)


def records(run_dir: Path, event: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == event]


def test_learning_rate_warms_up_linearly_then_decays_as_inverse_square_root():
    config = TrainConfig(lr=1e-3, warmup_steps=100)
    assert learning_rate(50, config) == pytest.approx(5e-4)
    assert learning_rate(100, config) == pytest.approx(1e-3)
    assert learning_rate(400, config) == pytest.approx(5e-4)
    paper = TrainConfig(lr=512**-0.5 * 4000**-0.5, warmup_steps=4000)  # Vaswani et al.: d^-0.5 min(s^-0.5, s w^-1.5)
    for step in (10, 4000, 20000):
        assert learning_rate(step, paper) == pytest.approx(512**-0.5 * min(step**-0.5, step * 4000**-1.5))


def test_a_few_dozen_steps_lower_the_loss_and_leave_a_complete_run_directory(tmp_path):
    data = write_tsv(tmp_path / "pairs.tsv")
    run = tmp_path / "run"
    summary = train(tiny_config(data, max_steps=40), run, progress=False)
    losses = [r["loss"] for r in records(run, "train")]
    assert summary["steps"] == 40 and len(losses) == 20
    assert summary["averaged_steps"] is None  # shorter than one --average-every: the last weights, not a mean of one
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert all(r["tokens_per_second"] > 0 for r in records(run, "train"))
    validation = records(run, "validation")[-1]
    assert validation["step"] == 40 and isinstance(validation["bleu"], float) and 0.0 <= validation["bleu"] <= 100.0
    model = load_model(run)  # the run directory is a zoo model directory
    vocab = Vocabulary.load(run)
    assert model.spec.vocab_size == vocab.size == vocab.source.get_vocab_size()
    assert [vocab.source.id_to_token(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert (model.spec.pad_token_id, model.spec.bos_token_id, model.spec.eos_token_id) == (0, 1, 2)
    assert (run / "curves.png").stat().st_size > 1000
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-00000036", "step-00000040"]
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["training"]["step"] == 40


@pytest.mark.parametrize("resume_with", ["python", "cli"])
def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path, resume_with):
    data = write_tsv(tmp_path / "pairs.tsv")
    config = tiny_config(data, max_steps=14, overrides={**TINY_OVERRIDES, "dropout": 0.1})
    train(config, tmp_path / "straight", progress=False)

    def kill_at_step_10(step):
        if step == 10:
            raise Killed

    with pytest.raises(Killed):
        train(config, tmp_path / "killed", progress=False, on_step=kill_at_step_10)
    assert [p.name for p in sorted((tmp_path / "killed/checkpoints").iterdir())] == ["step-00000004", "step-00000008"]
    if resume_with == "python":
        summary = train(TrainConfig.load(tmp_path / "killed"), tmp_path / "killed", resume=True, progress=False)
        assert summary["steps"] == 14
    else:  # the run directory alone: model, data and settings come from its train.json
        resumed = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path / "killed")])
        assert resumed.exit_code == 0, resumed.output
        assert "trained transformer-en-it-small: 14 steps" in resumed.output
    straight = load_file(tmp_path / "straight/model.safetensors")
    resumed = load_file(tmp_path / "killed/model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    steps = [r["step"] for r in records(tmp_path / "killed", "train")]
    assert steps == sorted(set(steps))  # the log kept no record from past the checkpoint


def test_train_command_resume_and_refusals(tmp_path):
    data = write_tsv(tmp_path / "pairs.tsv")
    run = tmp_path / "run"
    runner = CliRunner()
    base = ["train", "transformer-en-it-small", "--data", str(data), *TINY_MODEL, "--vocab-size", "120",
            "--batch-tokens", "256", "--eval-sentences", "4", "--checkpoint-every", "3"]
    first = runner.invoke(cli, [*base, "-o", str(run), "--max-steps", "3"])
    assert first.exit_code == 0, first.output
    assert "trained transformer-en-it-small: 3 steps" in first.output
    again = runner.invoke(cli, [*base, "-o", str(run), "--max-steps", "3"])
    assert again.exit_code == 1 and f"already exists; continue it with --resume {run}" in again.output
    changed = runner.invoke(cli, [*base, "--resume", str(run), "--lr", "0.5"])
    assert changed.exit_code == 1 and "--lr differs from the run's setting" in changed.output
    more = runner.invoke(cli, [*base, "--resume", str(run), "--max-steps", "5"])
    assert more.exit_code == 0, more.output
    assert "5 steps" in more.output
    alone = runner.invoke(cli, ["train", "--resume", str(run), "--max-steps", "6"])
    assert alone.exit_code == 0, alone.output
    assert "trained transformer-en-it-small: 6 steps" in alone.output
    other = write_tsv(tmp_path / "other.tsv")
    elsewhere = runner.invoke(cli, ["train", "--resume", str(run), "--data", str(other)])
    assert elsewhere.exit_code == 1 and "resume it with the same --data" in elsewhere.output
    for args, what in ((["--data", str(data)], "MODEL"), (["transformer-en-it-small"], "--data FILE")):
        new = runner.invoke(cli, ["train", *args, "-o", str(tmp_path / "new")])
        assert new.exit_code == 2 and f"a new run (-o) needs {what}" in new.output, new.output
    assert not (tmp_path / "new").exists()
    missing = runner.invoke(cli, [*base, "--resume", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "no such run directory" in missing.output and "Traceback" not in missing.output
    neither = runner.invoke(cli, base)
    assert neither.exit_code == 2 and "give -o RUN_DIR" in neither.output


def test_torchrun_two_processes_keep_identical_replicas(tmp_path):
    data = write_tsv(tmp_path / "pairs.tsv")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "zoo.cli", "train", "transformer-en-it-small", "--data", str(data), "-o", str(run),
               *TINY_MODEL, "--vocab-size", "120", "--batch-tokens", "256", "--max-steps", "6",
               "--checkpoint-every", "3", "--eval-sentences", "4", "--device", "cpu"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained transformer-en-it-small: 6 steps" in done.stdout
    checkpoints = records(run, "checkpoint")
    assert [c["step"] for c in checkpoints] == [3, 6]
    for c in checkpoints:
        assert len(c["replica_digests"]) == 2 and c["replicas_identical"], c
    assert checkpoints[0]["replica_digests"] != checkpoints[1]["replica_digests"]  # it did train
    assert records(run, "start")[0]["world"] == 2
    assert load_model(run).spec.vocab_size == Vocabulary.load(run).size


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_gpu_with_mixed_precision(tmp_path):
    data = write_tsv(tmp_path / "pairs.tsv")
    summary = train(tiny_config(data, max_steps=20, device="cuda", amp="auto"), tmp_path / "run", progress=False)
    losses = [r["loss"] for r in records(tmp_path / "run", "train")]
    assert summary["steps"] == 20 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert load_model(tmp_path / "run", device="cuda").spec.vocab_size == Vocabulary.load(tmp_path / "run").size


def final_losses(monkeypatch, last: float, mean: float) -> None:
    """Make the end of a run validate the last weights at ``last`` and their mean at ``mean``."""
    from zoo.translation.task import TranslationTask

    real = TranslationTask.validate
    finals = iter([last, mean])

    def validate(self, model, device, autocast, final):
        result = real(self, model, device, autocast, final)
        return {**result, "loss": next(finals)} if final else result

    monkeypatch.setattr(TranslationTask, "validate", validate)


def test_checkpoint_averaging_publishes_the_mean_of_late_points_when_it_validates_better(tmp_path, monkeypatch):
    data = write_tsv(tmp_path / "pairs.tsv")
    run = tmp_path / "run"
    final_losses(monkeypatch, last=2.0, mean=1.5)
    summary = train(tiny_config(data, max_steps=16, average_every=2, average_last=4), run, progress=False)
    # points at 10, 12, 14, 16 are kept; 10 lies before the last quarter (step 12 on): the steep part
    assert summary["averaged_steps"] == [12, 14, 16]
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["training"]["averaged_steps"] == [12, 14, 16]
    assert sorted(p.name for p in (run / "averaging").iterdir()) == [f"step-{s:08d}.safetensors" for s in (10, 12, 14, 16)]
    points = [load_file(run / "averaging" / f"step-{s:08d}.safetensors") for s in (12, 14, 16)]
    published = load_file(run / "model.safetensors")
    assert published.keys() == points[0].keys()
    for name, value in published.items():
        expected = (points[0][name] + points[1][name] + points[2][name]) / 3
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
    assert any(not torch.equal(points[0][n], points[2][n]) for n in published)  # the points differ: a real mean
    # the training snapshot keeps the weights as trained, so a resumed run continues from them
    trained = load_file(run / "checkpoints/step-00000016/model.safetensors")
    assert all(torch.equal(trained[n], points[2][n]) for n in published)
    validations = records(run, "validation")
    assert "averaged_steps" not in validations[-2] and validations[-1]["averaged_steps"] == [12, 14, 16]


def test_checkpoint_averaging_never_publishes_a_mean_that_validates_worse(tmp_path, monkeypatch):
    data = write_tsv(tmp_path / "pairs.tsv")
    run = tmp_path / "run"
    final_losses(monkeypatch, last=1.5, mean=2.0)
    summary = train(tiny_config(data, max_steps=16, average_every=2, average_last=4), run, progress=False)
    assert summary["averaged_steps"] is None and summary["validation"]["loss"] == 1.5
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    assert "averaged_steps" not in manifest["training"]
    published = load_file(run / "model.safetensors")
    trained = load_file(run / "checkpoints/step-00000016/model.safetensors")
    assert all(torch.equal(trained[n], published[n]) for n in published)  # the last weights
    assert records(run, "validation")[-1]["averaged_steps"] == [12, 14, 16]  # the mean was tried and logged


def test_mfu_is_logged_and_train_profile_shows_where_the_step_goes(tmp_path, monkeypatch):
    import tempfile

    data = write_tsv(tmp_path / "pairs.tsv")
    run = tmp_path / "run"
    train(tiny_config(data, max_steps=4), run, progress=False)
    start = records(run, "start")[0]
    assert start["flops_per_token"] > 0 and start["dtype"] in ("float32", "bfloat16")
    assert all(0 < r["mfu"] < 1 for r in records(run, "train"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the throw-away run goes
    out = tmp_path / "profile.json"
    result = CliRunner().invoke(cli, ["train", "transformer-en-it-small", "--data", str(data), *TINY_MODEL,
                                      "--vocab-size", "120", "--batch-tokens", "256", "--profile",
                                      "--profile-steps", "3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    profile = json.loads(out.read_text(encoding="utf-8"))
    assert profile["task"] == "translation" and profile["steps"] == 3 and profile["tokens_per_second"] > 0
    assert 0 < profile["mfu"] < 1 and 0 < profile["training_loss"] < 20
    operators = [o["operator"] for o in profile["operators"]]
    assert {"aten::mm", "aten::addmm"} & set(operators)  # the matmuls are among the step's largest
    assert 0.5 < sum(o["self_cpu_share"] for o in profile["operators"]) <= 1.0001
    assert "Self CPU" in result.output and "aten::" in result.output  # PyTorch's own table
    assert not list(scratch.iterdir())  # nothing left of the throw-away run


def test_optimisation_options_reach_the_optimizer_the_clipping_and_the_loss(tmp_path, monkeypatch):
    import zoo.training.loop as loop
    import zoo.translation.task as task

    seen = {}
    make, clip, smoothed = loop.make_optimizer, torch.nn.utils.clip_grad_norm_, task.smoothed_cross_entropy

    def spy_optimizer(*args, **kwargs):
        seen["optimizer"] = make(*args, **kwargs)
        return seen["optimizer"]

    def spy_clip(parameters, max_norm, *args, **kwargs):
        seen["clip_norm"] = max_norm
        return clip(parameters, max_norm, *args, **kwargs)

    def spy_loss(logits, targets, smoothing, *args, **kwargs):
        seen.setdefault("smoothing", set()).add(smoothing)
        return smoothed(logits, targets, smoothing, *args, **kwargs)

    monkeypatch.setattr(loop, "make_optimizer", spy_optimizer)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy_clip)
    monkeypatch.setattr(task, "smoothed_cross_entropy", spy_loss)
    data = write_tsv(tmp_path / "pairs.tsv")
    result = CliRunner().invoke(cli, ["train", "transformer-en-it-small", "--data", str(data), *TINY_MODEL,
                                      "--vocab-size", "120", "--batch-tokens", "256", "--eval-sentences", "4",
                                      "--eval-every", "1000", "--max-steps", "2", "-o", str(tmp_path / "run"),
                                      "--weight-decay", "0.37", "--clip-norm", "0.42", "--label-smoothing", "0.23",
                                      "--lr", "0.0021", "--beta2", "0.97"])
    assert result.exit_code == 0, result.output
    decayed, plain = seen["optimizer"].param_groups
    assert decayed["weight_decay"] == 0.37 and plain["weight_decay"] == 0.0  # vectors are not decayed
    assert decayed["betas"] == (0.9, 0.97) and decayed["lr"] <= 0.0021
    assert seen["clip_norm"] == 0.42 and seen["smoothing"] == {0.23, 0.0}  # training smooths; validation scores NLL


def test_epochs_and_max_minutes_end_the_run(tmp_path):
    data = write_tsv(tmp_path / "pairs.tsv")
    base = ["train", "transformer-en-it-small", "--data", str(data), *TINY_MODEL, "--vocab-size", "120",
            "--batch-tokens", "256", "--eval-sentences", "4", "--eval-every", "1000", "--average-last", "1"]
    two = CliRunner().invoke(cli, [*base, "--epochs", "2", "-o", str(tmp_path / "epochs")])
    assert two.exit_code == 0, two.output
    steps = json.loads((tmp_path / "epochs" / "manifest.json").read_text())["training"]["step"]
    assert re.search(rf"trained transformer-en-it-small: {steps} steps \(2(\.0+)? epochs\)", two.output), two.output
    assert steps > 2
    timed = CliRunner().invoke(cli, [*base, "--max-minutes", "0.02", "-o", str(tmp_path / "timed")])  # 1.2 s
    assert timed.exit_code == 0, timed.output
    training = json.loads((tmp_path / "timed" / "manifest.json").read_text())["training"]
    assert training["step"] < 30 * steps // 2  # far short of the default 30 epochs
    assert 1.2 <= training["seconds"] < 10
