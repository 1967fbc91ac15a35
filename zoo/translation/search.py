"""Greedy and beam search for encoder-decoder translation, batched, with the decoder's KV cache.

The search functions drive any object with :class:`zoo.core.model.EncoderDecoder`'s protocol
(``encode``, ``decode(..., cache=, last_only=True)`` returning torch logits,
``new_cache(batch, capacity)`` with ``.length`` and ``.reorder(index)``), so the same code
runs a PyTorch model or an exported model under ONNX Runtime. Finished sentences are
dropped from the batch as they end (``reorder`` with fewer rows).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Protocol, Sequence

import torch

from zoo.translation.data import pad_sequences
from zoo.translation.decoding import DEFAULT_BEAM, DEFAULT_LENGTH_PENALTY
from zoo.errors import DataError
from zoo.translation.vocabulary import BOS_ID, EOS_ID, PAD_ID, Vocabulary


class Seq2Seq(Protocol):
    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor: ...

    def decode(self, tgt_ids: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
               tgt_mask: torch.Tensor | None = None, cache=None, last_only: bool = True) -> torch.Tensor: ...

    def new_cache(self, batch: int, capacity: int): ...


def _rows(x, index: torch.Tensor):
    """Rows ``index`` of a torch tensor or a numpy array (an ONNX Runtime memory)."""
    return x.index_select(0, index.to(x.device)) if isinstance(x, torch.Tensor) else x[index.numpy()]


def _limits(max_len: int | Sequence[int] | torch.Tensor, batch: int) -> torch.Tensor:
    """Per-sentence token limits (B,) from one limit or one per sentence."""
    if isinstance(max_len, int):
        return torch.full((batch,), max_len)
    return torch.as_tensor(max_len).cpu().long()


@torch.no_grad()
def greedy_search(model: Seq2Seq, src_ids: torch.Tensor, src_mask: torch.Tensor,
                  max_len: int | Sequence[int] | torch.Tensor, use_cache: bool = True) -> list[list[int]]:
    """The most likely next token at each step, until ``</s>`` or ``max_len`` tokens.

    ``max_len`` is one limit or one per sentence, so a sentence's translation does not
    depend on its batch. Without ``use_cache`` the whole prefix is decoded again at every
    step (the slow reference the cached path must match). Returns ids without ``<s>``/``</s>``.
    """
    B = src_ids.shape[0]
    limits = _limits(max_len, B)
    memory = model.encode(src_ids, src_mask)  # (B, S, D)
    cache = model.new_cache(B, int(limits.max()) + 1) if use_cache else None
    prefix = torch.full((B, 1), BOS_ID, dtype=torch.long, device=src_ids.device)  # (b, t)
    alive = torch.arange(B)  # sentence of each live row
    outputs: list[list[int]] = [[] for _ in range(B)]
    for step in range(int(limits.max())):
        step_ids = prefix[:, -1:] if use_cache else prefix
        logits = model.decode(step_ids, memory, src_mask, cache=cache, last_only=True)  # (b, 1, V)
        next_ids = logits[:, -1].argmax(-1)  # (b,)
        for row, token in zip(alive.tolist(), next_ids.tolist()):
            if token != EOS_ID:
                outputs[row].append(token)
        prefix = torch.cat([prefix, next_ids[:, None]], dim=1)  # (b, t + 1)
        ended = (next_ids.cpu() == EOS_ID) | (step + 1 >= limits[alive])
        if bool(ended.all()):
            break
        if bool(ended.any()):
            keep = (~ended).nonzero().squeeze(1)
            alive, prefix = alive[keep], _rows(prefix, keep)
            memory, src_mask = _rows(memory, keep), _rows(src_mask, keep)
            if cache is not None:
                cache.reorder(keep.to(prefix.device))
    return outputs


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's length normalisation ((5 + length) / 6) ** alpha (Wu et al., 2016)."""
    return ((5 + length) / 6) ** alpha


