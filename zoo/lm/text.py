"""Training text for language models: documents read from a file or a folder, and the
train/validation split.

``--data`` is a UTF-8 text file (one document), a JSONL file (one ``{"text": ...}`` object a
line, one document each) or a folder of ``.txt`` files (one document each, in path order).
Windows line endings become ``\\n``. A JSONL record or a folder's file that is empty or only
whitespace is skipped; a source with no text at all is an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from zoo.errors import DataError

FORMATS = 'give a UTF-8 .txt file, a .jsonl file ({"text": ...} a line) or a folder of .txt files'


def read_documents(path: str | os.PathLike) -> list[str]:
    """The documents of ``path``: a text file, a JSONL file or a folder of ``.txt`` files."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _read_folder(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder; {FORMATS}")
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path)
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty or only whitespace; {FORMATS}")
    return [text]


def _read_text(path: Path) -> str:
    """The UTF-8 text of ``path`` with ``\\n`` line endings; binary data is an error."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror}); check its permissions") from None
    bad = data.find(b"\0")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.start if bad < 0 else min(bad, exc.start)
    if bad >= 0:
        raise DataError(f"{path}: not UTF-8 text (byte {data[bad]:#04x} at offset {bad}); "
                        "give a text file, converted to UTF-8")
    return text.replace("\r\n", "\n")


def _read_jsonl(path: Path) -> list[str]:
    documents = []
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                            "fix the line or remove it") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f'{path}:{number}: expected a JSON object with a string "text" field; '
                            "fix the line or remove it")
        if record["text"].strip():
            documents.append(record["text"].replace("\r\n", "\n"))
    if not documents:
        raise DataError(f'{path}: no text in any "text" field; {FORMATS}')
    return documents


def _read_folder(path: Path) -> list[str]:
    files = sorted(file for file in path.rglob("*.txt") if file.is_file())
    if not files:
        raise DataError(f"{path}: no .txt files in this folder; {FORMATS}")
    documents = [text for text in map(_read_text, files) if text.strip()]
    if not documents:
        raise DataError(f"{path}: all {len(files)} .txt files in this folder are empty or only whitespace; {FORMATS}")
    return documents


def split_documents(documents: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Train and validation documents: the text of all documents in order, cut at character
    ``int(total * (1 - val_fraction))`` (nanoGPT's split); the document holding the cut is
    split there. ``val_fraction`` 0 gives no validation documents."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"validation fraction {val_fraction} is outside [0, 1); give e.g. 0.1, or 0 for no validation")
    cut = int(sum(map(len, documents)) * (1 - val_fraction))  # characters still to give to training
    train, validation = [], []
    for document in documents:
        if cut >= len(document):
            train.append(document)
        elif cut > 0:
            train.append(document[:cut])
            validation.append(document[cut:])
        else:
            validation.append(document)
        cut = max(0, cut - len(document))
    return train, validation
