"""Hugging Face Optimum runs zoo's `--format web` folder as it is:
``ORTModelForCausalLM.from_pretrained(FOLDER, subfolder="onnx", file_name=...)`` + ``generate()``.

Optimum's ONNX Runtime package needs transformers < 4.58 (zoo has 5.x) and brings the CPU
onnxruntime, so it lives in its own environment (``.venv-optimum``, made by ``.ci/install``);
each test exports with zoo here, runs ``tests/optimum_client.py`` with that interpreter and
compares Optimum's greedy tokens and first logits with PyTorch (fp32) and with greedy decoding
written against onnxruntime on the same file (q4). ``ZOO_OPTIMUM_PYTHON`` names the interpreter
(``.ci/run`` sets it, so CI never skips); without it the tests use ``.venv-optimum`` when present.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from conftest import REPO
from onnx_greedy import ort_greedy
from zoo.exporters.web.folder import VARIANTS

CLIENT = Path(__file__).with_name("optimum_client.py")
NEW_TOKENS = 8
SIZES = {"context_length": 64, "d_model": 32, "n_layers": 2, "attention.n_heads": 4, "mlp.d_ff": 64}
PROMPTS = [[464, 26182, 318, 257], [15496], [40, 588, 262, 8632, 286, 257, 1263]]


def optimum_python() -> Path:
    named = os.environ.get("ZOO_OPTIMUM_PYTHON")
    path = Path(named) if named else REPO / ".venv-optimum" / "bin" / "python"
    if not path.is_file():
        if named:
            pytest.fail(f"ZOO_OPTIMUM_PYTHON={named} does not exist; run .ci/install")
        pytest.skip("no Optimum environment: run .ci/install (or set ZOO_OPTIMUM_PYTHON)")
    return path


def run_optimum(folder: Path, file_name: str) -> dict:
    request = folder.parent / f"optimum-{file_name}.json"
    request.write_text(json.dumps({"prompts": PROMPTS, "new_tokens": NEW_TOKENS, "file_name": file_name}))
    done = subprocess.run([str(optimum_python()), str(CLIENT), str(folder), str(request)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def web_folder(tmp_path_factory):
    model = zoo.build("gpt2", seed=0, **SIZES).eval()
    out = tmp_path_factory.mktemp("optimum") / "gpt2-web"
    zoo.export(model, out, "web", variants=("fp32", "q4"), block_size=16)
    return model, out


def test_optimum_generates_zoos_tokens_from_the_web_folder(web_folder):
    model, out = web_folder
    answer = run_optimum(out, "model.onnx")
    assert answer["ids"] == PROMPTS
    for i, ids in enumerate(PROMPTS):
        with torch.inference_mode():
            want = zoo.generate(model, torch.tensor([ids]), max_new_tokens=NEW_TOKENS)[0].tolist()
            logits = model(torch.tensor([ids]))[0, -1].numpy()
        assert answer["tokens"][i] == want, f"prompt {i}"
        assert np.abs(np.asarray(answer["logits"][i], np.float32) - logits).max() < 1e-4
    for row, ids in zip(answer["batch"], PROMPTS):  # all prompts in one left-padded batch
        assert row[:len(ids) + 1] == answer["tokens"][PROMPTS.index(ids)][:len(ids) + 1]


def test_optimum_runs_the_q4_graph_like_onnxruntime(web_folder):
    _, out = web_folder
    answer = run_optimum(out, VARIANTS["q4"].file)
    for i, ids in enumerate(PROMPTS):
        tokens, logits = ort_greedy(out / VARIANTS["q4"].path, ids, NEW_TOKENS)
        assert answer["tokens"][i] == tokens, f"prompt {i}"
        assert np.abs(np.asarray(answer["logits"][i], np.float32) - logits).max() < 2e-3