@torch.no_grad()
def beam_search(model: Seq2Seq, src_ids: torch.Tensor, src_mask: torch.Tensor,
                max_len: int | Sequence[int] | torch.Tensor, beam: int = DEFAULT_BEAM,
                alpha: float = DEFAULT_LENGTH_PENALTY) -> list[list[int]]:
    """Beam search with GNMT length penalty ``alpha``; beam 1 gives the greedy output.

    Each step takes the best ``2 × beam`` continuations of every sentence: those ending
    in ``</s>`` among the best ``beam`` become finished hypotheses (scored
    log p / length_penalty), the best ``beam`` others continue. A sentence stops once it
    has ``beam`` finished hypotheses and no live beam can still beat the worst of them,
    or when it reaches its ``max_len`` (one limit, or one per sentence).
    """
    B, K = src_ids.shape[0], beam
    limits = _limits(max_len, B)
    device = src_ids.device
    memory = model.encode(src_ids, src_mask)  # (B, S, D)
    expand = torch.arange(B).repeat_interleave(K)  # (B*K,)
    memory, src_mask = _rows(memory, expand), _rows(src_mask, expand)  # (B*K, S, D), (B*K, S)
    cache = model.new_cache(B * K, int(limits.max()) + 1)
    scores = torch.full((B, K), -math.inf)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    prefix = torch.full((B * K, 1), BOS_ID, dtype=torch.long, device=device)  # (b*K, t)
    alive = torch.arange(B)  # sentence of each live group of K rows
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    for step in range(int(limits.max())):
        b = alive.numel()
        logits = model.decode(prefix[:, -1:], memory, src_mask, cache=cache, last_only=True)[:, -1]  # (b*K, V)
        logp = logits.float().log_softmax(-1).cpu()  # (b*K, V)
        V = logp.shape[-1]
        candidates = (scores[:, :, None] + logp.view(b, K, V)).view(b, K * V)  # (b, K*V)
        top_scores, top_index = candidates.topk(2 * K, dim=1)  # (b, 2K)
        top_beam, top_token = top_index // V, top_index % V  # (b, 2K)
        ends = top_token == EOS_ID
        penalty = length_penalty(step + 1, alpha)
        for g, j in (ends[:, :K] & top_scores[:, :K].isfinite()).nonzero().tolist():
            tokens = prefix[g * K + top_beam[g, j], 1:].tolist()
            finished[alive[g]].append((top_scores[g, j].item() / penalty, tokens))
        # the best K candidates that do not end continue; at most K of 2K end, so K remain
        go_on = ~ends & ((~ends).cumsum(dim=1) <= K)
        column = go_on.nonzero()[:, 1].view(b, K)  # (b, K)
        scores = top_scores.gather(1, column)  # (b, K)
        origin = (torch.arange(b)[:, None] * K + top_beam.gather(1, column)).view(-1)  # (b*K,)
        next_ids = top_token.gather(1, column).view(-1, 1)  # (b*K, 1)
        done = torch.tensor([_is_done(finished[s], scores[g, 0].item() / penalty, K)
                             for g, s in enumerate(alive.tolist())])
        for g in (~done & (step + 1 >= limits[alive])).nonzero()[:, 0].tolist():
            for k in range(K):  # out of length: the live beams count as finished
                tokens = prefix[origin[g * K + k], 1:].tolist() + [int(next_ids[g * K + k])]
                finished[alive[g]].append((scores[g, k].item() / penalty, tokens))
            done[g] = True
        if bool(done.all()):
            return _best(finished)
        keep = (~done).nonzero().squeeze(1)  # live groups
        rows = origin.view(b, K)[keep].view(-1)  # (b'*K,)
        prefix = torch.cat([_rows(prefix, rows), next_ids.view(b, K)[keep].view(-1, 1).to(device)], dim=1)
        if keep.numel() < b:
            kept_rows = (keep[:, None] * K + torch.arange(K)).view(-1)
            memory, src_mask = _rows(memory, kept_rows), _rows(src_mask, kept_rows)
        cache.reorder(rows.to(device))
        scores, alive = scores[keep], alive[keep]
    return _best(finished)


