"""Parity of a zoo model with its family's transformers class (``GPT2LMHeadModel``,
``LlamaForCausalLM``, ...; see :mod:`zoo.hf.formats`) on the same weights: :func:`verify`
(``zoo.verify``) runs the checks the ``zoo verify`` command reports.

Four checks, each on text through the model's real tokenizer: logits of each prompt alone,
logits of the prompts as one left-padded batch (real positions only), greedy decoding
(the zoo's :func:`zoo.generation.sampling.generate` against transformers' ``generate``: tokens
must be identical), and the zoo's greedy tokens with and without its key/value cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from zoo.errors import ZooError
from zoo.generation.sampling import generate
from zoo.hf.checkpoint import hf_source_directory
from zoo.hf.formats import format_for_spec, layout_problem, to_hf_model
from zoo.hf.tokenizer import tokenizer_for

PROMPTS = (
    "The quick brown fox jumps over the lazy dog.",
    "In 1869, the Suez Canal opened, linking the Mediterranean",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Once upon a time",
)
DEFAULT_ATOL = {torch.float32: 1e-4, torch.float64: 1e-8}


@dataclass
class Check:
    """One parity check: logit differences (None for token checks) and whether it passed."""

    name: str
    passed: bool
    max_abs: float | None = None
    max_rel: float | None = None
    detail: str = ""


@dataclass
class ParityReport:
    """Every check of one :func:`verify_against_hf` run."""

    model: str
    weights: str
    dtype: str
    atol: float
    checks: list[Check] = field(default_factory=list)
    reference: str = "GPT2LMHeadModel"  # the transformers class compared with

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def lines(self) -> list[str]:
        """The report as printed by ``zoo verify``."""
        rows = [(c.name, _num(c.max_abs), _num(c.max_rel), "ok" if c.passed else "FAIL", c.detail) for c in self.checks]
        header = ("check", "max abs", "max rel", "result", "")
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(4)]
        out = [f"{self.model} vs transformers {self.reference}; weights: {self.weights}; {self.dtype}; "
               f"logits within {self.atol:g} absolute"]
        for row in (header, *rows):
            out.append("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + ("  " + row[4] if row[4] else ""))
        out.append("PASS" if self.passed else "FAIL")
        return [line.rstrip() for line in out]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def logit_difference(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float]:
    """Max absolute difference, and that relative to the largest reference logit."""
    diff = (ours.double() - theirs.double()).abs().max().item()
    scale = theirs.double().abs().max().item()
    return diff, diff / scale if scale else diff


def hf_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids (B, T) of a left-padded batch, as the zoo derives them from the mask."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.inference_mode()
def verify_against_hf(model: nn.Module, hf_model: nn.Module, tokenizer, prompts=PROMPTS, steps: int = 20,
                      atol: float | None = None, weights: str = "") -> ParityReport:
    """Run the four parity checks of zoo ``model`` against ``hf_model`` (same weights)."""
    param = model.token_table.weight
    atol = atol if atol is not None else DEFAULT_ATOL.get(param.dtype, 1e-2)
    report = ParityReport(model.spec.name, weights, str(param.dtype).removeprefix("torch."), atol,
                          reference=type(hf_model).__name__)
    device = param.device

    for i, text in enumerate(prompts, 1):
        ids = torch.tensor([tokenizer(text).input_ids], device=device)  # (1, T)
        diff, rel = logit_difference(model(ids), hf_model(ids).logits)
        report.checks.append(Check(f"prompt {i} ({ids.shape[1]} tokens)", diff <= atol, diff, rel))

    batch = tokenizer(list(prompts), padding=True, return_tensors="pt").to(device)
    ids, mask = batch.input_ids, batch.attention_mask  # (B, T), left padding
    ours = model(ids, attention_mask=mask)
    theirs = hf_model(ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
    real = mask.bool()
    diff, rel = logit_difference(ours[real], theirs[real])
    report.checks.append(Check(f"padded batch ({ids.shape[0]}x{ids.shape[1]}, left)", diff <= atol, diff, rel))

    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.spec.eos_token_id
    zoo_tokens = generate(model, ids, mask, max_new_tokens=steps, eos_token_id=eos)
    hf_tokens = hf_model.generate(ids, attention_mask=mask, max_new_tokens=steps, do_sample=False,
                                  eos_token_id=eos, pad_token_id=eos)
    same = torch.equal(zoo_tokens, hf_tokens)
    report.checks.append(Check(f"greedy {steps} steps vs generate()", same,
                               detail="tokens identical" if same else first_difference(zoo_tokens, hf_tokens)))
    uncached = generate(model, ids, mask, max_new_tokens=steps, eos_token_id=eos, use_cache=False)
    same = torch.equal(zoo_tokens, uncached)
    report.checks.append(Check(f"greedy {steps} steps, cache vs none", same,
                               detail="tokens identical" if same else first_difference(zoo_tokens, uncached)))
    return report


def first_difference(a: torch.Tensor, b: torch.Tensor) -> str:
    """Where two token tensors (B, T) first differ, in words."""
    if a.shape != b.shape:
        return f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    row, col = (a != b).nonzero()[0].tolist()
    return f"row {row} differs from position {col}: {a[row, col].item()} vs {b[row, col].item()}"


def hf_reference(model: nn.Module, source: str | None):
    """The Hugging Face model to compare with: loaded by transformers itself from ``source``
    when that is a Hugging Face checkpoint (hub id, "hf", or directory), else built from
    ``model``'s own weights."""
    directory = hf_source_directory(model.spec, source) if source else None
    if directory is None:
        return to_hf_model(model)
    param = model.token_table.weight
    hf_model = format_for_spec(model.spec).hf_class().from_pretrained(Path(directory), dtype=param.dtype)
    return hf_model.to(param.device).eval()


