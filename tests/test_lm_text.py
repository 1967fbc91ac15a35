"""Language-model training text: reading documents, the split, and the char / byte / bpe
tokenizers with GPT-2's as the reference for the token stream."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from tokenizers import pre_tokenizers
from transformers import PreTrainedTokenizerFast

from conftest import SHARED_DATA
from zoo.core.spec import load_spec
from zoo.errors import DataError
from zoo.generation.tokenizer import gpt2_tokenizer
from zoo.hf.tokenizer import json_tokenizer
from zoo.lm import tokenizers as lm_tokenizers
from zoo.lm.text import read_documents, split_documents
from zoo.lm.tokenizers import (BYTE_SYMBOLS, END_OF_TEXT, PIECE_CHARACTERS, PIECE_CUT, encode_documents,
                               save_tokenizer, train_tokenizer, vocabulary_size)

SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
UNICODE = "Ünïcödé\n\n  日本語 🎉 tabs\there\r\nend 's 'll \u00a0\u2028x\n"


def long_text(seed: int = 0) -> str:
    """Several pieces' worth of text full of whitespace next to newlines, where a careless cut
    would change GPT-2's tokens ("\\n\\n", " \\n", "\\n ", Unicode spaces)."""
    rng = random.Random(seed)
    words = ["the", "King", "'s", "it", "42", "3.14", "é", "日本", "🎉", "!?", "--", ":", "x'll"]
    gaps = [" ", "  ", "\n", "\n", "\n", "\n\n", "\n\n\n", " \n", "\n ", "\n  ", "\n \n", "\t\n", "\n\t",
            "\u00a0\n", "\n\u3000", "\x1c\n", "\u2028"]
    text = "".join(rng.choice(words) + rng.choice(gaps) for _ in range(PIECE_CHARACTERS))
    assert len(text) > 3 * PIECE_CHARACTERS and PIECE_CUT.search(text, PIECE_CHARACTERS)
    return text


# ------------------------------------------------------------------------ reading


def test_reads_a_text_file_as_one_document(tmp_path):
    (tmp_path / "a.txt").write_bytes("First line\r\nsecond é\n".encode())
    (tmp_path / "b.md").write_text("# any other suffix is text too\n", encoding="utf-8")
    assert read_documents(tmp_path / "a.txt") == ["First line\nsecond é\n"]
    assert read_documents(str(tmp_path / "b.md")) == ["# any other suffix is text too\n"]


def test_reads_jsonl_one_document_a_line(tmp_path):
    lines = [json.dumps({"text": "one\r\ntwo", "id": 1}), "", "   ", json.dumps({"text": "three 日本"})]
    (tmp_path / "d.jsonl").write_text("\r\n".join(lines) + "\n", encoding="utf-8")
    assert read_documents(tmp_path / "d.jsonl") == ["one\ntwo", "three 日本"]


def test_reads_a_folder_of_txt_files_in_path_order(tmp_path):
    for name, text in [("b.txt", "B"), ("a/z.txt", "AZ"), ("a/b/c.txt", "ABC"), ("empty.txt", ""),
                       ("notes.md", "not read"), ("c.txt", "C\r\n")]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8", newline="")
    assert read_documents(tmp_path) == ["ABC", "AZ", "B", "C\n"]


BAD_DATA = {  # what is wrong: (files written, the path read, parts of the message)
    "missing": ({}, "missing.txt", ["missing.txt: no such file or folder; give a UTF-8 .txt file, a .jsonl file"]),
    "empty": ({"e.txt": b""}, "e.txt", ["e.txt: the file is empty or only whitespace; give"]),
    "whitespace": ({"w.txt": b" \n\t\r\n"}, "w.txt", ["w.txt: the file is empty or only whitespace; give"]),
    "nul": ({"nul.txt": b"text\x00more"}, "nul.txt", ["nul.txt: not UTF-8 text (byte 0x00 at offset 4); give"]),
    "nul first": ({"both.txt": b"ok\x00 then \xff"}, "both.txt", ["0x00 at offset 2"]),
    "latin-1": ({"l.txt": "ok\ncaf\xe9".encode("latin-1")}, "l.txt", ["l.txt: not UTF-8 text (byte 0xe9 at offset 6)"]),
    "bad json": ({"bad.jsonl": b'{"text": "a"}\n\n{"text": "b"\n'}, "bad.jsonl",
                 ["bad.jsonl:3: not valid JSON (", "fix the line or remove it"]),
    "no text": ({"no.jsonl": b'{"text": "a"}\n{"body": "b"}\n'}, "no.jsonl",
                ['no.jsonl:2: expected a JSON object with a string "text" field; fix the line or remove it']),
    "number": ({"num.jsonl": b'{"text": 5}\n'}, "num.jsonl", ['num.jsonl:1: expected a JSON object with a string']),
    "list": ({"list.jsonl": b'["text"]\n'}, "list.jsonl", ["list.jsonl:1: expected a JSON object"]),
    "blank text": ({"blank.jsonl": b'{"text": " "}\n'}, "blank.jsonl", ['blank.jsonl: no text in any "text" field']),
    "no .txt": ({"folder/x.md": b"text"}, "folder", ["folder: no .txt files in this folder; give"]),
    "all empty": ({"folder/sub/x.txt": b" \n"}, "folder",
                  ["folder: all 1 .txt files in this folder are empty or only whitespace; give"]),
    "binary in folder": ({"folder/x.txt": b"\xff"}, "folder", ["x.txt: not UTF-8 text (byte 0xff at offset 0)"]),
}


