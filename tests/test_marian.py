"""A zoo translator as Hugging Face's MarianMTModel: the channel permutation that maps the
positional tables, export of a trained run directory, and transformers running what was written."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import zoo
from synthetic_pairs import TINY_OVERRIDES, one_thread, write_tsv
from zoo.cli import cli
from zoo.core.builder import build
from zoo.core.spec import load_spec
from zoo.errors import ZooError
from zoo.exporters.hf.translator import marian_inexact
from zoo.hf.formats import checkpoint_format
from zoo.hf.formats import to_hf_model
from zoo.plugins.checkpoints.marian import stream_order
from zoo.plugins.positional.sinusoidal import sinusoid_table
from zoo.translation.search import greedy_search, load_translator
from zoo.translation.train_config import TranslationConfig as TrainConfig
from zoo.training.run import train_run as train
from zoo.translation.vocabulary import BOS_ID, EOS_ID, PAD_ID

single_thread = pytest.fixture(autouse=True)(one_thread)
SENTENCES = ["Tom sees the red cat.", "She has the big book.", "Mary wants the old hat.", "He finds the new dog."]
ATOL = 1e-4


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny translator trained for a few dozen steps, and its ``zoo export RUN_DIR --format hf``."""
    tmp = tmp_path_factory.mktemp("marian")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = TrainConfig(model="transformer-en-it-small", data=str(write_tsv(tmp / "pairs.tsv")),
                         overrides=dict(TINY_OVERRIDES), vocab_size=120, batch_tokens=256, lr=3e-3, warmup_steps=10,
                         validation_fraction=0.05, test_fraction=0.05, checkpoint_every=1000, eval_every=1000,
                         eval_sentences=8, eval_pairs=40, log_every=100, max_steps=60)
    train(config, tmp / "run", progress=False)
    torch.set_num_threads(threads)
    result = run("export", tmp / "run", "--format", "hf", "-o", tmp / "hf")
    assert result.exit_code == 0, result.output
    return tmp / "run", tmp / "hf"


def marian_table(n_positions: int, d_model: int) -> torch.Tensor:
    """The sinusoid table (n_positions, d_model) a transformers ``MarianMTModel`` holds once made:
    the independent reference for the channel permutation."""
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(vocab_size=8, d_model=d_model, encoder_layers=1, decoder_layers=1, encoder_attention_heads=1,
                          decoder_attention_heads=1, encoder_ffn_dim=4, decoder_ffn_dim=4, pad_token_id=0,
                          decoder_start_token_id=0, max_position_embeddings=n_positions)
    return MarianMTModel(config).model.encoder.embed_positions.weight.detach()


def test_the_stream_permutation_turns_the_zoo_sinusoid_table_into_marians():
    for d_model in (2, 8, 32, 256):
        perm = stream_order(SimpleNamespace(d_model=d_model))
        assert sorted(perm.tolist()) == list(range(d_model))  # a permutation of the channels
        ours = sinusoid_table(torch.arange(64), d_model)  # (64, d): sin, cos interleaved
        torch.testing.assert_close(ours[:, perm], marian_table(64, d_model), atol=2e-5, rtol=0)
        if d_model > 2:
            assert not torch.allclose(ours, marian_table(64, d_model), atol=1e-2)  # the layouts do differ


@pytest.mark.parametrize("eps, tied", [(1e-5, True), (1e-5, False), (1e-6, True)])
def test_a_permuted_translator_gives_marians_logits(eps, tied):
    """Random weights, every d_model channel permuted: the mapping is exact up to float rounding
    when the layer norm eps is Marian's, and within tolerance with the catalog's 1e-6."""
    spec = load_spec("transformer-en-it-small", {**TINY_OVERRIDES, "n_layers": 2, "n_decoder_layers": 2,
                                                 "vocab_size": 50, "norm.eps": eps, "tie_embeddings": tied})
    assert bool(marian_inexact(spec)) == (eps != 1e-5)
    model = build(spec, seed=3).eval()
    marian = to_hf_model(model, checkpoint_format("marian", "test"))
    src = torch.randint(4, 50, (2, 9))
    src[1, 5:] = PAD_ID
    tgt = torch.randint(4, 50, (2, 6))
    tgt[:, 0] = BOS_ID
    mask = (src != PAD_ID).long()
    with torch.inference_mode():
        ours = model(src, tgt, mask)
        theirs = marian(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
    torch.testing.assert_close(ours, theirs, atol=2e-5 if eps == 1e-5 else ATOL, rtol=0)


def test_a_marian_directory_reads_back_into_a_zoo_translator(exported):
    """The marian format both ways: zoo.load on the exported MarianMTModel directory gives a
    translator (Marian's eps, 1e-5) with the run's weights and, within that eps, its logits."""
    run_dir, hf_dir = exported
    ours, read = zoo.load(run_dir), zoo.load(hf_dir)
    assert read.spec.family == "encoder-decoder" and read.spec.norm.options.eps == 1e-5
    assert read.spec.n_layers == ours.spec.n_layers and read.spec.block.type == "post_norm"
    for name, tensor in ours.state_dict().items():
        assert torch.equal(read.state_dict()[name], tensor), name  # the permutation undone exactly
    src = torch.tensor([[5, 9, 14, 22, EOS_ID]])
    tgt = torch.tensor([[BOS_ID, 7, 11]])
    with torch.inference_mode():
        torch.testing.assert_close(read(src, tgt), ours(src, tgt), atol=ATOL, rtol=0)


def test_a_marian_checkpoint_with_a_logit_bias_is_refused(exported, tmp_path):
    """final_logits_bias has no place in a zoo translator: read only when it is zero, never dropped."""
    from safetensors.torch import load_file, save_file

    _, hf_dir = exported
    copy = tmp_path / "biased"
    shutil.copytree(hf_dir, copy)
    tensors = load_file(copy / "model.safetensors")
    tensors["final_logits_bias"] = torch.full_like(tensors["final_logits_bias"], 0.5)
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ZooError, match="final_logits_bias is not zero"):
        zoo.load(copy)


