"""``zoo bench``: the zoo against Hugging Face and against the machine's own ceilings.

One run measures, on the same random weights (a GPT-2 checkpoint in Hugging Face layout
that every contender loads):

* the ceilings (:mod:`zoo.bench_ceilings`): matmul FLOP/s and read bandwidth;
* prefill, a prompt of 1x128 and 4x128 tokens into an empty cache, and its fraction of
  the fp32 FLOP ceiling: 2·(matmul parameters)·tokens, plus causal attention
  2·layers·batch·d·T·(T+1), plus the LM head for the last position;
* decode, tokens/s of greedy generation after a 128-token prompt at batch 1 and 4
  (timestamps of each new token, the prompt excluded), and its fraction of the
  bandwidth ceiling: a step reads every weight once (the position table but one row)
  plus the cached keys and values;
* ONNX export time and size, and building gpt2-xl from a local safetensors file next
  to ``GPT2LMHeadModel.from_pretrained`` (:mod:`zoo.bench_build`).

Runtimes: ``torch`` (the zoo's PyTorch model and :func:`zoo.generation.generate`),
``onnxruntime`` (its ONNX export through :mod:`zoo.runtime`, same generate loop) and
``hf`` (``transformers.GPT2LMHeadModel`` and its ``generate``). Every figure is the
median, min and max of ``repeats`` runs after ``warmup`` runs; what cannot be measured
is reported as not available with the reason, never as a number.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from zoo.bench_ceilings import best, device_sync, fp32_flop_ceiling, measure_ceilings
from zoo.bench_timing import figure, rate, time_call
from zoo.errors import ZooError
from zoo.spec import ModelSpec, load_spec

RUNTIMES = ("torch", "onnxruntime", "hf")
BUILD_MODEL = "gpt2-xl"
TINY_OVERRIDES = {"vocab_size": 512, "context_length": 256, "d_model": 64, "n_layers": 2, "attention.n_heads": 4,
                  "mlp.d_ff": 256, "dropout": 0.0, "bos_token_id": 511, "eos_token_id": 511}


@dataclass
class BenchOptions:
    """What ``zoo bench`` measures and how often."""

    model: str = "gpt2"
    overrides: dict = field(default_factory=dict)
    runtimes: tuple[str, ...] = RUNTIMES
    device: str = "cpu"
    threads: int | None = None  # None: every core this process may run on
    repeats: int = 5
    warmup: int = 1
    tiny: bool = False  # a tiny model and small ceilings, for the smoke test
    skip_xl: bool = False
    prompt_tokens: int = 128
    new_tokens: int = 32
    batches: tuple[int, ...] = (1, 4)
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [r for r in self.runtimes if r not in RUNTIMES]
        if unknown or not self.runtimes:
            raise ZooError(f"--runtime {','.join(self.runtimes)}: choose from {', '.join(RUNTIMES)} (comma-separated)")
        if self.repeats < 1 or self.warmup < 0:
            raise ZooError(f"--repeats must be >= 1 and --warmup >= 0 (got {self.repeats} and {self.warmup})")
        if self.new_tokens < 2:
            raise ZooError(f"--new-tokens must be >= 2 to time a decode step (got {self.new_tokens})")


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
    """A model with :class:`zoo.model.DecoderLM`'s call protocol: PyTorch or ONNX Runtime."""

    def __init__(self, name: str, model) -> None:
        self.name = name
        self.model = model

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        cache = self.model.new_cache(ids.shape[0], ids.shape[1])
        return self.model(ids, cache=cache, last_only=True)  # (B, 1, V)

    def generate(self, ids: torch.Tensor, new_tokens: int, clock: TokenClock) -> torch.Tensor:
        from zoo.generation import generate

        return generate(self.model, ids, max_new_tokens=new_tokens, stream=clock)


class HFContender:
    """``transformers.GPT2LMHeadModel``: its forward with ``logits_to_keep=1``, and ``generate``."""

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


# --------------------------------------------------------------------------- work per figure


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


# --------------------------------------------------------------------------- the run