@pytest.mark.parametrize("files, given, expected", BAD_DATA.values(), ids=BAD_DATA.keys())
def test_bad_data_is_one_line_saying_where_and_what_to_do(tmp_path, files, given, expected):
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError) as caught:
        read_documents(tmp_path / given)
    message = str(caught.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


# ------------------------------------------------------------------------ the split


def test_split_is_nanogpts_cut_of_the_joined_text():
    documents = ["First Citizen:\nBefore we proceed", "any further, hear me speak.\n", "All:\nSpeak, speak."]
    text = "".join(documents)
    train, validation = split_documents(documents, 0.1)
    cut = int(len(text) * 0.9)  # nanoGPT: data[:int(n*0.9)] trains
    assert "".join(train) == text[:cut] and "".join(validation) == text[cut:]
    assert train[:2] == documents[:2] and len(train) == 3 and len(validation) == 1


def test_split_cuts_the_document_holding_the_cut():
    assert split_documents(["aaaa", "bbbbbb", "cc"], 0.5) == (["aaaa", "bb"], ["bbbb", "cc"])
    assert split_documents(["aaaa", "bbbb"], 0.5) == (["aaaa"], ["bbbb"])  # a cut between documents
    assert split_documents(["abcdefghijklmno"], 0.1) == (["abcdefghijklm"], ["no"])  # 13.5 rounds down


def test_split_with_no_validation():
    assert split_documents(["a", "bc"], 0) == (["a", "bc"], [])


@pytest.mark.parametrize("fraction", [1, 1.5, -0.1, float("nan")])
def test_split_refuses_a_fraction_outside_0_1(fraction):
    with pytest.raises(DataError, match=r"outside \[0, 1\)"):
        split_documents(["abc"], fraction)


# ------------------------------------------------------------------------ tokenizers


@pytest.mark.parametrize("kind, vocab_size", [("char", None), ("byte", None), ("bpe", 300)])
def test_round_trip_is_exact(kind, vocab_size):
    tokenizer = train_tokenizer(kind, [UNICODE, long_text()], vocab_size)
    for text in (UNICODE, long_text(1)[:2000], " lead and trail \n\n"):
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert tokenizer.token_to_id(END_OF_TEXT) == 0
    assert vocabulary_size(tokenizer) == {"char": 1 + len(set(UNICODE + long_text())), "byte": 257, "bpe": 300}[kind]


def test_char_vocabulary_is_the_sorted_distinct_characters():
    documents = ["hello\nworld", " é🎉"]
    tokenizer = train_tokenizer("char", documents)
    stoi = {c: i + 1 for i, c in enumerate(sorted(set("".join(documents))))}  # nanoGPT's, after id 0
    assert tokenizer.get_vocab() == {END_OF_TEXT: 0, **stoi}
    text = "hello world\n🎉"
    assert tokenizer.encode(text).ids == [stoi[c] for c in text]
    assert encode_documents(tokenizer, [text], 0).ids.tolist() == [stoi[c] for c in text]


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="no shared data")
def test_tiny_shakespeare_has_65_characters_and_one_token_each():
    documents = read_documents(SHAKESPEARE)
    tokenizer = train_tokenizer("char", documents)
    encoded = encode_documents(tokenizer, documents, 0)
    assert vocabulary_size(tokenizer) == 66
    assert len(encoded.ids) == encoded.characters == len(documents[0]) == 1115394


def test_byte_ids_are_the_utf8_bytes_after_end_of_text():
    tokenizer = train_tokenizer("byte", ["anything"])
    assert set(BYTE_SYMBOLS) == set(pre_tokenizers.ByteLevel.alphabet())
    assert vocabulary_size(tokenizer) == 257
    assert tokenizer.encode(UNICODE).ids == [b + 1 for b in UNICODE.encode("utf-8")]


@pytest.mark.parametrize("kind, vocab_size, message", [
    ("word", None, "unknown tokenizer kind 'word'; choose one of: char, byte, bpe"),
    ("char", 100, "give a vocabulary size only with bpe"),
    ("byte", 257, "give a vocabulary size only with bpe"),
    ("bpe", None, "at least 258"),
    ("bpe", 257, "at least 258"),
])
def test_tokenizer_choices_are_checked(kind, vocab_size, message):
    with pytest.raises(DataError, match=message):
        train_tokenizer(kind, ["text"], vocab_size)


