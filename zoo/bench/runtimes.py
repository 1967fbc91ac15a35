"""The runtimes side by side: prefill and decode on the same weights.

``torch`` is the zoo's PyTorch model with :func:`zoo.generation.sampling.generate`;
``onnxruntime`` is its ONNX export through :mod:`zoo.exporters.onnx.runtime`, driven by the same
generate loop; ``onnxruntime-int8`` / ``onnxruntime-int4`` are the same export with
weight-only quantized weights (``zoo export --quantize``); ``hf`` is
the checkpoint family's transformers model (``GPT2LMHeadModel`` for GPT-2) with its own ``generate``. All load one checkpoint
in Hugging Face layout, so they compute the same thing (the quantized ones approximately).

* Prefill: a prompt of B x 128 tokens into an empty cache, logits of the last position.
  FLOP = 2·(linear weights)·B·T + causal attention 2·layers·B·d·T·(T+1) (QKᵀ and AV
  over T(T+1)/2 query-key pairs) + 2·V·d·B for the LM head; layer norms, GELU and
  biases are not counted.
* Decode: greedy generation of N tokens after the prompt; each new token is
  timestamped, and tokens/s = B·(N-1) / (last stamp - first stamp), so the prompt is
  not in it. Bytes a step reads = every weight once (a tied head once, the position
  table but one row) + the cached keys and values (2·layers·B·kv_heads·head_dim·keys·4).
  The ceiling is always the fp32 model's, so a quantized runtime, which reads fewer bytes
  per weight, shows as a multiple of it (above 1).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from zoo.bench.ceilings import GiB, BandwidthProbe, device_sync
from zoo.bench.options import ONNX_RUNTIMES, RUNTIMES, BenchOptions
from zoo.bench.timing import figure, rate, time_call
from zoo.core.spec import ModelSpec
from zoo.errors import ZooError, first_line


class TokenClock:
    """Timestamps each generated token: zoo's ``stream`` callback and a transformers streamer."""

    def __init__(self, sync) -> None:
        self.sync = sync
        self.stamps: list[float] = []
        self.prompt_seen = False

    def __call__(self, tokens) -> None:
        self.sync()
        self.stamps.append(time.perf_counter())

    def put(self, value) -> None:  # transformers hands over the prompt first
        if self.prompt_seen:
            self.stamps.append(time.perf_counter())  # value is already on the CPU: synchronised
        self.prompt_seen = True

    def end(self) -> None:
        pass


# --------------------------------------------------------------------------- contenders


class ZooContender:
    """A model with :class:`zoo.core.model.DecoderLM`'s call protocol: PyTorch or ONNX Runtime."""

    def __init__(self, name: str, model, batch: int = 1) -> None:
        from zoo.generation.sampling import prepare_for_decode

        self.name = name
        self.model = model
        prepare_for_decode(model, batch)  # as zoo.generate does for the largest batch: prefill is timed on the same layers

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        cache = self.model.new_cache(ids.shape[0], ids.shape[1])
        return self.model(ids, cache=cache, last_only=True)  # (B, 1, V)

    def generate(self, ids: torch.Tensor, new_tokens: int, clock: TokenClock) -> torch.Tensor:
        from zoo.generation.sampling import generate

        return generate(self.model, ids, max_new_tokens=new_tokens, stream=clock)


class HFContender:
    """The transformers model of the checkpoint family (``GPT2LMHeadModel`` for GPT-2): its forward
    with ``logits_to_keep=1``, and ``generate``."""

    name = "hf"

    def __init__(self, model) -> None:
        self.model = model

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, use_cache=True, logits_to_keep=1).logits  # (B, 1, V)

    def generate(self, ids: torch.Tensor, new_tokens: int, clock: TokenClock) -> torch.Tensor:
        eos = self.model.config.eos_token_id
        return self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                   min_new_tokens=new_tokens, do_sample=False, streamer=clock,
                                   pad_token_id=eos if eos is not None else 0)


def matmul_parameters(model: nn.Module) -> int:
    """Weights of every linear layer but the LM head (one multiply-add each per token)."""
    return sum(m.weight.numel() for name, m in model.named_modules() if isinstance(m, nn.Linear) and name != "lm_head")