def hf_greedy(model, batch, steps: int) -> list[list[int]]:
    out = model.generate(**batch, max_new_tokens=steps, do_sample=False, num_beams=1).tolist()
    return [row[1:row.index(EOS_ID)] if EOS_ID in row else row[1:] for row in out]


def test_transformers_loads_the_export_and_translates_as_zoo_does(exported):
    from transformers import AutoTokenizer, MarianMTModel

    run_dir, hf_dir = exported
    manifest = json.loads((hf_dir / "manifest.json").read_text())
    assert manifest["architecture"] == "MarianMTModel" and manifest["verification"]["max_abs_diff"] <= ATOL
    model = MarianMTModel.from_pretrained(hf_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    translator = load_translator(run_dir)
    assert model.config.decoder_start_token_id == BOS_ID and model.config.scale_embedding

    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")  # right padding, </s> at the end
    assert [ids[:n] for ids, n in zip(batch.input_ids.tolist(), batch.attention_mask.sum(1).tolist())] \
        == translator.vocabulary.encode_source(SENTENCES)
    ours = greedy_search(translator.model, batch.input_ids, batch.attention_mask, 12)
    with torch.inference_mode():
        assert hf_greedy(model, batch, 12) == ours  # greedy tokens identical
        tgt = torch.tensor([[BOS_ID, *row[:4]] for row in ours])  # (B, 5): teacher-forced prefixes
        theirs = model(**batch, decoder_input_ids=tgt).logits
        torch.testing.assert_close(translator.model(batch.input_ids, tgt, batch.attention_mask), theirs,
                                   atol=ATOL, rtol=0)

    zoo_text = run("translate", run_dir, "--beam", "1", *SENTENCES)
    assert zoo_text.exit_code == 0, zoo_text.output
    hf_text = []
    for sentence in SENTENCES:  # zoo translate's length limit is per sentence: 1.5 x source + 10 tokens
        one = tokenizer(sentence, return_tensors="pt")
        limit = translator.max_length(one.input_ids.shape[1])
        with torch.inference_mode():
            hf_text += tokenizer.batch_decode(model.generate(**one, max_new_tokens=limit), skip_special_tokens=True)
    assert hf_text == zoo_text.stdout.splitlines()


def test_an_fp16_export_loads_back_as_written(exported, tmp_path):
    run_dir, _ = exported
    result = run("export", run_dir, "--format", "hf", "--dtype", "fp16", "-o", tmp_path / "fp16")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "fp16" / "manifest.json").read_text())
    assert manifest["dtype"] == "fp16" and manifest["verification"]["weights"] == "as written"
    from transformers import MarianMTModel

    model = MarianMTModel.from_pretrained(tmp_path / "fp16").eval()  # transformers reads what was written
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    fp32 = MarianMTModel.from_pretrained(exported[1]).eval()
    src = torch.tensor([[5, 9, 14, 22, EOS_ID]])
    tgt = torch.tensor([[BOS_ID, 7, 11]])
    with torch.inference_mode():
        half = model.float()(input_ids=src, decoder_input_ids=tgt).logits
        full = fp32(input_ids=src, decoder_input_ids=tgt).logits
    assert (half - full).abs().max() < 0.05  # fp16 weights: rounding, not a different model
    assert (full - full.roll(1, -1)).abs().max() > 0.5  # the logits vary: the check is not vacuous


def test_zoo_verify_run_dir_against_hf_passes(exported):
    run_dir, _ = exported
    result = run("verify", run_dir, "--against", "hf", "--steps", 8)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("transformer-en-it-small vs transformers MarianMTModel")
    assert any("greedy 8 steps vs generate()" in line and "tokens identical" in line for line in lines)
    assert lines[-1] == "PASS"


def test_what_cannot_become_a_marian_model_is_refused_in_one_line(exported, tmp_path):
    run_dir, _ = exported
    per_language = tmp_path / "per-language"
    shutil.copytree(run_dir, per_language, ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copyfile(run_dir / "tokenizer.json", per_language / "tokenizer.target.json")
    cases = [
        (("export", per_language), "per-language vocabulary"),
        (("export", "transformer-en-it-small", "--set", "block=pre_norm"), "block.type 'pre_norm'"),
        (("export", "transformer-en-it-small", "--set", "positional=rotary"), "positional.type 'rotary'"),
        (("export", "transformer-en-it-small", "--set", "n_layers=1", "--set", "n_decoder_layers=1"),
         "vocabulary lives in its run directory"),
    ]
    for args, words in cases:
        result = run(*args, "--format", "hf", "-o", tmp_path / "out")
        assert result.exit_code != 0 and words in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
        assert not (tmp_path / "out").exists()


def test_the_python_api_verifies_a_translation_run_as_the_cli_does(exported):
    """zoo.verify(zoo.load(RUN_DIR)): the loaded model knows its run, whose vocabulary MarianMTModel reads."""
    run_dir, _ = exported
    model = zoo.load(run_dir)
    assert model.loaded_from == run_dir
    report = zoo.verify(model, steps=8)
    assert report.passed
    assert report.lines()[0].startswith("transformer-en-it-small vs transformers MarianMTModel")
    del model.loaded_from  # a translator built in memory has no vocabulary to verify with
    with pytest.raises(ZooError, match="a translator is verified with its training run's vocabulary"):
        zoo.verify(model)
