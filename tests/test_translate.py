"""Greedy and beam search, the translator, scoring, and the translate/evaluate commands."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import zoo
from synthetic_pairs import TINY_OVERRIDES, one_thread, synthetic_pairs, write_tsv
from zoo.core.model_dir import save_model
from zoo.cli import cli
from zoo.translation.evaluate import edit_distance, score
from zoo.translation.vocabulary import EOS_ID, PAD_ID, Vocabulary
from zoo.translation.train_config import TranslationConfig as TrainConfig
from zoo.translation.search import Translator, beam_search, greedy_search, load_translator

single_thread = pytest.fixture(autouse=True)(one_thread)


def tiny_model(vocab_size: int = 40, seed: int = 0):
    return zoo.build("transformer-en-it-small", seed=seed, vocab_size=vocab_size, **TINY_OVERRIDES)


def source_batch(vocab_size: int = 40):
    """Four right-padded sources of different lengths, each ending in </s>."""
    gen = torch.Generator().manual_seed(1)
    rows = [torch.randint(4, vocab_size, (n,), generator=gen).tolist() + [EOS_ID] for n in (7, 3, 5, 1)]
    src = torch.full((4, 8), PAD_ID)
    for i, row in enumerate(rows):
        src[i, : len(row)] = torch.tensor(row)
    return src, (src != PAD_ID).long()


class ProtocolOnly:
    """Exposes nothing but the encoder-decoder protocol the search functions may use."""

    def __init__(self, model):
        self._model = model

    def encode(self, src_ids, src_mask):
        return self._model.encode(src_ids, src_mask)

    def decode(self, tgt_ids, memory, src_mask, tgt_mask=None, cache=None, last_only=True):
        return self._model.decode(tgt_ids, memory, src_mask, tgt_mask, cache=cache, last_only=last_only)

    def new_cache(self, batch, capacity):
        return self._model.new_cache(batch, capacity)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_with_and_without_cache_is_identical(seed):
    model = tiny_model(seed=seed)
    src, mask = source_batch()
    cached = greedy_search(model, src, mask, max_len=12, use_cache=True)
    uncached = greedy_search(model, src, mask, max_len=12, use_cache=False)
    assert cached == uncached
    assert any(len(out) > 1 for out in cached)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_one_equals_greedy(seed):
    model = ProtocolOnly(tiny_model(seed=seed))
    src, mask = source_batch()
    assert beam_search(model, src, mask, max_len=12, beam=1, alpha=0.6) == greedy_search(model, src, mask, 12)


def test_batched_beam_search_equals_one_sentence_at_a_time():
    model = tiny_model(seed=3)
    src, mask = source_batch()
    batched = beam_search(model, src, mask, max_len=10, beam=4)
    single = [beam_search(model, src[i : i + 1, : int(mask[i].sum())], mask[i : i + 1, : int(mask[i].sum())],
                          max_len=10, beam=4)[0] for i in range(4)]
    assert batched == single
    assert all(EOS_ID not in out for out in batched)


def test_beam_search_finds_a_hypothesis_at_least_as_likely_as_greedy():
    model = tiny_model(seed=4)
    src, mask = source_batch()

    def log_prob(i, tokens):
        tgt = torch.tensor([[1, *tokens]])
        logits = model.decode(tgt, model.encode(src[i : i + 1], mask[i : i + 1]), mask[i : i + 1])
        logp = logits.log_softmax(-1)[0]
        targets = [*tokens, EOS_ID] if len(tokens) < 16 else tokens
        return sum(logp[t, tok].item() for t, tok in enumerate(targets))

    greedy = greedy_search(model, src, mask, max_len=16)
    beam = beam_search(model, src, mask, max_len=16, beam=6, alpha=0.0)
    for i in range(4):
        assert log_prob(i, beam[i]) >= log_prob(i, greedy[i]) - 1e-4


# --------------------------------------------------------------------------- scoring


def test_edit_distance_and_scores():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("a b c".split(), "a c".split()) == 1
    refs = [["Il gatto è rosso.", "Il gatto è rosso!"], ["Vado a casa."]]
    perfect, single = score(["Il gatto è rosso.", "Vado a casa."], refs)
    assert perfect.bleu == pytest.approx(100) and perfect.chrf == pytest.approx(100)
    assert perfect.cer == 0 and perfect.wer == 0
    assert single.bleu < 100 and single.cer > 0  # the second reference of the first source differs
    worse = score(["Il cane è blu.", "Vado."], refs).multi_reference
    assert worse.bleu < perfect.bleu and worse.cer > 0 and worse.wer > 0


def test_single_reference_headline_is_sacrebleus_corpus_bleu_over_the_pairs():
    from sacrebleu.metrics import BLEU, CHRF

    refs = [["Il gatto è rosso.", "Il gatto è rosso!", "Un gatto rosso."], ["Vado a casa."], ["Lei ha il libro."]]
    hyps = ["Il gatto è rosso.", "Vado a casa mia.", "Ha il libro nuovo."]
    views = score(hyps, refs)
    pair_hyps = ["Il gatto è rosso."] * 3 + ["Vado a casa mia.", "Ha il libro nuovo."]
    pair_refs = ["Il gatto è rosso.", "Il gatto è rosso!", "Un gatto rosso.", "Vado a casa.", "Lei ha il libro."]
    bleu, chrf = BLEU(), CHRF()
    assert views.single_reference.bleu == pytest.approx(bleu.corpus_score(pair_hyps, [pair_refs]).score)
    assert views.single_reference.chrf == pytest.approx(chrf.corpus_score(pair_hyps, [pair_refs]).score)
    assert views.single_reference.bleu_signature == str(bleu.get_signature())
    assert views.single_reference.bleu_signature.startswith("nrefs:1|")
    assert views.single_reference.chrf_signature == str(chrf.get_signature())
    assert views.multi_reference.bleu_signature.startswith("nrefs:var|")
    assert views.multi_reference.bleu > views.single_reference.bleu
    assert score(hyps, refs)[0] == views.multi_reference  # the order validation has always read


# --------------------------------------------------------------------------- translator and commands


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as zoo train leaves it, with a random tiny model."""
    root = tmp_path_factory.mktemp("translate")
    data = write_tsv(root / "pairs.tsv")
    pairs = synthetic_pairs()
    vocab = Vocabulary.train([en for en, _ in pairs], [it for _, it in pairs], 80)
    spec = zoo.load_spec("transformer-en-it-small", {**TINY_OVERRIDES, "vocab_size": vocab.size})
    out = root / "run"
    save_model(zoo.build(spec, seed=0), spec, out)
    vocab.save(out)
    TrainConfig(data=str(data), overrides=TINY_OVERRIDES, vocab_size=80, validation_fraction=0.1,
                test_fraction=0.1).save(out)
    return out


