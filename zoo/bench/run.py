"""``zoo bench``: the zoo against Hugging Face and against the machine's own ceilings.

One run measures, on the same random weights:

* the ceilings (:mod:`zoo.bench.ceilings`): matmul FLOP/s and read bandwidth;
* prefill (1x128 and 4x128 tokens) and decode (tokens/s at batch 1 and 4 after a
  128-token prompt) of each runtime (:mod:`zoo.bench.runtimes`), with their fractions
  of the ceilings and their ratios to Hugging Face;
* ONNX export time and size;
* building gpt2-xl from a local safetensors file next to
  ``GPT2LMHeadModel.from_pretrained`` (:mod:`zoo.bench.build`).

Every figure is the median, min and max of ``repeats`` runs after ``warmup`` runs;
what cannot be measured is reported as not available with the reason, never as a
number. :mod:`zoo.bench.report` judges the targets and writes the table, JSON and chart.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from zoo.bench.ceilings import best, fp32_flop_ceiling, measure_ceilings
from zoo.bench.options import ONNX_RUNTIMES, BenchOptions
from zoo.bench.runtimes import load_contenders, measure_runtimes
from zoo.core.spec import ModelSpec, load_spec
from zoo.errors import ZooError

BUILD_MODEL = "gpt2-xl"
TINY_OVERRIDES = {"vocab_size": 512, "context_length": 256, "d_model": 64, "n_layers": 2, "attention.n_heads": 4,
                  "mlp.d_ff": 256, "dropout": 0.0, "bos_token_id": 511, "eos_token_id": 511}


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


def command_line(options: BenchOptions, threads: int) -> str:
    """The ``zoo bench`` command that repeats this run."""
    parts = ["zoo", "bench", options.model, *(f"--set {k}={v}" for k, v in options.overrides.items()),
             f"--runtime {','.join(options.runtimes)}", f"--device {options.device}", f"--threads {threads}",
             f"--repeats {options.repeats}", f"--warmup {options.warmup}", f"--new-tokens {options.new_tokens}"]
    parts += [flag for flag, on in (("--tiny", options.tiny), ("--skip-xl", options.skip_xl)) if on]
    return " ".join(parts)


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

    out = {"platform": platform.platform(), **cpu_info(), "cpus_usable": len(os.sched_getaffinity(0)),
           "threads": threads, "device": options.device, "python": platform.python_version(),
           "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__,
           "load_average_at_start": list(os.getloadavg())}
    if torch.device(options.device).type == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    return out


VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")


def cpu_info() -> dict:
    """The CPU's name, family/model and the vector extensions a matmul may use (Linux)."""
    fields = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if not key.strip():
                    break  # the first processor is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = fields.get("flags", "").split()
    return {"processor": fields.get("model name") or platform.processor() or "unknown",
            "cpu_family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
            "vector_extensions": [f for f in VECTOR_FLAGS if f in flags]}


def run_bench(options: BenchOptions) -> dict:
    """Measure everything ``options`` asks for; return the report (see :mod:`zoo.bench.report`)."""
    device = options.device
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ZooError("--device cuda: PyTorch sees no CUDA device here; use --device cpu")
    spec = bench_spec(options)
    if spec.family != "decoder":
        raise ZooError(f"{spec.name} is an {spec.family} model; zoo bench measures decoder-only language models "
                       "(prefill and decode against GPT2LMHeadModel)")
    needed = options.prompt_tokens + options.new_tokens
    if needed > spec.context_length:
        raise ZooError(f"{spec.name}: a {options.prompt_tokens}-token prompt and {options.new_tokens} new tokens exceed "
                       f"its context length of {spec.context_length}")
    threads = options.threads or len(os.sched_getaffinity(0))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    workdir = Path(tempfile.mkdtemp(prefix="zoo-bench-"))
    onnx_runtimes = sum(r in ONNX_RUNTIMES for r in options.runtimes)
    groups = ("torch" in options.runtimes or "hf" in options.runtimes) + bool(onnx_runtimes)
    total = 6 + 1 + 2 * len(options.batches) * groups + onnx_runtimes + (0 if options.skip_xl else 3 + (options.device == "cpu"))
    steps = Steps(total)
    started = time.time()
    try:
        report = {
            "zoo_bench": 1,
            "model": spec.name,
            "tiny": options.tiny,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command_line(options, threads),
            "options": {**asdict(options), "threads": threads},
            "machine": machine(options, threads),
            "ceilings": measure_ceilings(device, options.warmup, options.repeats, threads, options.tiny, steps),
        }
        flop_source, flop_ceiling = fp32_flop_ceiling(report["ceilings"])
        report["ceilings_used"] = {"fp32_flop_per_s": flop_ceiling, "fp32_flop_from": flop_source,
                                   "read_bytes_per_s": best(report["ceilings"]["read_bandwidth"])}
        steps("load the same random weights into every runtime")
        contenders, unavailable, model, exports = load_contenders(spec, options, workdir, threads, steps)
        report["parameters"] = sum(p.numel() for p in model.parameters())
        report["weight_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
        results = list(unavailable) + exports
        results += measure_runtimes(spec, model, contenders, options, report["ceilings_used"], steps)
        results += build_rows(options, workdir, threads, steps)
        report["results"] = results
        from zoo.bench.report import evaluate_targets

        report["targets"] = evaluate_targets(report)
        report["seconds"] = time.time() - started
        report["machine"]["load_average_at_end"] = list(os.getloadavg())
        return report
    finally:
        steps.close()
        torch.set_num_threads(previous_threads)
        shutil.rmtree(workdir, ignore_errors=True)


def build_rows(options: BenchOptions, workdir: Path, threads: int, steps) -> list[dict]:
    """gpt2-xl (the tiny model with ``tiny``) built from one local safetensors file by the
    zoo and by ``from_pretrained`` (:func:`zoo.bench.build.compare_builds`), and on the CPU
    exported to ONNX by ``zoo export`` (:func:`zoo.bench.build.measure_export`)."""
    from zoo.bench.build import CONTENDERS, compare_builds, measure_export

    spec = build_spec(options)
    if options.skip_xl:
        return [{"measure": measure, "runtime": c, "model": spec.name, "not_available": "skipped (--skip-xl)"}
                for measure, c in [*(("build", c) for c in CONTENDERS), ("export_memory", "zoo")]]
    rows = compare_builds(spec, workdir / "build", repeats=min(options.repeats, 3), warmup=min(options.warmup, 1),
                          seed=options.seed, threads=threads, device=options.device, steps=steps)
    if options.device == "cpu":  # the export's memory is the host's
        rows.append(measure_export(spec, workdir / "export", threads, steps=steps))
    return rows