REFERENCES = ("hf",)  # what a model can be verified against


def verify(model: nn.Module, against: str = "hf", weights: str | None = None, tokenizer=None,
           prompts=None, steps: int = 20, atol: float | None = None, label: str | None = None) -> ParityReport:
    """Check zoo ``model`` against its family's transformers class (``GPT2LMHeadModel``,
    ``LlamaForCausalLM``, ...; a translator: ``MarianMTModel``) and return the report
    (``report.passed``, ``report.lines()``).

    ``weights``: where ``model``'s weights came from (default: the directory :func:`zoo.load`
    read it from); a Hugging Face checkpoint there ("hf", a hub id or a directory) is loaded by
    transformers itself, anything else (None, a zoo model directory) gives the reference
    ``model``'s own weights; a translator's is its training run, whose vocabulary the
    reference reads. ``tokenizer``: a tokenizer or its directory (default: the checkpoint's
    ``tokenizer.json``, or for GPT-2 the copy shipped with zoo). ``prompts``: texts to compare
    on (default: four of the family's kind). ``label`` names the weights in the report
    (default: ``weights``).
    """
    if against not in REFERENCES:
        raise ZooError(f"cannot verify against {against!r}; choose one of: {', '.join(REFERENCES)}")
    loaded_from = getattr(model, "loaded_from", None)
    if model.spec.is_encoder_decoder:
        run_dir = weights or loaded_from
        if run_dir is None:
            raise ZooError("a translator is verified with its training run's vocabulary: "
                           "zoo.verify(zoo.load(RUN_DIR)), or zoo verify RUN_DIR")
        return verify_translator(model, run_dir, prompts or TRANSLATION_PROMPTS, steps, atol, label=label)
    problem = layout_problem(model.spec)
    if problem:
        raise ZooError(f"cannot verify against {against}: {problem}")
    weights = weights if weights is not None else (str(loaded_from) if loaded_from is not None else None)
    reference = hf_reference(model, weights)
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        tokenizer = tokenizer_for(model.spec, tokenizer, getattr(reference, "name_or_path", None) or None)
    return verify_against_hf(model, reference, tokenizer, prompts or PROMPTS, steps, atol,
                             weights=label or weights or "the model's own")