def test_translator_keeps_input_order_and_matches_single_sentence_calls(run_dir):
    translator = load_translator(run_dir)
    sentences = ["Tom sees the red cat.", "She has the new book.", "He buys the old dog.", "Mary finds the hat."]
    batched = translator.translate(sentences, beam=2, batch_size=3)
    assert batched == [translator.translate([s], beam=2)[0] for s in sentences]


def test_translate_command_from_arguments_and_stdin(run_dir):
    runner = CliRunner()
    args = runner.invoke(cli, ["translate", str(run_dir), "Tom sees the red cat.", "She has the new book."])
    assert args.exit_code == 0, args.output
    assert len(args.output.splitlines()) == 2
    stdin = runner.invoke(cli, ["translate", str(run_dir)],
                          input="Tom sees the red cat.\n\nShe has the new book.\n")
    assert stdin.exit_code == 0, stdin.output
    lines = stdin.output.splitlines()
    assert lines[0] == args.output.splitlines()[0] and lines[1] == "" and lines[2] == args.output.splitlines()[1]
    beam = runner.invoke(cli, ["translate", str(run_dir), "--beam", "3", "--length-penalty", "1.0", "Tom sees the red cat."])
    assert beam.exit_code == 0 and len(beam.output.splitlines()) == 1


def test_translate_and_evaluate_refuse_a_missing_run_directory(tmp_path):
    runner = CliRunner()
    for command in (["translate", str(tmp_path / "nope"), "Hello."], ["evaluate", str(tmp_path / "nope")]):
        result = runner.invoke(cli, command)
        assert result.exit_code == 1
        assert result.output.startswith(f"error: {tmp_path / 'nope'}: no such run directory")
        assert "Traceback" not in result.output


