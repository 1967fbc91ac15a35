"""What a web export folder holds, and the check that it holds it: no torch, no onnx, so
``zoo serve-web`` starts at once. Written by :mod:`zoo.exporters.web.exporter`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import ExportError

ONNX_DIR = "onnx"
CONFIG = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class Variant:
    """One precision of the folder: transformers.js's ``dtype`` and how zoo's onnx exporter makes it."""

    dtype: str  # transformers.js's name
    suffix: str  # of onnx/model{suffix}.onnx
    onnx_dtype: str = "fp32"
    quantize: str | None = None

    @property
    def file(self) -> str:  # a decoder-only model's one graph
        return f"model{self.suffix}.onnx"

    def files(self, encoder_decoder: bool = False) -> tuple[str, ...]:
        """The graph files of this precision: one for a decoder, the encoder and the merged decoder
        for an encoder-decoder (:mod:`zoo.exporters.web.seq2seq`)."""
        if encoder_decoder:
            return f"encoder_model{self.suffix}.onnx", f"decoder_model_merged{self.suffix}.onnx"
        return (self.file,)

    @property
    def path(self) -> str:  # in the folder
        return f"{ONNX_DIR}/{self.file}"


VARIANTS = {v.dtype: v for v in (
    Variant("fp32", ""),
    Variant("fp16", "_fp16", onnx_dtype="fp16"),
    Variant("q4", "_q4", quantize="int4"),
    Variant("int8", "_int8", quantize="int8"),
)}
DEFAULT_VARIANTS = ("fp32", "q4")
SMALLEST_FIRST = ("q4", "int8", "fp16", "fp32")


def parse_variants(text: str | tuple | list | None) -> tuple[str, ...]:
    """``"fp32,q4"`` (or a sequence) as checked variant names; one-line errors."""
    names = DEFAULT_VARIANTS if text is None else (text.split(",") if isinstance(text, str) else tuple(text))
    names = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise ExportError(f"--variants {','.join(unknown) or repr(text)}: choose from {', '.join(VARIANTS)} "
                          "(comma-separated, e.g. fp32,q4)")
    return names


def check_folder(folder: str | Path, need_tokenizer: bool = False) -> list[str]:
    """The transformers.js dtypes ``folder`` can serve; raise one ExportError line for
    anything a client would trip over: no folder, no ``config.json`` or one without a
    ``model_type``, no graph under ``onnx/``, a declared ``.onnx_data`` missing, or (with
    ``need_tokenizer``) no tokenizer files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a directory; make one with: zoo export MODEL --format web -o {folder}")
    hint = f"export it again: zoo export MODEL --format web -o {folder} --force"
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{folder} has no {CONFIG}, which transformers.js and Optimum read first; {hint}") from None
    except (OSError, ValueError) as exc:
        raise ExportError(f"{folder / CONFIG} is not readable JSON ({exc}); {hint}") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise ExportError(f"{folder / CONFIG} names no model_type, which transformers.js needs to pick a model "
                          f"class; {hint}")
    seq2seq = bool(config.get("is_encoder_decoder"))
    present = {name: [(folder / ONNX_DIR / f).is_file() for f in v.files(seq2seq)] for name, v in VARIANTS.items()}
    found = [name for name, there in present.items() if all(there)]
    for name, there in present.items():
        if any(there) and not all(there):
            lacking = [f for f, ok in zip(VARIANTS[name].files(seq2seq), there) if not ok]
            raise ExportError(f"{folder / ONNX_DIR} has the {name} encoder-decoder only in part: {lacking[0]} is "
                              f"missing; {hint}")
    if not found:
        listed = ", ".join(f for v in VARIANTS.values() for f in v.files(seq2seq))
        raise ExportError(f"{folder} has no graph under {ONNX_DIR}/ ({listed}); {hint}")
    external = (config.get("transformers.js_config") or {}).get("use_external_data_format") or {}
    for name in found:
        for file in VARIANTS[name].files(seq2seq):
            if external.get(file) and not (folder / ONNX_DIR / f"{file}_data").is_file():
                raise ExportError(f"{folder / ONNX_DIR / file} keeps its weights in {file}_data, which is missing; "
                                  f"{hint}")
    if need_tokenizer:
        missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
        if missing:
            raise ExportError(f"{folder} has no {' or '.join(missing)}: a page that turns text into tokens needs "
                              "the model's tokenizer (export a model with a known tokenizer, or a training run "
                              "whose tokenizer.json goes along)")
    return found
