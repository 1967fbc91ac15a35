"""Scoring a decoder on text: loss (nats per token), perplexity and bits per character.

The text's tokens are cut into consecutive windows of ``seq_len`` and every token is
predicted once, from the tokens before it in its window (the first from the end-of-text
token, where the tokenizer has one), as a model trained on windows of that length reads
them. Nothing is sampled: the same model and text always give the same figures. Bits per
character divide the summed loss by the characters those tokens spell, so models with
different tokenizers compare on it; loss per token does not.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zoo.lm.tokenizers import EncodedText


LOGITS_BUDGET = 1 << 24  # logits per forward pass when scoring: 64 MB in float32, a GPT-2 vocabulary's 1.3 windows of 256


@dataclass
class Score:
    """What a text scores: the figures and what they were counted over."""

    loss: float  # mean negative log-likelihood per predicted token, in nats
    perplexity: float
    bits_per_character: float
    scored_tokens: int
    characters: float  # characters spelled by the scored tokens

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def scored_stream(text: EncodedText, eos_id: int | None) -> EncodedText:
    """``text`` as it is scored: led by the end-of-text token, the first token's context, where
    the tokenizer has one."""
    if eos_id is None or not len(text.ids):
        return text
    return EncodedText(np.concatenate([[eos_id], text.ids]).astype(np.int32), text.characters)


def windows(n_tokens: int, seq_len: int, limit: int | None = None) -> list[tuple[int, int]]:
    """(start, length) of the windows that predict tokens 1..n-1 of a stream of ``n_tokens``:
    window ``(s, L)`` reads tokens s..s+L-1 and predicts s+1..s+L. ``limit`` keeps about that
    many predicted tokens, in windows spread evenly over the stream."""
    spans = [(start, min(seq_len, n_tokens - 1 - start)) for start in range(0, n_tokens - 1, seq_len)]
    if limit is not None and limit < n_tokens - 1:
        keep = max(1, limit // seq_len)
        chosen = np.unique(np.linspace(0, len(spans) - 1, keep).round().astype(int))
        spans = [spans[i] for i in chosen]
    return spans


@torch.no_grad()
def score_tokens(model: nn.Module, ids: np.ndarray, characters: int, seq_len: int, device: torch.device | str = "cpu",
                 autocast: contextlib.AbstractContextManager | None = None, batch_size: int | None = None,
                 limit: int | None = None, progress: bool = False) -> Score:
    """Score the token stream ``ids`` (which spells ``characters`` characters; its first token is
    context only) with ``model``; ``limit``: about that many tokens, spread over the stream.
    ``batch_size`` windows a forward pass; by default as many as keep the logits near 64 MB."""
    from tqdm import tqdm

    from zoo.training.loss import smoothed_cross_entropy

    if batch_size is None:
        batch_size = max(1, min(64, LOGITS_BUDGET // (seq_len * model.spec.vocab_size)))

    spans = windows(len(ids), seq_len, limit)
    if not spans:
        raise ValueError("nothing to score: the text has fewer than two tokens")
    autocast = autocast or contextlib.nullcontext()
    stream = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    total, count = 0.0, 0
    groups: dict[int, list[int]] = {}
    for start, length in spans:  # windows of one length go together (all but the last have seq_len)
        groups.setdefault(length, []).append(start)
    bar = tqdm(total=len(spans), desc="scoring", unit="window", disable=not progress)
    for length, starts in groups.items():
        for first in range(0, len(starts), batch_size):
            index = torch.tensor(starts[first : first + batch_size])[:, None] + torch.arange(length + 1)
            chunk = stream[index].to(device)  # (B, L + 1)
            with autocast:
                logits = model(chunk[:, :-1])  # (B, L, V)
            total += float(smoothed_cross_entropy(logits, chunk[:, 1:], 0.0, -100))  # in blocks of rows on a CPU
            count += chunk[:, 1:].numel()
            bar.update(len(index))
    bar.close()
    spelled = characters * count / (len(ids) - 1)  # all of them when every token is scored
    loss = total / count
    return Score(loss, math.exp(min(loss, 700.0)), total / math.log(2) / spelled, count, spelled)


def write_score(directory: str | os.PathLike, name: str, record: dict) -> Path:
    """Write ``record`` as ``directory/NAME.json`` atomically; returns the path."""
    import json

    from zoo.core.files import atomic_file

    target = Path(directory) / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target) as f:
        f.write((json.dumps(record, indent=2) + "\n").encode("utf-8"))
    return target


def evaluate_run(run_dir: str | os.PathLike, data: str | os.PathLike | None = None, split: str = "validation",
                 device: str = "cpu", batch_size: int | None = None, progress: bool = True) -> dict:
    """Score language-modelling run ``run_dir``'s published weights on a split of its text (or all
    of ``data``), in windows of the run's sequence length; the result is also written to
    ``run_dir/eval/SPLIT.json`` (``FILESTEM.json`` for ``data``) and returned with its ``path``."""
    from tokenizers import Tokenizer

    from zoo.core.files import TOKENIZER
    from zoo.core.model_dir import load_model
    from zoo.errors import DataError
    from zoo.lm.text import read_documents, split_documents
    from zoo.lm.tokenizers import encode_documents
    from zoo.training.config import TrainConfig
    from zoo.training.resume import data_source

    run_dir = Path(run_dir)
    config = TrainConfig.load(run_dir)
    if config.task != "language-modelling":
        raise DataError(f"{run_dir} is a {config.task} run; this scores language-modelling runs")
    if data is not None:
        documents, name, where = read_documents(data), Path(data).stem, str(data)
    elif split in ("train", "validation"):
        documents = split_documents(read_documents(config.data), config.val_fraction)[split == "validation"]
        name, where = split, f"the {split} split of {config.data}"
    else:
        raise DataError(f"--split {split}: a language-modelling run's text has a train and a validation split")
    model = load_model(run_dir, device=device).eval()
    spec = model.spec
    tokenizer = Tokenizer.from_file(str(run_dir / TOKENIZER))
    text = encode_documents(tokenizer, documents, spec.eos_token_id,
                            lambda message: print(f"warning: {message}", file=sys.stderr))
    text = scored_stream(text, spec.eos_token_id)
    if len(text.ids) < 2:
        raise DataError(f"{where} has no tokens to score; give a longer text")
    seq_len = config.seq_len or spec.context_length
    autocast = contextlib.nullcontext()
    score = score_tokens(model, text.ids, text.characters, seq_len, device, autocast, batch_size, progress=progress)
    record = {"run": str(run_dir.resolve()), "data": data_source(str(data)) if data is not None else config.data,
              "split": None if data is not None else split, "seq_len": seq_len, "step": _trained_step(run_dir),
              **score.to_dict()}
    path = write_score(run_dir / "eval", name, record)
    return {**record, "where": where, "path": str(path)}


def _trained_step(run_dir: Path) -> int | None:
    from zoo.core.files import MANIFEST, read_json

    from zoo.errors import ZooError

    try:
        return read_json(run_dir / MANIFEST).get("training", {}).get("step")
    except ZooError:  # no readable manifest: the step is unknown
        return None