def _is_done(hypotheses: list[tuple[float, list[int]]], best_live: float, beam: int) -> bool:
    if len(hypotheses) < beam:
        return False
    worst_kept = sorted((score for score, _ in hypotheses), reverse=True)[beam - 1]
    return worst_kept >= best_live


def _best(finished: list[list[tuple[float, list[int]]]]) -> list[list[int]]:
    return [max(hypotheses, key=lambda h: h[0])[1] for hypotheses in finished]


class Translator:
    """English → Italian with a model and its :class:`~zoo.translation.vocabulary.Vocabulary`."""

    def __init__(self, model: Seq2Seq, vocabulary: Vocabulary, device: str | torch.device = "cpu",
                 context_length: int | None = None) -> None:
        self.model, self.vocabulary = model, vocabulary
        self.device = torch.device(device)
        spec = getattr(model, "spec", None)
        self.context_length = context_length or (spec.context_length if spec is not None else 256)

    def max_length(self, src_len: int) -> int:
        """Target tokens allowed for a source of ``src_len`` tokens."""
        return min(self.context_length - 1, int(1.5 * src_len) + 10)

    def translate_ids(self, sources: Sequence[Sequence[int]], beam: int = DEFAULT_BEAM,
                      alpha: float = DEFAULT_LENGTH_PENALTY, use_cache: bool = True) -> list[list[int]]:
        """Target ids for one batch of source id sequences (each ending in ``</s>``)."""
        sources = [list(s[: self.context_length - 1]) + ([EOS_ID] if len(s) >= self.context_length else [])
                   for s in sources]
        src = pad_sequences(sources, PAD_ID).to(self.device)  # (B, S)
        mask = (src != PAD_ID).long()  # (B, S)
        max_len = [self.max_length(len(s)) for s in sources]
        if beam > 1:
            return beam_search(self.model, src, mask, max_len, beam=beam, alpha=alpha)
        return greedy_search(self.model, src, mask, max_len, use_cache=use_cache)

    def translate(self, sentences: Sequence[str], beam: int = DEFAULT_BEAM, alpha: float = DEFAULT_LENGTH_PENALTY,
                  batch_size: int = 64, progress: bool = False) -> list[str]:
        """Italian for each English sentence; batches hold sentences of similar length."""
        from tqdm import tqdm

        if beam < 1 or batch_size < 1:
            raise DataError(f"beam ({beam}) and batch size ({batch_size}) must be at least 1")
        ids = self.vocabulary.encode_source(sentences)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[str] = [""] * len(ids)
        bar = tqdm(total=len(ids), desc="translating", unit="sent", file=sys.stderr, disable=not progress,
                   leave=False)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            hypotheses = self.translate_ids([ids[i] for i in chunk], beam=beam, alpha=alpha)
            for i, text in zip(chunk, self.vocabulary.decode_target(hypotheses)):
                out[i] = text
            bar.update(len(chunk))
        bar.close()
        return out


def load_translator(directory: str | os.PathLike, runtime: str = "torch", device: str = "cpu") -> Translator:
    """A translator for a run directory (``torch``) or an exported directory (``onnxruntime``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such run directory; train one with "
                        f"'zoo train transformer-en-it-small --data PATH -o {directory}'")
    vocabulary = Vocabulary.load(directory)
    if runtime == "torch":
        from zoo.core.model_dir import load_model

        if device == "cuda" and not torch.cuda.is_available():
            raise DataError("--device cuda: no CUDA device is available; use --device cpu")
        model = load_model(directory, device=device)
        if not model.spec.is_encoder_decoder:
            raise DataError(f"{directory}: model {model.spec.name} is a {model.spec.family}, not a translation model")
        return Translator(model, vocabulary, device)
    from zoo.core.registry import get_registry

    registry = get_registry()
    if runtime not in registry.names("runtime"):
        raise DataError(f"unknown runtime {runtime!r}; choose torch or {', '.join(registry.names('runtime'))}")
    return Translator(registry.get("runtime", runtime)(directory, device=device), vocabulary, "cpu")