def test_evaluate_command_reports_scores_and_writes_samples(run_dir):
    result = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--split", "test", "--beam", "2", "--samples", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    headline = next(i for i, line in enumerate(lines) if line.startswith("  BLEU "))
    assert lines[headline].split()[2].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.")
    assert lines[headline + 1].startswith("  chrF ") and "nrefs:1|" in lines[headline + 1]
    assert lines[headline + 3].startswith("  multi-reference (nrefs:var")
    metrics = json.loads((run_dir / "eval" / "test-beam2.json").read_text(encoding="utf-8"))
    assert metrics["split"] == "test" and metrics["sources"] > 0 and metrics["limit"] is None
    fields = {"bleu", "chrf", "cer", "wer", "bleu_signature", "chrf_signature"}
    assert set(metrics["single_reference"]) == set(metrics["multi_reference"]) == fields
    assert metrics["single_reference"]["bleu_signature"] == lines[headline].split()[2]
    assert metrics["single_reference"]["bleu"] == pytest.approx(float(lines[headline].split()[1]), abs=0.01)
    rows = (run_dir / "eval" / "test-beam2.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "source\thypothesis\treferences" and len(rows) == metrics["sources"] + 1


def test_onnx_runtime_translation_matches_torch(run_dir, tmp_path):
    from zoo.core.model_dir import load_model
    from zoo.exporters.onnx import runtime
    from zoo.core.export import export_model

    model = load_model(run_dir)
    exported = tmp_path / "onnx"
    export_model(model, model.spec, exported, "onnx", kv_cache=True, verify=False, tokenizer_dir=run_dir)
    assert (exported / "tokenizer.json").is_file()
    sentences = ["Tom sees the red cat.", "She has the new book."]
    torch_out = load_translator(run_dir).translate(sentences, beam=2)
    onnx = Translator(runtime.load(exported), Vocabulary.load(exported))
    assert onnx.translate(sentences, beam=2) == torch_out
    result = CliRunner().invoke(cli, ["translate", str(exported), "--runtime", "onnxruntime", *sentences])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-2:] == load_translator(run_dir).translate(sentences)
    evaluated = {}
    for label, args in (("torch", []), ("onnx", ["--onnx", str(exported)])):
        result = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--beam", "1", "--samples", "0", *args])
        assert result.exit_code == 0, result.output
        evaluated[label] = json.loads((run_dir / "eval" / ("test-greedy.json" if label == "torch" else
                                                            "test-greedy-onnx-onnx.json")).read_text(encoding="utf-8"))
    assert evaluated["onnx"]["single_reference"] == evaluated["torch"]["single_reference"]
    quantized = tmp_path / "int8"  # zoo evaluate --onnx on a quantized export, through the command line
    result = CliRunner().invoke(cli, ["export", str(run_dir), "--format", "onnx", "--kv-cache", "--quantize", "int8",
                                      "-o", str(quantized)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--beam", "1", "--samples", "0", "--onnx",
                                      str(quantized)])
    assert result.exit_code == 0, result.output
    scored = json.loads((run_dir / "eval" / "test-greedy-onnx-int8.json").read_text(encoding="utf-8"))
    assert scored["decoding"] == "greedy-onnx-int8" and scored["sources"] == evaluated["torch"]["sources"]
    assert abs(scored["single_reference"]["chrf"] - evaluated["torch"]["single_reference"]["chrf"]) < 15


