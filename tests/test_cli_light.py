"""The command line stays light: help and ``zoo list`` never import torch (checked in a fresh
interpreter), and the training-resume rules work without it too."""

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "onnx", "onnxruntime", "safetensors", "matplotlib")

PROBE = """
import json, sys
from zoo.cli import main
args, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.argv = ["zoo", *args]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
print(json.dumps({"code": code, "heavy": [m for m in heavy if m in sys.modules]}), file=sys.stderr)
"""


def run_light(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("ZOO_PLUGINS", "ZOO_CATALOG", "ZOO_REGISTRY")}
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(args)), json.dumps(HEAVY)],
                          capture_output=True, text=True, env=env, timeout=120)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["code"], report["heavy"], done.stdout


@pytest.mark.parametrize("args", [["--help"], ["list"], ["build", "--help"], ["train", "--help"],
                                  ["show", "--help"], ["generate", "--help"], ["--version"]])
def test_help_and_list_import_no_torch(args):
    code, heavy, out = run_light(*args)
    assert code == 0, out
    assert heavy == [], f"zoo {' '.join(args)} imported {heavy}"


def test_list_shows_names_families_and_descriptions():
    code, heavy, out = run_light("list")
    assert code == 0 and heavy == []
    assert out.splitlines()[0].split() == ["model", "family", "description"]
    for name, family in [("gpt2 ", "decoder"), ("gpt2-xl", "decoder"), ("transformer-en-it-small", "encoder-decoder")]:
        assert any(line.startswith(name) and family in line for line in out.splitlines()), out


def test_python_m_zoo_cli_runs():
    done = subprocess.run([sys.executable, "-m", "zoo.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Commands:" in done.stdout and "list" in done.stdout


# --------------------------------------------------------------------------- resume rules

def test_resume_keeps_the_trajectory_and_moves_the_budget(tmp_path):
    from zoo.errors import ZooError
    from functools import partial

    from zoo.training.resume import run_config
    from zoo.translation.train_config import TranslationConfig as TrainConfig

    run_config = partial(run_config, TrainConfig)

    data = tmp_path / "pairs.tsv"
    data.write_text("a\tb\n")
    options = {"lr": 1e-3, "max_steps": 10, "epochs": 30}
    first = run_config("transformer-en-it-small", str(data), {}, options, set())
    assert first.data == str(data.resolve()) and first.max_steps == 10
    first.save(tmp_path)
    again = run_config("transformer-en-it-small", str(data), {}, {**options, "max_steps": 20, "lr": 5.0},
                       {"max_steps"}, resume=tmp_path)  # lr left at its default: ignored
    assert again.max_steps == 20 and again.lr == 1e-3
    with pytest.raises(ZooError, match="--lr differs from the run's setting"):
        run_config("transformer-en-it-small", str(data), {}, {**options, "lr": 5.0}, {"lr"}, resume=tmp_path)
    with pytest.raises(ZooError, match="--set differs"):
        run_config("transformer-en-it-small", str(data), {"d_model": 64}, options, set(), resume=tmp_path)
    with pytest.raises(ZooError, match="trains transformer-en-it-small, not gpt2"):
        run_config("gpt2", str(data), {}, options, set(), resume=tmp_path)
    alone = run_config(None, None, {}, {**options, "max_steps": 30}, {"max_steps"}, resume=tmp_path)
    assert (alone.model, alone.data, alone.max_steps) == ("transformer-en-it-small", str(data.resolve()), 30)
    with pytest.raises(ZooError, match="a new run needs MODEL and --data"):
        run_config(None, str(data), {}, options, set())
    assert isinstance(again, TrainConfig)
