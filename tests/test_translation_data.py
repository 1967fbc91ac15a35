"""Reading parallel data, the leak-free split, token-count batches and subword vocabularies."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from synthetic_pairs import TINY_MODEL, one_thread, synthetic_pairs, write_tsv
from zoo.cli import cli
from zoo.translation.data import (SentencePair, TokenBatches, group_references, read_pairs, sample_sources, split_key,
                                  split_pairs)
from zoo.errors import DataError
from zoo.translation.vocabulary import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, Vocabulary

TATOEBA = Path(__file__).resolve().parents[2] / "shared/data/en-it/tatoeba-eng-ita.tsv"

single_thread = pytest.fixture(autouse=True)(one_thread)


def as_pairs(raw):
    return [SentencePair(en, it) for en, it in raw]


# --------------------------------------------------------------------------- reading


def test_tsv_with_crlf_and_jsonl_layouts_read_the_same_pairs(tmp_path):
    raw = synthetic_pairs()[:20]
    tsv = read_pairs(write_tsv(tmp_path / "a.tsv", raw, crlf=True))
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("".join(json.dumps({"en": en, "it": it}) + "\n" for en, it in raw[:10])
                     + "".join(json.dumps({"translation": {"en": en, "it": it}}) + "\n" for en, it in raw[10:]),
                     encoding="utf-8")
    assert tsv == as_pairs(raw)
    assert read_pairs(jsonl) == as_pairs(raw)
    assert not any("\r" in p.it for p in tsv)


def test_malformed_line_is_refused_with_its_line_number_or_skipped_with_a_warning(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("Hi.\tCiao!\nno tab on this line\nRun!\t\nGo.\tVai.\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.tsv:2: malformed line.*no tab.*--skip-bad-lines"):
        read_pairs(path)
    warnings = []
    pairs = read_pairs(path, skip_bad_lines=True, warn=warnings.append)
    assert pairs == [SentencePair("Hi.", "Ciao!"), SentencePair("Go.", "Vai.")]
    assert warnings == [f"skipped 2 malformed lines in {path} (line 2, 3)"]


def test_bad_jsonl_line_empty_file_and_missing_file_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"en": "Hi.", "it": "Ciao."}\n{"en": "Hi."\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed line: invalid JSON"):
        read_pairs(bad)
    empty = tmp_path / "empty.tsv"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty.tsv: no sentence pairs found"):
        read_pairs(empty)
    with pytest.raises(DataError, match="no such data file"):
        read_pairs(tmp_path / "missing.tsv")


def test_opus_books_is_read_from_the_local_hugging_face_cache(tmp_path, monkeypatch):
    import pyarrow as pa  # the test extra and zoo[opus] declare it
    import pyarrow.parquet as pq

    snapshot = tmp_path / "hub/datasets--Helsinki-NLP--opus_books/snapshots/abc123/en-it"
    snapshot.mkdir(parents=True)
    rows = [{"id": str(i), "translation": {"en": en, "it": it}} for i, (en, it) in enumerate(synthetic_pairs()[:5])]
    pq.write_table(pa.Table.from_pylist(rows), snapshot / "train-00000-of-00001.parquet")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert read_pairs("opus_books") == as_pairs(synthetic_pairs()[:5])
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match="not in the local Hugging Face cache"):
        read_pairs("opus_books")


# --------------------------------------------------------------------------- split


def test_split_is_deterministic_and_keeps_each_english_sentence_in_one_split():
    pairs = as_pairs(synthetic_pairs())
    pairs += [SentencePair(p.en.upper(), p.it) for p in pairs[:50]]  # case variants belong together
    first = split_pairs(pairs, validation=0.1, test=0.1)
    shuffled = pairs[:]
    random.Random(3).shuffle(shuffled)
    second = split_pairs(shuffled, validation=0.1, test=0.1)
    for name in first:
        assert sorted(map(repr, first[name])) == sorted(map(repr, second[name]))
    owners = {}
    for name, members in first.items():
        for pair in members:
            assert owners.setdefault(split_key(pair.en), name) == name
    assert all(first[name] for name in first)
    assert split_pairs(pairs, 0.1, 0.1, seed=1) != first


def test_tatoeba_split_is_leak_free(tmp_path):
    if not TATOEBA.is_file():
        pytest.skip(f"{TATOEBA} is not here")
    splits = split_pairs(read_pairs(TATOEBA))
    seen = {name: {split_key(p.en) for p in pairs} for name, pairs in splits.items()}
    assert not seen["train"] & seen["test"] and not seen["train"] & seen["validation"]
    assert not seen["validation"] & seen["test"]
    assert sum(len(v) for v in splits.values()) == 352_040
    assert 0.015 < len(seen["test"]) / sum(len(v) for v in seen.values()) < 0.025


def test_group_references_collects_every_translation_of_a_source():
    raw = [("Hi.", "Ciao."), ("Run!", "Corri!"), ("Hi.", "Salve."), ("Go.", "Vai."), ("Run!", "Corra!")]
    sources, references = group_references(as_pairs(raw))
    assert sources == ["Hi.", "Run!", "Go."]
    assert references == [["Ciao.", "Salve."], ["Corri!", "Corra!"], ["Vai."]]


# --------------------------------------------------------------------------- batches


def random_corpus(n=300, seed=0):
    rng = np.random.default_rng(seed)
    src = [rng.integers(4, 50, size=rng.integers(2, 30)).astype(np.int32) for _ in range(n)]
    tgt = [rng.integers(4, 50, size=rng.integers(3, 30)).astype(np.int32) for _ in range(n)]
    return src, tgt


def test_sample_sources_is_seeded_spans_the_list_and_keeps_its_order():
    sources = [f"sentence {i}" for i in range(300)]  # a split sorted by length: the head is the short end
    references = [[f"frase {i}", f"frase {i}!"] for i in range(300)]
    picked, refs = sample_sources(sources, references, 30, seed=0)
    assert len(picked) == 30 and all(r == references[sources.index(s)] for s, r in zip(picked, refs))
    assert sample_sources(sources, references, 30, seed=0) == (picked, refs)
    assert sample_sources(sources, references, 30, seed=1)[0] != picked
    positions = [sources.index(s) for s in picked]
    assert positions == sorted(positions)
    assert min(positions) < 100 and max(positions) >= 200 and any(100 <= p < 200 for p in positions)
    assert sample_sources(sources, references, 500) == (sources, references)


def test_token_batches_cover_every_pair_once_within_the_token_budget():
    src, tgt = random_corpus()
    batches = TokenBatches(src, tgt, max_tokens=200, pad_id=PAD_ID, seed=5)
    plan = batches.plan(0)
    seen = np.sort(np.concatenate(plan))
    assert np.array_equal(seen, np.arange(len(src)))
    for index in plan:
        batch = batches.collate(index)
        assert batch.src.numel() <= 200 and batch.tgt_in.numel() <= 200
        shifted = batch.tgt_in[:, 1:]  # target input is the output delayed by one step
        assert (shifted == batch.tgt_out[:, :-1])[shifted != PAD_ID].all()
        assert (batch.tgt_in != PAD_ID).sum() == (batch.tgt_out != PAD_ID).sum() == batch.n_tgt_tokens
    assert [b.tolist() for b in batches.plan(0)] == [b.tolist() for b in TokenBatches(src, tgt, 200, PAD_ID, seed=5).plan(0)]
    assert [b.tolist() for b in batches.plan(1)] != [b.tolist() for b in plan]


def test_token_batches_give_ranks_disjoint_equal_shares():
    src, tgt = random_corpus()
    ranks = [TokenBatches(src, tgt, 200, PAD_ID, seed=1, rank=r, world=2).plan(0) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    a, b = (set(np.concatenate(plan).tolist()) for plan in ranks)
    assert not a & b


def test_token_budget_smaller_than_a_pair_is_refused():
    src, tgt = random_corpus()
    with pytest.raises(DataError, match="--batch-tokens 10 is smaller than the longest pair"):
        TokenBatches(src, tgt, 10, PAD_ID)


# --------------------------------------------------------------------------- vocabulary


@pytest.mark.parametrize("algorithm", ["bpe", "unigram"])
def test_shared_vocabulary_has_the_special_ids_and_round_trips(tmp_path, algorithm):
    pairs = synthetic_pairs()
    vocab = Vocabulary.train([en for en, _ in pairs], [it for _, it in pairs], 120, algorithm)
    assert [vocab.source.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD_ID, BOS_ID, EOS_ID, 3]
    src = vocab.encode_source(["Tom sees the red cat."])[0]
    tgt = vocab.encode_target(["Tom vede il gatto rosso."])[0]
    assert src[-1] == EOS_ID and EOS_ID not in src[:-1]
    assert tgt[0] == BOS_ID and tgt[-1] == EOS_ID
    assert vocab.decode_target([tgt]) == ["Tom vede il gatto rosso."]
    vocab.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]
    assert Vocabulary.load(tmp_path).encode_target(["Tom vede il gatto rosso."])[0] == tgt


def test_per_language_vocabulary_keeps_target_ids_apart(tmp_path):
    pairs = synthetic_pairs()
    vocab = Vocabulary.train([en for en, _ in pairs], [it for _, it in pairs], 160, layout="per-language")
    src = vocab.encode_source(["Tom sees the red cat."])[0]
    tgt = vocab.encode_target(["Tom vede il gatto rosso."])[0]
    assert max(src[:-1]) < vocab.source.get_vocab_size() <= min(tgt[1:-1])
    assert max(tgt) < vocab.size
    assert vocab.decode_target([tgt]) == ["Tom vede il gatto rosso."]
    vocab.save(tmp_path)
    loaded = Vocabulary.load(tmp_path)
    assert loaded.layout == "per-language" and loaded.encode_target(["Tom vede il gatto rosso."])[0] == tgt


# --------------------------------------------------------------------------- CLI errors


def test_train_reports_bad_data_in_one_line_and_leaves_no_run_directory(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("Hi.\tCiao!\nbroken line\n", encoding="utf-8")
    empty = tmp_path / "empty.tsv"
    empty.write_text("", encoding="utf-8")
    runner = CliRunner()
    for data, message in ((bad, "bad.tsv:2: malformed line"), (empty, "empty.tsv: no sentence pairs found"),
                          (tmp_path / "missing.tsv", "missing.tsv: no such data file")):
        result = runner.invoke(cli, ["train", "transformer-en-it-small", "--data", str(data),
                                     "-o", str(tmp_path / "run"), *TINY_MODEL])
        assert result.exit_code == 1
        assert message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / "run").exists()