def prefill_flops(spec: ModelSpec, model: nn.Module, batch: int, tokens: int) -> int:
    """FLOP of a prefill that returns the last position's logits: 2 per multiply-add in
    the linear layers, causal attention (QKᵀ and AV over T(T+1)/2 pairs) and the head."""
    layers = spec.n_layers
    attention = 2 * layers * batch * spec.n_heads * spec.head_dim * tokens * (tokens + 1)
    head = 2 * spec.vocab_size * spec.d_model * batch
    return 2 * matmul_parameters(model) * batch * tokens + attention + head


def weight_bytes_per_step(model: nn.Module) -> int:
    """Bytes of weights a decode step reads: every parameter once (a tied head once),
    less the position table, of which a step reads one row."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    positional = getattr(model, "positional", None)
    if positional is not None:
        total -= sum(p.numel() * p.element_size() for p in positional.parameters())
    return total


def kv_bytes_per_step(spec: ModelSpec, batch: int, keys: float, element_size: int) -> float:
    """Bytes of cached keys and values attention reads in one decode step over ``keys`` positions."""
    return 2 * spec.n_layers * batch * spec.n_kv_heads * spec.head_dim * keys * element_size


def load_contenders(spec: ModelSpec, options: BenchOptions, workdir: Path, threads: int, steps):
    """The runtimes to measure, the PyTorch model they share weights with, rows for the
    runtimes that cannot run, and the ONNX export rows (with torch-bf16's accuracy row)."""
    from zoo.bench.build import hf_model_class, write_hf_checkpoint
    from zoo.hf.checkpoint import load_weights
    from zoo.hf.formats import layout_problem

    device = options.device
    unavailable, contenders, exports = [], [], []
    problem = layout_problem(spec)
    if problem is None:
        write_hf_checkpoint(spec, workdir / "hf", seed=options.seed)
        model = load_weights(spec, str(workdir / "hf"), device=device, dtype=torch.float32)
    else:  # no Hugging Face twin: the zoo runtimes still run on a seeded random init
        from zoo.core.builder import build

        model = build(spec, seed=options.seed, device=device)
    if "torch-bf16" in options.runtimes:  # the same weights in bfloat16, and what rounding them costs
        from zoo.exporters.onnx.exporter import model_in_dtype

        bf16 = model_in_dtype(model, spec, torch.bfloat16)
        exports.append(accuracy_row(model, bf16, "torch-bf16", options.seed))
        contenders.append(ZooContender("torch-bf16", bf16, max(options.batches)))
    if "torch" in options.runtimes:
        contenders.append(ZooContender("torch", model, max(options.batches)))
    for name in [r for r in options.runtimes if r in ONNX_RUNTIMES]:
        steps(f"export to ONNX ({name})")
        try:
            row, runtime_model = export_onnx(spec, model, workdir / name, device, threads, ONNX_RUNTIMES[name], name)
            exports.append(row)
            contenders.append(ZooContender(name, runtime_model))
        except (ZooError, ImportError) as exc:
            unavailable.append({"measure": "onnx_export", "runtime": name, "not_available": first_line(exc)})
    add_size_ratios([r for r in exports if r["measure"] == "onnx_export"])
    if "hf" in options.runtimes:
        if problem is not None:
            unavailable.append({"measure": "all", "runtime": "hf",
                                "not_available": f"no Hugging Face model for this spec: {problem}"})
        else:
            hf = hf_model_class(spec).from_pretrained(workdir / "hf", dtype=torch.float32).to(device).eval()
            contenders.append(HFContender(hf))
    return contenders, unavailable, model, exports


def accuracy_row(reference: nn.Module, model: nn.Module, runtime: str, seed: int) -> dict:
    """How far ``model``'s logits are from ``reference``'s (fp32) on two random 128-token prompts,
    in the measures quantized exports state: top-1 agreement on decisive positions and the
    relative logit error (:class:`zoo.exporters.onnx.verification.Agreement`)."""
    from zoo.exporters.onnx.verification import Agreement

    ids = torch.randint(0, reference.spec.vocab_size, (2, 128), generator=torch.Generator().manual_seed(seed))
    ids = ids.to(next(reference.parameters()).device)
    agreement = Agreement()
    with torch.inference_mode():
        agreement.add("logits", model(ids).float(), reference(ids), torch.ones_like(ids).cpu(), 0)
    case = agreement.cases[0]
    return {"measure": "accuracy", "runtime": runtime, "positions": case.positions,
            "decisive_positions": agreement.positions,
            "top1_agreement": agreement.agree / agreement.positions if agreement.positions else 1.0,
            "relative_error": case.relative_error}


def export_onnx(spec: ModelSpec, model: nn.Module, out: Path, device: str, threads: int,
                quantize: str | None = None, name: str = "onnxruntime"):
    """Export with a key/value cache (fp32 or ``quantize``d weights, no verification), timed
    once; then load it."""
    from zoo.core.export import export_model
    from zoo.core.registry import get_registry

    start = time.perf_counter()
    options = {"quantize": quantize} if quantize else {}
    manifest = export_model(model, spec, out, "onnx", kv_cache=True, dtype="fp32", verify=False, **options)
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    graph_bytes = sum(p.stat().st_size for p in out.glob("*.onnx*") if p.is_file())  # graphs + weights
    weights = f"{quantize} weights, block {manifest['quantization']['block_size']}" if quantize else "fp32"
    row = {"measure": "onnx_export", "runtime": name, "opset": manifest.get("opset"),
           "seconds": figure([seconds], "s"), "bytes": size, "graph_bytes": graph_bytes,
           "weights": weights,
           "note": f"one export (kv_cache, {weights}, verify=False), timed cold"}
    runtime_model = get_registry().get("runtime", "onnxruntime")(out, device=device, threads=threads)
    if getattr(runtime_model, "device", torch.device(device)).type != torch.device(device).type:
        raise ZooError(f"ONNX Runtime cannot run on {device} here")
    return row, runtime_model


def add_size_ratios(exports: list[dict]) -> None:
    """``vs_fp32_bytes`` on each quantized export row: its graphs and weights over the fp32 export's."""
    fp32 = next((r for r in exports if r["runtime"] == "onnxruntime"), None)
    for row in exports:
        if fp32 is not None and row is not fp32:
            row["vs_fp32_bytes"] = row["graph_bytes"] / fp32["graph_bytes"]


def measure_runtimes(spec: ModelSpec, model: nn.Module, contenders, options: BenchOptions, ceilings: dict,
                     steps) -> list[dict]:
    """Prefill and decode rows for every contender: prefill as a fraction of ``ceilings``'
    ``fp32_flop_per_s``, decode of the read bandwidth measured between its own runs.

    PyTorch and Hugging Face take turns run by run (after each has had its warm-up), so
    that a change in the machine's load falls on both alike. ONNX Runtime is measured
    after them, each session on its own, one after the other: a session's idle worker
    threads keep spinning for a while after each run, and a PyTorch run or another session's
    right after one would be measured against a busy core (GPT-2 Small's prefill took 184 ms
    right after another session's run and 128 ms with no other session's threads about).
    """
    generator = torch.Generator().manual_seed(options.seed)
    probe = BandwidthProbe(options.device, (64 << 20) if options.tiny else GiB)
    groups = [[c for c in contenders if c.name not in ONNX_RUNTIMES], [c for c in contenders if c.name in ONNX_RUNTIMES]]
    rows = []
    for group in filter(None, groups):
        for measure in ("prefill", "decode"):
            for batch in options.batches:
                label = f"{batch}x{options.prompt_tokens}" if measure == "prefill" else f"batch {batch}"
                steps(f"{measure} {label}: {' and '.join(c.name for c in group)}")
                ids = torch.randint(0, spec.vocab_size, (batch, options.prompt_tokens), generator=generator)
                samples, bandwidths = take_turns(group, measure, ids.to(options.device), options,
                                                 probe if measure == "decode" else None,
                                                 alternate=group[0].name not in ONNX_RUNTIMES)
                for name, values in samples.items():
                    if measure == "prefill":
                        rows.append(prefill_row(spec, model, name, batch, options.prompt_tokens, values,
                                                ceilings["fp32_flop_per_s"]))
                    else:
                        rows.append(decode_row(spec, model, name, batch, options, values, bandwidths))
    add_hf_ratios(rows)
    order = {name: i for i, name in enumerate(RUNTIMES)}
    return sorted(rows, key=lambda r: (r["measure"] != "prefill", r["batch"], order[r["runtime"]]))


def take_turns(group, measure: str, ids: torch.Tensor, options: BenchOptions,
               probe: Callable[[], float] | None = None,
               alternate: bool = True) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds per prefill, or tokens/s per generation, of each contender in ``group``:
    warm-up runs, then timed runs, the contenders taking turns (with ``alternate``; else each
    contender's runs back to back, one contender after the other); and ``probe()``'s read
    bandwidth after each timed run."""
    sync = device_sync(options.device)

    def run(contender) -> float:
        if measure == "decode":
            return decode_speed(contender, ids, options.new_tokens, sync)
        with torch.inference_mode():
            return time_call(lambda: contender.prefill(ids), 0, 1, sync)[0]

    samples = {c.name: [] for c in group}
    bandwidths = []
    runs = range(options.warmup + options.repeats)
    order = [(index, c) for index in runs for c in group] if alternate else [(index, c) for c in group for index in runs]
    for index, contender in order:
        value = run(contender)
        if index >= options.warmup:
            samples[contender.name].append(value)
            if probe is not None:
                bandwidths.append(probe())
    return samples, bandwidths


def decode_row(spec: ModelSpec, model: nn.Module, runtime: str, batch: int, options: BenchOptions,
               speeds: list[float], bandwidths: list[float]) -> dict:
    """A decode row: tokens/s and its fraction of what the read bandwidth allows, the median read
    bandwidth measured between the runs of the same measurement (against the median tokens/s: on
    a shared machine single probes jumped from 30 to 50 GB/s and back within seconds)."""
    keys = options.prompt_tokens + options.new_tokens / 2  # mean keys read over the timed steps
    element = next(model.parameters()).element_size()
    step_bytes = weight_bytes_per_step(model) + kv_bytes_per_step(spec, batch, keys, element)
    bandwidth = figure(bandwidths, "B/s")
    ceiling = batch * bandwidth["median"] / step_bytes
    tokens = figure(speeds, "tokens/s")
    return {"measure": "decode", "runtime": runtime, "batch": batch, "past_tokens": options.prompt_tokens,
            "new_tokens": options.new_tokens, "tokens_per_s": tokens, "bytes_per_step": step_bytes,
            "read_bytes_per_s": bandwidth, "ceiling_tokens_per_s": ceiling,
            "fraction_of_bandwidth_ceiling": tokens["median"] / ceiling}


def prefill_row(spec: ModelSpec, model: nn.Module, runtime: str, batch: int, tokens: int, seconds: list[float],
                flop_ceiling: float) -> dict:
    """A prefill row: latency, FLOP/s and its fraction of the fp32 ceiling."""
    flops = prefill_flops(spec, model, batch, tokens)
    flop_rate = rate(seconds, flops, "FLOP/s")
    return {"measure": "prefill", "runtime": runtime, "batch": batch, "tokens": tokens,
            "latency_s": figure(seconds, "s"), "flops": flops, "flop_per_s": flop_rate,
            "fraction_of_flop_ceiling": flop_rate["median"] / flop_ceiling}


def decode_speed(contender, ids: torch.Tensor, new_tokens: int, sync) -> float:
    """Tokens/s of one greedy generation after the prompt: (B · (N - 1)) / (last - first stamp)."""
    clock = TokenClock(sync)
    contender.generate(ids, new_tokens, clock)
    if len(clock.stamps) != new_tokens:
        raise ZooError(f"{contender.name}: generate produced {len(clock.stamps)} tokens, expected {new_tokens}")
    return ids.shape[0] * (new_tokens - 1) / (clock.stamps[-1] - clock.stamps[0])


def add_hf_ratios(rows: list[dict]) -> None:
    """``vs_hf`` on every non-HF row: its speed over Hugging Face's (above 1: faster)."""
    hf = {(r["measure"], r["batch"]): r for r in rows if r["runtime"] == "hf"}
    for row in rows:
        theirs = hf.get((row["measure"], row["batch"]))
        if theirs is None or row["runtime"] == "hf":
            continue
        if row["measure"] == "prefill":
            row["vs_hf"] = theirs["latency_s"]["median"] / row["latency_s"]["median"]
        else:
            row["vs_hf"] = row["tokens_per_s"]["median"] / theirs["tokens_per_s"]["median"]