def test_evaluate_limit_takes_a_seeded_sample_across_the_split(run_dir):
    runner = CliRunner()
    full = runner.invoke(cli, ["evaluate", str(run_dir), "--split", "train", "--beam", "1", "--samples", "0"])
    assert full.exit_code == 0, full.output
    every = [row.split("\t")[0] for row in (run_dir / "eval" / "train-greedy.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    picked = {}
    for seed in (0, 0, 1):
        result = runner.invoke(cli, ["evaluate", str(run_dir), "--beam", "1", "--split", "train", "--limit", "30", "--seed", str(seed),
                                     "--samples", "0"])
        assert result.exit_code == 0, result.output
        assert f"30 English sources (sampled from {len(every):,}, seed {seed})" in result.output
        rows = (run_dir / "eval" / "train-greedy.tsv").read_text(encoding="utf-8").splitlines()[1:]
        picked.setdefault(seed, []).append([row.split("\t")[0] for row in rows])
        metrics = json.loads((run_dir / "eval" / "train-greedy.json").read_text(encoding="utf-8"))
        assert (metrics["limit"], metrics["seed"], metrics["sources"]) == (30, seed, 30)
    assert picked[0][0] == picked[0][1] and picked[0][0] != picked[1][0]  # same seed, same sample
    positions = [every.index(source) for source in picked[0][0]]
    assert positions == sorted(positions)  # the split's order
    third = len(every) // 3
    assert min(positions) < third and max(positions) >= 2 * third
    assert any(third <= p < 2 * third for p in positions)


def test_evaluate_data_file_scores_all_its_pairs(run_dir, tmp_path):
    pairs = [("Tom sees the red cat.", "Tom vede il gatto rosso."), ("She has the new book.", "Lei ha il libro nuovo."),
             ("She has the new book.", "Ha il libro nuovo."), ("He buys the old dog.", "Lui compra il cane vecchio.")]
    data = write_tsv(tmp_path / "mine.tsv", pairs)
    result = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--data", str(data), "--beam", "1", "--samples", "0"])
    assert result.exit_code == 0, result.output
    assert f"{data}: 3 English sources, 4 pairs, greedy" in result.output
    metrics = json.loads((run_dir / "eval" / "mine-greedy.json").read_text(encoding="utf-8"))
    assert (metrics["name"], metrics["split"], metrics["data"]) == ("mine", None, str(data.resolve()))
    assert metrics["single_reference"]["bleu_signature"].startswith("nrefs:1|")
    rows = (run_dir / "eval" / "mine-greedy.tsv").read_text(encoding="utf-8").splitlines()
    hypothesis = load_translator(run_dir).translate(["She has the new book."], beam=1)[0]  # greedy, as --beam 1
    assert rows[2].split("\t") == ["She has the new book.", hypothesis, "Lei ha il libro nuovo.", "Ha il libro nuovo."]


def test_evaluate_data_refuses_a_missing_or_bad_file_and_split(run_dir, tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.tsv"
    bad.write_text("Hello.\tCiao.\nno tab here\n", encoding="utf-8")
    empty = tmp_path / "empty.tsv"
    empty.write_text("", encoding="utf-8")
    for path, message in ((tmp_path / "nope.tsv", "no such data file"), (bad, "bad.tsv:2: malformed line"),
                          (empty, "no sentence pairs found")):
        result = runner.invoke(cli, ["evaluate", str(run_dir), "--data", str(path)])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and message in result.output
        assert not list((run_dir / "eval").glob(f"{path.stem}-*"))
    both = runner.invoke(cli, ["evaluate", str(run_dir), "--data", str(bad), "--split", "test"])
    assert both.exit_code == 2 and "--split" in both.output and "--data" in both.output


def test_zoo_evaluate_from_python_scores_as_the_command_does(run_dir):
    """zoo.evaluate(RUN_DIR) is what `zoo evaluate` prints: the same sample, translations and scores."""
    command = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--split", "train", "--beam", "1", "--limit", "12",
                                       "--seed", "3", "--samples", "0"])
    assert command.exit_code == 0, command.output
    written = json.loads((run_dir / "eval" / "train-greedy.json").read_text(encoding="utf-8"))
    result = zoo.evaluate(run_dir, split="train", beam=1, limit=12, seed=3, progress=False)
    assert result.result.to_dict() | {"seconds": 0, "sentences_per_second": 0} == \
        written | {"seconds": 0, "sentences_per_second": 0}
    assert len(result.sources) == len(result.hypotheses) == 12 and result.total > 12
    assert result.path == run_dir / "eval" / "train-greedy.json" and result.tsv.is_file()
    with pytest.raises(TypeError, match="unexpected keyword argument 'beams'"):
        zoo.evaluate(run_dir, beams=2)
