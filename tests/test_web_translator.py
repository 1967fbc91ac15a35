"""A zoo translator through `zoo export --format web`, in the clients Hugging Face runs
encoder-decoders with: transformers.js in Node and in headless Chromium (the page of
`zoo serve-web`), and Optimum's ORTModelForSeq2SeqLM.

References are independent of the clients: PyTorch (zoo's greedy search and the model's
logits) for fp32, and greedy decoding written against onnxruntime on the same files
(tests/onnx_greedy.py) for fp16, q4 and int8.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import zoo
from onnx_greedy import seq2seq_greedy
from synthetic_pairs import TINY_OVERRIDES, write_tsv
from test_optimum import optimum_python
from test_web import FP32_ATOL, SAME_FILE_ATOL, browser, node, node_modules
from zoo.cli import cli
from zoo.core.builder import build
from zoo.core.spec import load_spec
from zoo.errors import ExportError
from zoo.exporters.web import seq2seq
from zoo.exporters.web.folder import VARIANTS, check_folder
from zoo.exporters.web.server import make_server, serve_in_background
from zoo.training.run import train_run
from zoo.translation.search import Translator
from zoo.translation.train_config import TranslationConfig
from zoo.translation.vocabulary import BOS_ID, EOS_ID, Vocabulary

SENTENCES = ["Tom sees the red cat.", "She has the big book.", "He finds the new dog."]
OPTIMUM_CLIENT = Path(__file__).with_name("optimum_translator.py")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny translator run (its shared vocabulary is what the web folder's tokenizer holds)."""
    tmp = tmp_path_factory.mktemp("translator-web")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = TranslationConfig(model="transformer-en-it-small", data=str(write_tsv(tmp / "pairs.tsv")),
                               overrides=dict(TINY_OVERRIDES), vocab_size=120, batch_tokens=256, lr=3e-3,
                               warmup_steps=5, validation_fraction=0.05, test_fraction=0.05, checkpoint_every=1000,
                               eval_every=1000, eval_sentences=4, eval_pairs=20, log_every=100, max_steps=10)
    train_run(config, tmp / "run", progress=False)
    torch.set_num_threads(threads)
    return tmp / "run"


@pytest.fixture(scope="module")
def translator_web(run_dir):
    """Random weights with an untied head (a briefly trained tiny translator repeats one token,
    which would hide a wrong step) and pre-norm layers, which Marian does not have: the config
    is a stand-in. Every precision, with the run's vocabulary."""
    spec = load_spec(run_dir / "spec.yaml", {"tie_embeddings": False, "n_layers": 2, "n_decoder_layers": 2,
                                             "block.type": "pre_norm"})
    model = build(spec, seed=5).eval()
    out = run_dir.parent / "web"
    zoo.export(model, out, "web", variants=tuple(VARIANTS), block_size=16, tokenizer_dir=run_dir)
    return model, out, Vocabulary.load(run_dir)


def zoo_greedy(model, vocabulary, sentence: str) -> tuple[list[int], list[int], int, np.ndarray]:
    """(source ids, tokens as a client writes them: <s>, the translation, </s> unless cut at the
    limit; the limit; the first step's logits) from zoo's PyTorch greedy search."""
    translator = Translator(model, vocabulary)
    source = vocabulary.encode_source([sentence])[0]
    limit = translator.max_length(len(source))
    ids = translator.translate_ids([source], beam=1)[0]
    with torch.inference_mode():
        src = torch.tensor([source])
        logits = model.decode(torch.tensor([[BOS_ID]]), model.encode(src, torch.ones_like(src)), torch.ones_like(src))
    return source, [BOS_ID, *ids, *([EOS_ID] if len(ids) < limit else [])], limit, logits[0, -1].numpy()