TRANSLATION_PROMPTS = (
    "Tom sees the red cat.",
    "The quick brown fox jumps over the lazy dog.",
    "Where is the station? I don't know.",
    "She has a new book",
)


def first_tokens(hf_tokens: torch.Tensor, eos: int) -> list[list[int]]:
    """``generate()``'s rows (B, T) as the zoo's greedy search returns them: no start token, cut at ``</s>``."""
    rows = []
    for row in hf_tokens[:, 1:].tolist():
        rows.append(row[: row.index(eos)] if eos in row else row)
    return rows


@torch.inference_mode()
def verify_translator(model: nn.Module, run_dir: str | Path, prompts=TRANSLATION_PROMPTS, steps: int = 20,
                      atol: float | None = None, label: str | None = None) -> ParityReport:
    """Check zoo translator ``model`` (trained in ``run_dir``, whose vocabulary it reads) against
    transformers' ``MarianMTModel`` holding the same weights, as ``zoo export --format hf``
    writes them: logits of each sentence alone and of the right-padded batch (teacher-forced
    on the zoo's own greedy translation), and greedy tokens against ``generate()``."""
    from zoo.hf.marian import marian_tokenizer, shared_vocabulary_problem
    from zoo.translation.search import greedy_search
    from zoo.translation.vocabulary import BOS_ID, EOS_ID, PAD_ID, Vocabulary

    spec = model.spec
    problem = layout_problem(spec) or shared_vocabulary_problem(Path(run_dir))
    if problem:
        raise ZooError(f"cannot verify against hf: {problem}")
    param = model.token_table.weight
    atol = atol if atol is not None else DEFAULT_ATOL.get(param.dtype, 1e-2)
    fmt = format_for_spec(spec)
    report = ParityReport(spec.name, label or str(run_dir), str(param.dtype).removeprefix("torch."), atol,
                          reference=fmt.architecture)
    hf_model = to_hf_model(model, fmt).to(param.device)
    tokenizer = marian_tokenizer(Vocabulary.load(run_dir).source, spec.context_length)
    batch = tokenizer(list(prompts), padding=True, return_tensors="pt").to(param.device)
    src, mask = batch.input_ids, batch.attention_mask  # (B, S), right padding
    ours = greedy_search(model, src, mask, steps)
    targets = tokenizer.pad({"input_ids": [[BOS_ID, *row] for row in ours]}, return_tensors="pt")
    tgt, tgt_mask = targets.input_ids.to(param.device), targets.attention_mask.to(param.device)  # (B, T)

    for i, length in enumerate(mask.sum(1).tolist()):
        n = int(tgt_mask[i].sum())
        s, t = src[i : i + 1, :length], tgt[i : i + 1, :n]  # (1, S_i), (1, T_i)
        diff, rel = logit_difference(model(s, t), hf_model(input_ids=s, decoder_input_ids=t).logits)
        report.checks.append(Check(f"sentence {i + 1} ({length}+{n} tokens)", diff <= atol, diff, rel))
    real = tgt_mask.bool()
    diff, rel = logit_difference(model(src, tgt, mask)[real],
                                 hf_model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits[real])
    report.checks.append(Check(f"padded batch ({src.shape[0]}x{src.shape[1]}, right)", diff <= atol, diff, rel))

    theirs = first_tokens(hf_model.generate(input_ids=src, attention_mask=mask, max_new_tokens=steps,
                                            do_sample=False, num_beams=1, decoder_start_token_id=BOS_ID,
                                            eos_token_id=EOS_ID, pad_token_id=PAD_ID).cpu(), EOS_ID)
    same = ours == theirs
    detail = "tokens identical" if same else next(f"sentence {i + 1} differs: {a} vs {b}"
                                                   for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    report.checks.append(Check(f"greedy {steps} steps vs generate()", same, detail=detail))
    uncached = greedy_search(model, src, mask, steps, use_cache=False)
    same = ours == uncached
    report.checks.append(Check(f"greedy {steps} steps, cache vs none", same,
                               detail="tokens identical" if same else "cached and uncached greedy tokens differ"))
    return report