# ------------------------------------------------------------------------ the token stream


def test_end_of_text_goes_between_documents():
    tokenizer = train_tokenizer("char", ["abc"])
    a, b, c = (tokenizer.token_to_id(x) for x in "abc")
    assert encode_documents(tokenizer, ["ab", "c", "ba"], 0).ids.tolist() == [a, b, 0, c, 0, b, a]
    assert encode_documents(tokenizer, ["ab", "c"], None).ids.tolist() == [a, b, c]
    encoded = encode_documents(tokenizer, ["ab"], 0)
    assert encoded.ids.dtype.name == "int32" and encoded.ids.tolist() == [a, b] and encoded.characters == 2


def test_characters_outside_a_char_vocabulary_are_left_out_with_one_warning():
    tokenizer = train_tokenizer("char", ["abc \n"])
    warnings = []
    encoded = encode_documents(tokenizer, ["a é b", "ç\nééc"], 0, warnings.append)
    assert tokenizer.decode(encoded.ids.tolist(), skip_special_tokens=False) == f"a  b{END_OF_TEXT}\nc"
    assert encoded.characters == len("a  b") + len("\nc")
    assert warnings == ["characters not in the tokenizer's vocabulary are left out: 4 in the text, "
                        "2 distinct ('ç', 'é'); the score covers the rest"]
    encode_documents(tokenizer, ["abc"], 0, warnings.append)
    assert len(warnings) == 1
    encode_documents(tokenizer, ["aéb"], 0, warnings.append)
    assert ": 1 in the text, 1 distinct ('é');" in warnings[1]


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer()


def test_gpt2_stream_is_gpt2_tokenizer_fast_on_each_document(gpt2):
    documents = [long_text(2), "Hello world", UNICODE, long_text(3)]
    encoded = encode_documents(gpt2.backend_tokenizer, documents, gpt2.eos_token_id)
    expected = []
    for document in documents:
        expected += [gpt2.eos_token_id] * bool(expected) + gpt2(document)["input_ids"]
    np.testing.assert_array_equal(encoded.ids, expected)
    assert encoded.characters == sum(map(len, documents))


@pytest.mark.parametrize("piece_characters", [PIECE_CHARACTERS, 16])
@pytest.mark.parametrize("kind", ["char", "byte", "bpe", "gpt2"])
def test_encoding_in_pieces_is_encoding_whole(kind, piece_characters, gpt2, monkeypatch):
    monkeypatch.setattr(lm_tokenizers, "PIECE_CHARACTERS", piece_characters)  # 16: a cut at nearly every newline
    text = long_text(4)
    tokenizer = gpt2.backend_tokenizer if kind == "gpt2" else train_tokenizer(kind, [text], {"bpe": 400}.get(kind))
    whole = tokenizer.encode(text, add_special_tokens=False).ids
    np.testing.assert_array_equal(encode_documents(tokenizer, [text], None).ids, whole)


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="no shared data")
def test_tiny_shakespeare_gpt2_stream_is_gpt2_tokenizer_fast(gpt2):
    documents = read_documents(SHAKESPEARE)
    encoded = encode_documents(gpt2.backend_tokenizer, documents, gpt2.eos_token_id)
    np.testing.assert_array_equal(encoded.ids, gpt2(documents[0])["input_ids"])


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_a_saved_tokenizer_loads_in_transformers_with_end_of_text_0(tmp_path, kind):
    tokenizer = train_tokenizer(kind, [UNICODE, long_text()], 300 if kind == "bpe" else None)
    save_tokenizer(tokenizer, tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["tokenizer.json"]
    spec = load_spec("gpt2", {"vocab_size": vocabulary_size(tokenizer), "bos_token_id": 0, "eos_token_id": 0})
    loaded = json_tokenizer(tmp_path / "run", spec)
    assert isinstance(loaded, PreTrainedTokenizerFast)
    assert loaded.eos_token == loaded.pad_token == END_OF_TEXT and loaded.eos_token_id == 0
    assert loaded.decode(loaded(UNICODE)["input_ids"]) == UNICODE
    assert loaded(UNICODE)["input_ids"] == tokenizer.encode(UNICODE).ids
    batch = loaded(["日本", "tabs here"], padding=True)
    short, long = (tokenizer.encode(text).ids for text in ("日本", "tabs here"))
    assert batch["input_ids"][0] == [0] * (len(long) - len(short)) + short
    assert batch["attention_mask"][0] == [0] * (len(long) - len(short)) + [1] * len(short)
    assert loaded.batch_decode(batch["input_ids"], skip_special_tokens=True) == ["日本", "tabs here"]