class Steps:
    """Progress on stderr: a tqdm bar over the planned measurements, named as they start."""

    def __init__(self, total: int) -> None:
        self.bar = tqdm(total=total, desc="zoo bench", unit="step", file=sys.stderr, leave=False,
                        bar_format="{desc} {n_fmt}/{total_fmt} [{elapsed}] {postfix}")

    def __call__(self, name: str) -> None:
        if self.bar.n or self.bar.postfix:
            self.bar.update()
        self.bar.set_postfix_str(name)

    def close(self) -> None:
        self.bar.close()


def bench_spec(options: BenchOptions) -> ModelSpec:
    overrides = {**(TINY_OVERRIDES if options.tiny else {}), **options.overrides}
    return load_spec(options.model, overrides or None)


def build_spec(options: BenchOptions) -> ModelSpec:
    """The model of the build comparison: gpt2-xl, or the tiny model with ``tiny``."""
    return bench_spec(options) if options.tiny else load_spec(BUILD_MODEL)


def machine(options: BenchOptions, threads: int) -> dict:
    """Where the figures come from."""
    import onnxruntime
    import transformers

    out = {"platform": platform.platform(), "processor": cpu_name(), "cpus_usable": len(os.sched_getaffinity(0)),
           "threads": threads, "device": options.device, "python": platform.python_version(),
           "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__,
           "load_average_at_start": list(os.getloadavg())}
    if torch.device(options.device).type == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_bench(options: BenchOptions) -> dict:
    """Measure everything ``options`` asks for; return the report (see :mod:`zoo.bench_report`)."""
    device = options.device
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ZooError("--device cuda: PyTorch sees no CUDA device here; use --device cpu")
    spec = bench_spec(options)
    needed = options.prompt_tokens + options.new_tokens
    if needed > spec.context_length:
        raise ZooError(f"{spec.name}: a {options.prompt_tokens}-token prompt and {options.new_tokens} new tokens exceed "
                       f"its context length of {spec.context_length}")
    threads = options.threads or len(os.sched_getaffinity(0))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    workdir = Path(tempfile.mkdtemp(prefix="zoo-bench-"))
    groups = ("torch" in options.runtimes or "hf" in options.runtimes) + ("onnxruntime" in options.runtimes)
    total = 6 + 1 + 2 * len(options.batches) * groups + ("onnxruntime" in options.runtimes) + (0 if options.skip_xl else 3)
    steps = Steps(total)
    started = time.time()
    try:
        report = {
            "zoo_bench": 1,
            "model": spec.name,
            "tiny": options.tiny,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "options": {**asdict(options), "threads": threads},
            "machine": machine(options, threads),
            "ceilings": measure_ceilings(device, options.warmup, options.repeats, threads, options.tiny, steps),
        }
        flop_source, flop_ceiling = fp32_flop_ceiling(report["ceilings"])
        report["ceilings_used"] = {"fp32_flop_per_s": flop_ceiling, "fp32_flop_from": flop_source,
                                   "read_bytes_per_s": best(report["ceilings"]["read_bandwidth"])}
        steps("load the same random weights into every runtime")
        contenders, unavailable, model, export = load_contenders(spec, options, workdir, threads, steps)
        report["parameters"] = sum(p.numel() for p in model.parameters())
        report["weight_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
        results = list(unavailable) + ([export] if export else [])
        results += measure_runtimes(spec, model, contenders, options, report["ceilings_used"], steps)
        results += measure_builds(options, workdir, threads, steps)
        report["results"] = results
        from zoo.bench_report import evaluate_targets

        report["targets"] = evaluate_targets(report)
        report["seconds"] = time.time() - started
        report["machine"]["load_average_at_end"] = list(os.getloadavg())
        return report
    finally:
        steps.close()
        torch.set_num_threads(previous_threads)
        shutil.rmtree(workdir, ignore_errors=True)


def load_contenders(spec: ModelSpec, options: BenchOptions, workdir: Path, threads: int, steps):
    """The runtimes to measure, the PyTorch model they share weights with, rows for the
    runtimes that cannot run, and the ONNX export row."""
    from zoo.bench_build import write_hf_checkpoint
    from zoo.weights import gpt2_layout_problem, load_weights

    device = options.device
    unavailable, contenders, export = [], [], None
    problem = gpt2_layout_problem(spec)
    if problem is None:
        write_hf_checkpoint(spec, workdir / "hf", seed=options.seed)
        model = load_weights(spec, str(workdir / "hf"), device=device, dtype=torch.float32)
    else:  # no Hugging Face twin: the zoo runtimes still run on a seeded random init
        from zoo.builder import build

        model = build(spec, seed=options.seed, device=device)
    if "torch" in options.runtimes:
        contenders.append(ZooContender("torch", model))
    if "onnxruntime" in options.runtimes:
        steps("export to ONNX")
        try:
            export, runtime_model = export_onnx(spec, model, workdir / "onnx", device, threads)
            contenders.append(ZooContender("onnxruntime", runtime_model))
        except (ZooError, ImportError) as exc:
            unavailable.append({"measure": "onnx_export", "runtime": "onnxruntime", "not_available": one_line(exc)})
    if "hf" in options.runtimes:
        if problem is not None:
            unavailable.append({"measure": "all", "runtime": "hf",
                                "not_available": f"no Hugging Face GPT2LMHeadModel for this spec: {problem}"})
        else:
            from transformers import GPT2LMHeadModel

            hf = GPT2LMHeadModel.from_pretrained(workdir / "hf", dtype=torch.float32).to(device).eval()
            contenders.append(HFContender(hf))
    return contenders, unavailable, model, export


def export_onnx(spec: ModelSpec, model: nn.Module, out: Path, device: str, threads: int):
    """Export with a key/value cache (fp32, no validation), timed once; then load it."""
    from zoo.export import export_model
    from zoo.runtime import load

    start = time.perf_counter()
    manifest = export_model(model, spec, out, "onnx", kv_cache=True, dtype="fp32", validate=False)
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    row = {"measure": "onnx_export", "runtime": "onnxruntime", "opset": manifest.get("opset"),
           "seconds": figure([seconds], "s"), "bytes": size,
           "note": "one export (kv_cache, fp32, validate=False), timed cold"}
    runtime_model = load(out, device=device, threads=threads)
    if getattr(runtime_model, "device", torch.device(device)).type != torch.device(device).type:
        raise ZooError(f"ONNX Runtime cannot run on {device} here")
    return row, runtime_model


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def measure_runtimes(spec: ModelSpec, model: nn.Module, contenders, options: BenchOptions, ceilings: dict,
                     steps) -> list[dict]:
    """Prefill and decode rows for every contender, with their fractions of ``ceilings``
    (``fp32_flop_per_s`` and ``read_bytes_per_s``).

    PyTorch and Hugging Face take turns run by run (after each has had its warm-up), so
    that a change in the machine's load falls on both alike. ONNX Runtime is measured
    after them, on its own: its idle worker threads keep spinning for a while after each
    run, and a PyTorch run right after one would be measured against a busy core.
    """
    generator = torch.Generator().manual_seed(options.seed)
    groups = [[c for c in contenders if c.name != "onnxruntime"], [c for c in contenders if c.name == "onnxruntime"]]
    rows = []
    for group in filter(None, groups):
        for measure in ("prefill", "decode"):
            for batch in options.batches:
                label = f"{batch}x{options.prompt_tokens}" if measure == "prefill" else f"batch {batch}"
                steps(f"{measure} {label}: {' and '.join(c.name for c in group)}")
                ids = torch.randint(0, spec.vocab_size, (batch, options.prompt_tokens), generator=generator)
                samples = take_turns(group, measure, ids.to(options.device), options)
                for name, values in samples.items():
                    if measure == "prefill":
                        rows.append(prefill_row(spec, model, name, batch, options.prompt_tokens, values,
                                                ceilings["fp32_flop_per_s"]))
                    else:
                        rows.append(decode_row(spec, model, name, batch, options, values, ceilings["read_bytes_per_s"]))
    add_hf_ratios(rows)
    order = {name: i for i, name in enumerate(RUNTIMES)}
    return sorted(rows, key=lambda r: (r["measure"] != "prefill", r["batch"], order[r["runtime"]]))


def take_turns(group, measure: str, ids: torch.Tensor, options: BenchOptions) -> dict[str, list[float]]:
    """Seconds per prefill, or tokens/s per generation, of each contender in ``group``:
    warm-up runs, then timed runs, the contenders taking turns."""
    sync = device_sync(options.device)

    def run(contender) -> float:
        if measure == "decode":
            return decode_speed(contender, ids, options.new_tokens, sync)
        with torch.inference_mode():
            return time_call(lambda: contender.prefill(ids), 0, 1, sync)[0]

    samples = {c.name: [] for c in group}
    for index in range(options.warmup + options.repeats):
        for contender in group:
            value = run(contender)
            if index >= options.warmup:
                samples[contender.name].append(value)
    return samples


def decode_row(spec: ModelSpec, model: nn.Module, runtime: str, batch: int, options: BenchOptions,
               speeds: list[float], bandwidth: float) -> dict:
    """A decode row: tokens/s and its fraction of what the read bandwidth allows."""
    keys = options.prompt_tokens + options.new_tokens / 2  # mean keys read over the timed steps
    element = next(model.parameters()).element_size()
    step_bytes = weight_bytes_per_step(model) + kv_bytes_per_step(spec, batch, keys, element)
    ceiling = batch * bandwidth / step_bytes
    tokens = figure(speeds, "tokens/s")
    return {"measure": "decode", "runtime": runtime, "batch": batch, "past_tokens": options.prompt_tokens,
            "new_tokens": options.new_tokens, "tokens_per_s": tokens, "bytes_per_step": step_bytes,
            "ceiling_tokens_per_s": ceiling, "fraction_of_bandwidth_ceiling": tokens["median"] / ceiling}


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


def measure_builds(options: BenchOptions, workdir: Path, threads: int, steps) -> list[dict]:
    """gpt2-xl (or the tiny model) built from one local safetensors file by the zoo and by
    ``GPT2LMHeadModel.from_pretrained``, each run in its own process."""
    from zoo.bench_build import CONTENDERS, measure_build, write_hf_checkpoint

    spec = build_spec(options)
    if options.skip_xl:
        return [{"measure": "build", "runtime": c, "model": spec.name, "not_available": "skipped (--skip-xl)"}
                for c in CONTENDERS]
    steps(f"write a {spec.name} checkpoint")
    directory = workdir / "build"
    weight_bytes = write_hf_checkpoint(spec, directory / "hf", seed=options.seed)
    spec_path = directory / "spec.yaml"
    spec_path.write_text(spec.to_yaml(), encoding="utf-8")
    runs: dict[str, list[dict]] = {c: [] for c in CONTENDERS}
    repeats = min(options.repeats, 3)
    try:
        steps(f"build {spec.name}: warm-up" if options.warmup else f"build {spec.name}")
        for index in range(min(options.warmup, 1) + repeats):
            if index == min(options.warmup, 1):
                steps(f"build {spec.name}: {repeats} runs each")
            for contender in CONTENDERS:  # alternate, so both see the same page cache and load
                result = measure_build(contender, directory / "hf", spec_path, threads, options.device)
                if index >= min(options.warmup, 1):
                    runs[contender].append(result)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    rows = []
    for contender, results in runs.items():
        failed = next((r for r in results if "not_available" in r), None)
        if failed:
            rows.append({"measure": "build", "runtime": contender, "model": spec.name, **failed})
            continue
        row = {"measure": "build", "runtime": contender, "model": spec.name, "weight_bytes": weight_bytes}
        for key in ("build_s", "first_forward_s", "ready_s"):
            row[key] = figure([r[key] for r in results], "s")
        for key in ("peak_rss_bytes", "peak_rss_after_build_bytes", "baseline_rss_bytes", "rss_anon_bytes",
                    "rss_file_bytes", "peak_cuda_bytes"):
            if key in results[0]:
                row[key] = figure([r[key] for r in results], "B")
        row["peak_rss_over_weights"] = row["peak_rss_bytes"]["median"] / weight_bytes
        row["peak_rss_increase_over_weights"] = (row["peak_rss_bytes"]["median"]
                                                 - row["baseline_rss_bytes"]["median"]) / weight_bytes
        rows.append(row)
    return rows
