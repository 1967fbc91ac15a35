"""Verify an ONNX export: run it in ONNX Runtime next to PyTorch on several shapes.

Batch 1 and 3 (rows of batch 3 left-padded by 0, 2 and 5 tokens), new sequence 1 and
17, and with a key/value cache a past of 0 and 9 tokens that the runtime itself filled.
The export goes through :func:`zoo.exporters.onnx.runtime.load`, the same path users take, and every
logit is compared: ``|onnx - torch| <= atol + rtol * |torch|``. PyTorch's side runs first, for every
case (:func:`torch_reference`), and ONNX Runtime's after, so the model's weights need not be in
memory while the export is quantized and run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator

import torch
from torch import nn

# (atol, rtol): fp32 keeps the 1e-4 absolute (rtol only matters for the large
# logits of trained models); fp16 rounds each activation to 11 bits.
TOLERANCES = {torch.float32: (1e-4, 1e-5), torch.float16: (2e-2, 1e-2)}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16"}
BATCHES = (1, 3)
SEQUENCES = (1, 17)
PASTS = (0, 9)
SOURCE = 13
PADDING = (0, 2, 5)  # left padding of each row of a batch (right padding for sources)


@dataclass
class Case:
    """One comparison of ONNX Runtime against PyTorch."""

    output: str
    batch: int
    sequence: int
    past: int
    padded: bool
    max_abs_diff: float
    tolerance: str
    passed: bool

    def describe(self) -> str:
        pad = ", padded" if self.padded else ""
        return f"{self.output}, batch {self.batch}, sequence {self.sequence}, past {self.past}{pad}"


class Report:
    """What both verification reports share: ``summary()`` merged into the dict form."""

    def summary(self) -> dict:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {**asdict(self), **self.summary()}

    def verdict(self) -> str:
        return "passed" if self.passed else "FAILED"


@dataclass
class VerificationReport(Report):
    model: str
    dtype: str
    provider: str
    cases: list[Case]

    @property
    def passed(self) -> bool:
        return all(case.passed for case in self.cases)

    def worst(self) -> Case:
        failed = [c for c in self.cases if not c.passed] or self.cases
        return max(failed, key=lambda c: c.max_abs_diff)

    def summary(self) -> dict:
        return {"passed": self.passed, "case_count": len(self.cases), "provider": self.provider,
                "max_abs_diff": max(c.max_abs_diff for c in self.cases), "tolerance": self.cases[0].tolerance}

    def text(self) -> str:
        """The report as a table, headed by its verdict."""
        verdict = self.verdict()
        lines = [f"verification of {self.model} ({self.dtype}, ONNX Runtime {self.provider} vs PyTorch): "
                 f"{len(self.cases)} cases, max |difference| {max(c.max_abs_diff for c in self.cases):.2e}, "
                 f"tolerance {self.cases[0].tolerance}: {verdict}"]
        header = ("output", "batch", "sequence", "past", "padded", "max |diff|", "result")
        rows = [(c.output, c.batch, c.sequence, c.past, "yes" if c.padded else "no", f"{c.max_abs_diff:.2e}",
                 "ok" if c.passed else "MISMATCH") for c in self.cases]
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        for row in (header, *rows):
            lines.append("  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
        return "\n".join(lines)


def padded_mask(batch: int, length: int, left: bool = True) -> torch.Tensor:
    """A (batch, length) mask whose row i has ``PADDING[i]`` padding tokens (at least one real)."""
    mask = torch.ones(batch, length, dtype=torch.int64)
    for row in range(batch):
        pad = min(PADDING[row % len(PADDING)], length - 1)
        if pad and left:
            mask[row, :pad] = 0
        elif pad:
            mask[row, length - pad:] = 0
    return mask


def compare(output: str, onnx_out: torch.Tensor, torch_out: torch.Tensor, shape: tuple, padded: bool,
            tolerance: tuple[float, float]) -> Case:
    atol, rtol = tolerance
    got, want = onnx_out.detach().float().cpu(), torch_out.detach().float().cpu()
    diff = (got - want).abs()
    passed = got.shape == want.shape and bool((diff <= atol + rtol * want.abs()).all())
    return Case(output, *shape, padded, float(diff.max()) if diff.numel() else 0.0,
                f"{atol:g} + {rtol:g}*|torch|", passed)


@dataclass
class DecoderInput:
    """One decoder case: ``past`` tokens fill the cache, then ``sequence`` more are run."""

    ids: torch.Tensor  # (B, past + sequence)
    mask: torch.Tensor  # (B, past + sequence), left-padded
    past: int
    last_only: bool

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.ids.shape[0], self.ids.shape[1] - self.past, self.past

    @property
    def padded(self) -> bool:
        return bool((self.mask == 0).any())


@dataclass
class SourceInput:
    """One encoder-decoder case: a source batch (right-padded), then decoder cases on its memory."""

    src: torch.Tensor  # (B, SOURCE)
    src_mask: torch.Tensor
    steps: list[DecoderInput]

    @property
    def padded(self) -> bool:
        return bool((self.src_mask == 0).any())


@dataclass
class Reference:
    """PyTorch's side of a verification: what every case feeds and what the model gave back.

    It is taken before ONNX Runtime opens the export, so that the model's weights can wait on
    disk (:func:`zoo.core.paging.weights_on_disk`) while the export is quantized and run.
    ``outputs``: per input, the logits of a decoder; (memory, [logits per step]) of an
    encoder-decoder."""

    model: str
    dtype: torch.dtype
    device: str
    inputs: list
    outputs: list

    @property
    def encoder_decoder(self) -> bool:
        return bool(self.inputs) and isinstance(self.inputs[0], SourceInput)

    def run(self, lm) -> list:
        """The same cases on ``lm`` (an ONNX Runtime model), fed from the CPU."""
        with torch.inference_mode():
            return (run_encoder_decoder if self.encoder_decoder else run_decoder)(lm, self.inputs, "cpu")

    def pairs(self, lm) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, DecoderInput | SourceInput, bool]]:
        """``(output, got, want, case, padded)`` for every output of :meth:`run` on ``lm`` beside
        PyTorch's: an encoder-decoder's ``"memory"`` (``case``: its :class:`SourceInput`) and
        then its decoder steps' ``"logits"``; a decoder's ``"logits"`` or ``"last logits"``.
        ``padded``: whether padding took part (the source's or the case's own)."""
        for case, got, want in zip(self.inputs, self.run(lm), self.outputs):
            if isinstance(case, SourceInput):
                (got_memory, got_steps), (want_memory, want_steps) = got, want
                yield "memory", got_memory, want_memory, case, case.padded
                for step, g, w in zip(case.steps, got_steps, want_steps):
                    yield "logits", g, w, step, case.padded or step.padded
            else:
                yield "last logits" if case.last_only else "logits", got, want, case, case.padded


def torch_reference(model: nn.Module, kv_cache: bool, quantized: bool = False, seed: int = 0) -> Reference:
    """Run ``model`` (in the export's dtype) on every case a verification compares: batch,
    sequence and, with ``kv_cache``, past lengths; every logit, and for a float export the
    last position's alone too (as generation asks for it)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    vocab = model.spec.vocab_size
    model.eval()
    if model.spec.is_encoder_decoder:
        inputs, run = source_inputs(vocab, kv_cache, generator, BATCHES), run_encoder_decoder
    else:
        inputs, run = decoder_inputs(vocab, kv_cache, generator, BATCHES, False), run_decoder
        if not quantized:
            inputs += decoder_inputs(vocab, kv_cache, generator, BATCHES[-1:], True)
    with torch.inference_mode():
        outputs = run(model, inputs, device)
    return Reference(model.spec.name, next(model.parameters()).dtype, device.type, inputs, outputs)


def verify_export(reference: Reference, directory) -> VerificationReport:
    """Compare the export in ``directory`` with PyTorch's outputs in ``reference``.

    ONNX Runtime reads the weights from the export's memory-mapped file instead of packing a
    copy of them beside the model's (gpt2-xl: 5.9 GB less anonymous memory)."""
    from zoo.exporters.onnx.runtime import load

    runtime = load(directory, device=reference.device, prepack=False)
    tolerance = TOLERANCES[reference.dtype]
    cases = [compare(output, got, want, (len(case.src), SOURCE, 0) if output == "memory" else case.shape, padded,
                     tolerance) for output, got, want, case, padded in reference.pairs(runtime)]
    return VerificationReport(reference.model, DTYPE_NAMES[reference.dtype], runtime.provider, cases)


def _ids(generator, vocab: int, batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=generator)


def decoder_inputs(vocab: int, kv_cache: bool, generator, batches, last_only: bool) -> list[DecoderInput]:
    return [DecoderInput(_ids(generator, vocab, batch, past + sequence), padded_mask(batch, past + sequence), past,
                         last_only)
            for batch in batches for sequence in SEQUENCES for past in (PASTS if kv_cache else (0,))]


def source_inputs(vocab: int, kv_cache: bool, generator, batches) -> list[SourceInput]:
    out = []
    for batch in batches:
        src = _ids(generator, vocab, batch, SOURCE)
        out.append(SourceInput(src, padded_mask(batch, SOURCE, left=False),
                               decoder_inputs(vocab, kv_cache, generator, (batch,), False)))
    return out


def run_decoder(lm, inputs: list[DecoderInput], device) -> list[torch.Tensor]:
    """The logits each case gives on ``lm`` (PyTorch or ONNX Runtime), on the CPU; the cache
    is filled by ``lm`` itself."""
    outputs = []
    for case in inputs:
        ids, mask = case.ids.to(device), case.mask.to(device)
        cache = lm.new_cache(ids.shape[0], ids.shape[1])
        if case.past:
            lm(ids[:, :case.past], attention_mask=mask[:, :case.past], cache=cache, last_only=case.last_only)
        out = lm(ids[:, case.past:], attention_mask=mask, cache=cache, last_only=case.last_only)
        outputs.append(out.detach().cpu())
    return outputs


def run_encoder_decoder(lm, inputs: list[SourceInput], device) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """Per source batch, the memory ``lm`` encodes and the logits of each decoder case on it,
    on the CPU; each side decodes from its own memory and fills its own cache."""
    outputs = []
    for case in inputs:
        src_mask = case.src_mask.to(device)
        memory = lm.encode(case.src.to(device), src_mask)
        steps = []
        for step in case.steps:
            ids, mask = step.ids.to(device), step.mask.to(device)
            cache = lm.new_cache(ids.shape[0], ids.shape[1])
            if step.past:
                lm.decode(ids[:, :step.past], memory, src_mask, mask[:, :step.past], cache=cache)
            steps.append(lm.decode(ids[:, step.past:], memory, src_mask, mask, cache=cache).detach().cpu())
        outputs.append((memory.detach().cpu(), steps))
    return outputs


# --------------------------------------------------------------------------- quantized exports
#
# Weight-only int8/int4 moves every logit a little, so a quantized export is judged against
# the fp32 model on what quantization should keep, over the same shapes as above:
#   top-1 agreement: the share of real (unpadded) positions whose argmax token is the same;
#   relative error: RMS(onnx - torch) / RMS(torch - its per-position mean), pooled over
#   every real position (the memory of an encoder counts too).
# A broken graph (a table read in the wrong layout, a head that lost its transpose, a
# dropped layer) agrees on about 1/V of the positions with a relative error near 1 or
# above, far outside these bounds. Measured with random weights (README, "Quantized
# ONNX"): int8 agrees on 99-100% with relative error ~0.02; int4 on 88-100% with ~0.15-0.35;
# a trained model's peaked logits agree more. Agreement counts decisive positions only (see
# :func:`decisive_positions`): full-size GPT-2 with random weights has near-flat logits.
QUANTIZED_THRESHOLDS = {"int8": {"top1_agreement": 0.95, "relative_error": 0.1},
                        "int4": {"top1_agreement": 0.7, "relative_error": 0.5}}


@dataclass
class QuantizedCase:
    """One shape on which a quantized export ran next to the fp32 model."""

    output: str
    batch: int
    sequence: int
    past: int
    positions: int
    top1_agreement: float | None  # None for the encoder's memory
    relative_error: float
    finite: bool


@dataclass
class QuantizedReport(Report):
    model: str
    scheme: str
    provider: str
    thresholds: dict
    cases: list[QuantizedCase]
    top1_agreement: float
    relative_error: float

    @property
    def passed(self) -> bool:
        return (all(c.finite for c in self.cases) and self.top1_agreement >= self.thresholds["top1_agreement"]
                and self.relative_error <= self.thresholds["relative_error"])

    def failure(self) -> str:
        """What failed, in one clause."""
        if not all(c.finite for c in self.cases):
            return "it produced NaN or infinite values"
        return (f"top-1 agreement {self.top1_agreement:.1%} (at least {self.thresholds['top1_agreement']:.0%}), "
                f"relative logit error {self.relative_error:.3f} (at most {self.thresholds['relative_error']})")

    def summary(self) -> dict:
        return {"passed": self.passed, "case_count": len(self.cases), "provider": self.provider,
                "scheme": self.scheme, "top1_agreement": self.top1_agreement,
                "relative_error": self.relative_error, "thresholds": self.thresholds}

    def text(self) -> str:
        verdict = self.verdict()
        lines = [f"verification of {self.model} ({self.scheme} weights, ONNX Runtime {self.provider} vs fp32 PyTorch): "
                 f"top-1 agreement {self.top1_agreement:.1%} (>= {self.thresholds['top1_agreement']:.0%}), "
                 f"relative logit error {self.relative_error:.3f} (<= {self.thresholds['relative_error']}): {verdict}"]
        for c in self.cases:
            top1 = "" if c.top1_agreement is None else f", top-1 {c.top1_agreement:.0%}"
            lines.append(f"  {c.output} batch {c.batch} sequence {c.sequence} past {c.past}: "
                         f"{c.positions} positions{top1}, relative error {c.relative_error:.3f}")
        return "\n".join(lines)


class Agreement:
    """Pooled top-1 agreement and relative error over the real positions of many cases."""

    def __init__(self) -> None:
        self.cases: list[QuantizedCase] = []
        self.agree = self.positions = 0
        self.error = self.spread = 0.0

    def add(self, output: str, got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor, past: int,
            logits: bool = True) -> None:
        """``got``/``want``: (B, T, F); ``mask``: (B, T), 1 at real positions."""
        got, want = got.detach().float().cpu(), want.detach().float().cpu()
        real = mask.bool()
        g, w = got[real], want[real]  # (P, F)
        error = float(((g - w) ** 2).sum())
        spread = float(((w - w.mean(-1, keepdim=True)) ** 2).sum())
        decisive = decisive_positions(g, w) if logits else torch.zeros(len(g), dtype=torch.bool)
        agree = int((g.argmax(-1) == w.argmax(-1))[decisive].sum())
        self.error, self.spread = self.error + error, self.spread + spread
        if logits:
            self.agree, self.positions = self.agree + agree, self.positions + int(decisive.sum())
        batch, sequence = got.shape[:2]
        self.cases.append(QuantizedCase(output, batch, sequence, past, len(g),
                                        agree / int(decisive.sum()) if logits and bool(decisive.any()) else None,
                                        (error / max(spread, 1e-30)) ** 0.5, bool(torch.isfinite(got).all())))

    def report(self, model: str, scheme: str, provider: str) -> QuantizedReport:
        agreement = self.agree / self.positions if self.positions else 1.0  # no decisive position: error decides
        return QuantizedReport(model, scheme, provider, QUANTIZED_THRESHOLDS[scheme], self.cases,
                               agreement, (self.error / max(self.spread, 1e-30)) ** 0.5)


def decisive_positions(got: torch.Tensor, want: torch.Tensor, margin: float = 3.0) -> torch.Tensor:
    """Positions (P,) where fp32's top-1 leads its runner-up by more than ``margin`` times the
    position's RMS quantization error: there a flip is the graph's fault, not noise. Random
    weights give near-flat logits whose argmax any rounding moves, so top-1 agreement is
    counted on decisive positions only (the relative error covers the rest)."""
    top2 = want.topk(2, dim=-1).values  # (P, 2)
    noise = (got - want).pow(2).mean(-1).sqrt()  # (P,)
    return (top2[:, 0] - top2[:, 1]) > margin * noise


def verify_quantized_export(reference: Reference, directory, scheme: str) -> QuantizedReport:
    """Compare the quantized export in ``directory`` with the fp32 model's outputs in ``reference``."""
    from zoo.exporters.onnx.runtime import load

    runtime = load(directory, device="cpu")
    agreement = Agreement()
    for output, got, want, case, _ in reference.pairs(runtime):
        if output == "memory":
            agreement.add("memory", got, want, case.src_mask, 0, logits=False)
        else:
            agreement.add("logits", got, want, case.mask[:, case.past:], case.past)
    return agreement.report(reference.model, scheme, runtime.provider)