def test_zoo_export_of_a_run_writes_what_the_seq2seq_clients_read(run_dir, tmp_path):
    out = tmp_path / "en-it-web"
    result = CliRunner().invoke(cli, ["export", str(run_dir), "--format", "web", "--variants", "fp32", "-o", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "marian" and config["is_encoder_decoder"] and "zoo" not in config  # Marian exactly
    assert config["decoder_start_token_id"] == BOS_ID and config["eos_token_id"] == EOS_ID
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["decoder_start_token_id"] == BOS_ID and generation["max_length"] == 256
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["encoder_model.onnx"] == ["input_ids", "attention_mask"]
    decoder_inputs = manifest["inputs"]["decoder_model_merged.onnx"]
    assert decoder_inputs[:3] == ["encoder_attention_mask", "input_ids", "encoder_hidden_states"]
    assert decoder_inputs[3:7] == [f"past_key_values.0.{side}.{part}" for side in ("decoder", "encoder")
                                   for part in ("key", "value")]
    assert decoder_inputs[-1] == "use_cache_branch"
    assert manifest["variants"]["fp32"]["merge_check"]["max_abs_diff"] <= 1e-5
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out)(SENTENCES)["input_ids"] == Vocabulary.load(run_dir).encode_source(SENTENCES)
    assert sorted(p.name for p in (out / "onnx").iterdir()) == ["decoder_model_merged.onnx", "encoder_model.onnx"]
    assert check_folder(out, need_tokenizer=True) == ["fp32"]


def test_transformers_js_in_node_translates_as_zoo_in_every_precision(translator_web):
    model, out, vocabulary = translator_web
    references = [zoo_greedy(model, vocabulary, s) for s in SENTENCES]
    request = out.parent / "translate.json"
    request.write_text(json.dumps({"sources": SENTENCES, "new_tokens": [r[2] for r in references],
                                   "dtypes": list(VARIANTS)}))
    answer = node("node_translator.mjs", str(out), str(request))
    assert answer["ids"] == [r[0] for r in references]  # transformers.js's tokenizer encodes as zoo's vocabulary
    for (source, tokens, limit, logits), got in zip(references, answer["dtypes"]["fp32"]):
        assert got["tokens"] == tokens
        np.testing.assert_allclose(got["logits"], logits, atol=FP32_ATOL, rtol=0)
    assert answer["texts"] == vocabulary.decode_target([t[1:-1] if t[-1] == EOS_ID else t[1:]
                                                        for _, t, _, _ in references])
    for dtype in ("fp16", "q4", "int8"):
        for (source, _, limit, _), got in zip(references, answer["dtypes"][dtype]):
            want, first = seq2seq_greedy(out, VARIANTS[dtype].suffix, source, limit, BOS_ID, EOS_ID)
            assert got["tokens"] == want, dtype
            np.testing.assert_allclose(got["logits"], first, atol=SAME_FILE_ATOL[dtype], rtol=0)


def test_optimum_translates_as_zoo_alone_and_in_a_padded_batch(translator_web):
    model, out, vocabulary = translator_web
    references = [zoo_greedy(model, vocabulary, s) for s in SENTENCES]
    request = out.parent / "optimum-translate.json"
    request.write_text(json.dumps({"sources": [r[0] for r in references],
                                   "new_tokens": min(r[2] for r in references)}))
    done = subprocess.run([str(optimum_python()), str(OPTIMUM_CLIENT), str(out), str(request)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["merged"]
    limit = min(r[2] for r in references)
    want = [t[: limit + 1] for _, t, _, _ in references]  # Optimum was given the shortest limit
    assert answer["tokens"] == want and answer["batch"] == want


def test_the_page_translates_in_chromium(translator_web):
    model, out, vocabulary = translator_web
    source, tokens, limit, _ = zoo_greedy(model, vocabulary, SENTENCES[0])
    server = make_server(out, "127.0.0.1", 0, library=node_modules(), quiet=True)
    serve_in_background(server)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        answer = browser(f"{url}/?auto=1&threads=2&dtype=q4&max_new_tokens={limit}&prompt=Tom%20sees%20the%20red%20cat.")
    finally:
        server.shutdown()
        server.server_close()
    assert answer["prompt"] == source
    want, _ = seq2seq_greedy(out, VARIANTS["q4"].suffix, source, limit, BOS_ID, EOS_ID)
    assert answer["tokens"] == [t for t in want[1:] if t != EOS_ID]
    assert answer["tokens_per_second"] > 0 or len(answer["tokens"]) < 2  # timed from the second token
    assert not answer["console_errors"], answer["console_errors"]


def test_a_merged_decoder_that_reads_the_first_steps_past_is_refused(run_dir, tmp_path, monkeypatch):
    """Optimum's first step feeds one junk position as the past: a merged decoder that used it
    would translate wrongly there, and the merge check must say so before anything is written."""
    from onnx import helper

    monkeypatch.setattr(seq2seq, "past_if_cached", lambda pasts, used: [
        helper.make_node("Identity", [name], [used[name]], name=used[name]) for name in pasts])
    out = tmp_path / "web"
    result = CliRunner().invoke(cli, ["export", str(run_dir), "--format", "web", "--variants", "fp32", "-o", str(out)])
    last = result.output.replace("\r", "\n").strip().splitlines()[-1]  # after the progress bar
    assert result.exit_code != 0 and not out.exists()
    assert last.startswith("error: decoder_model_merged.onnx does not compute what zoo's decoder graphs compute")


def test_a_translator_folder_missing_half_a_precision_is_reported(translator_web, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(translator_web[1], folder)
    (folder / "onnx" / "decoder_model_merged_q4.onnx").unlink()
    with pytest.raises(ExportError, match="has the q4 encoder-decoder only in part: decoder_model_merged_q4.onnx"):
        check_folder(folder)
