"""A checkpoint's own tokenizer: its ``tokenizer.json`` (the tokenizers library), GPT-2's
shipped BPE for GPT-2 models, set up for batched generation (left padding)."""

from __future__ import annotations

from pathlib import Path

from zoo.core.files import TOKENIZER
from zoo.core.spec import ModelSpec
from zoo.errors import DataError, first_line


def tokenizer_for(spec: ModelSpec, directory: str | Path | None, checkpoint: str | Path | None = None):
    """The tokenizer of ``spec``'s model: from ``directory`` (``--tokenizer``) when given,
    else the ``tokenizer.json`` of the ``checkpoint`` directory its weights came from,
    else GPT-2's shipped tokenizer for a GPT-2 model. GPT-2 models keep GPT-2's BPE."""
    from zoo.generation.tokenizer import gpt2_tokenizer

    path = Path(directory).expanduser() if directory is not None else None
    if path is None and checkpoint is not None and spec.tokenizer != "gpt2":
        found = Path(checkpoint).expanduser()
        path = found if (found / TOKENIZER).is_file() else None
    if path is not None and (path / TOKENIZER).is_file() and spec.tokenizer != "gpt2":
        return json_tokenizer(path, spec)
    if spec.tokenizer == "gpt2" or path is not None:
        return gpt2_tokenizer(path)
    raise DataError(f"{spec.name} has no tokenizer the zoo ships; pass --tokenizer DIR (a directory with {TOKENIZER}), "
                    "or weights from a checkpoint directory that holds one")


def json_tokenizer(directory: Path, spec: ModelSpec):
    """A ``PreTrainedTokenizerFast`` over ``directory/tokenizer.json``; end of text is the
    spec's ``eos_token_id``, which also pads (on the left)."""
    from transformers import PreTrainedTokenizerFast

    try:
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(directory / TOKENIZER))
    except Exception as exc:  # tokenizers raises its own exception types
        raise DataError(f"{directory / TOKENIZER}: cannot read the tokenizer ({first_line(exc)})") from None
    if spec.eos_token_id is not None and tokenizer.eos_token is None:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(spec.eos_token_id)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def weights_tokenizer(spec: ModelSpec, tokenizer_dir: str | Path | None, weights: str | None):
    """:func:`tokenizer_for` where the checkpoint is wherever ``--weights`` points (a Hugging
    Face directory, a hub id, "hf", or a zoo model directory such as a training run's, whose
    ``tokenizer.json`` the run wrote)."""
    from zoo.core.model_dir import is_model_directory
    from zoo.hf.checkpoint import hf_source_directory

    checkpoint = None
    if weights and tokenizer_dir is None:
        local = Path(weights).expanduser()
        checkpoint = local if local.is_dir() and is_model_directory(local) else hf_source_directory(spec, weights)
    return tokenizer_for(spec, tokenizer_dir, checkpoint)
