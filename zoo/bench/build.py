"""Building a model from a local safetensors file: the zoo against ``from_pretrained``.

Each build runs in a fresh Python process, so its peak memory is its own: the child
imports what it needs, notes its resident set, builds the model from the directory,
runs one short forward pass (a loader that maps the file lazily pays for reading it
there), and prints one JSON line with the times and ``/proc/self/status`` figures
(``VmHWM`` is the peak resident set). The parent writes the checkpoint once, in
Hugging Face layout so both loaders read the very same file, and deletes it after.

    python -m zoo.bench.build zoo|hf DIRECTORY SPEC_YAML --threads 2 --device cpu

:func:`measure_export` measures ``zoo export`` the same way (in :mod:`zoo.bench.export_child`),
its peak memory against the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from zoo.bench.timing import figure
from zoo.core.files import HF_SAFETENSORS, SPEC
from zoo.core.spec import ModelSpec
from zoo.errors import ZooError

CONTENDERS = ("zoo", "hf")
EXPORT_OPTIONS = ("--format", "onnx", "--kv-cache")
STATUS_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")


def write_hf_checkpoint(spec: ModelSpec, directory: Path, seed: int = 0) -> int:
    """Write random weights for ``spec`` as a Hugging Face directory of its checkpoint family
    (``config.json`` + ``model.safetensors``, through the family's :class:`zoo.CheckpointFormat`);
    return the bytes of tensor data.

    Tensors are drawn in the zoo's layout, one at a time, and stored in the family's (GPT-2's
    Conv1D weights transposed, Llama's q/k/v split...): N(0, 0.02) matrices, unit norm scales,
    zero biases. Memory needed: one copy of the weights.
    """
    from safetensors.torch import save_file

    from zoo.core.meta import assemble
    from zoo.hf.formats import format_for_spec, layout_problem

    problem = layout_problem(spec)
    if problem:
        raise ZooError(f"cannot write a Hugging Face checkpoint to benchmark against: {problem}")
    fmt = format_for_spec(spec)
    shapes = {name: tuple(t.shape) for name, t in assemble(spec).state_dict().items()}  # meta: no memory
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for zoo_name, transform in fmt.table(spec).items():
        if zoo_name.endswith(".bias"):
            tensor = torch.zeros(shapes[zoo_name])
        elif ".ln_" in zoo_name:
            tensor = torch.ones(shapes[zoo_name])
        else:
            tensor = torch.empty(shapes[zoo_name]).normal_(std=0.02, generator=generator)
        for name, stored in zip(transform.sources(), transform.to_hf(tensor, spec)):
            tensors[name] = stored.contiguous()  # as a checkpoint file names them
    directory.mkdir(parents=True, exist_ok=True)
    fmt.hf_config(spec).save_pretrained(directory)
    save_file(tensors, str(directory / HF_SAFETENSORS), metadata={"format": "pt"})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def hf_model_class(spec: ModelSpec):
    """The transformers class of ``spec``'s checkpoint family (``GPT2LMHeadModel``, ``LlamaForCausalLM``...)."""
    from zoo.hf.formats import format_for_spec

    return format_for_spec(spec).hf_class()


def measure_build(contender: str, directory: Path, spec_path: Path, threads: int, device: str,
                  timeout: float = 1800) -> dict:
    """Build in a child process; its JSON figures, or ``{"not_available": why}``."""
    command = [sys.executable, "-m", "zoo.bench.build", contender, str(directory), str(spec_path),
               "--threads", str(threads), "--device", device]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"not_available": f"{contender} build did not finish within {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return {"not_available": f"{contender} build failed: {tail}"}
    return json.loads(lines[-1])


def compare_builds(spec: ModelSpec, directory: Path, repeats: int, warmup: int, seed: int, threads: int,
                   device: str, steps=lambda name: None) -> list[dict]:
    """Write ``spec``'s checkpoint into ``directory``, build it ``warmup`` + ``repeats``
    times with each loader (alternating, so both see the same page cache and load), one
    process per build, delete the checkpoint, and return one row per loader."""
    steps(f"write a {spec.name} Hugging Face checkpoint")
    weight_bytes = write_hf_checkpoint(spec, directory / "hf", seed=seed)
    spec_path = directory / SPEC
    spec_path.write_text(spec.to_yaml(), encoding="utf-8")
    runs: dict[str, list[dict]] = {c: [] for c in CONTENDERS}
    try:
        for index in range(warmup + repeats):
            if index in (0, warmup):
                steps(f"build {spec.name}: " + ("warm-up" if index < warmup else f"{repeats} runs each"))
            for contender in CONTENDERS:
                result = measure_build(contender, directory / "hf", spec_path, threads, device)
                if index >= warmup:
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


def measure_export(spec: ModelSpec, directory: Path, threads: int, timeout: float = 3600,
                   steps=lambda name: None) -> dict:
    """Export ``spec`` with random weights as a user would, ``zoo export SPEC --format onnx
    --kv-cache`` (verification on), in a child process that reports its own wall time and peak
    resident memory (``VmHWM``; a parent's ``wait4`` figure would include the parent's memory,
    which the child holds between fork and exec), against the weight bytes. The export is
    deleted after."""
    from zoo.core.limits import model_size

    steps(f"export {spec.name} to ONNX (peak memory)")
    directory.mkdir(parents=True, exist_ok=True)
    spec_path = directory / SPEC
    spec_path.write_text(spec.to_yaml(), encoding="utf-8")
    row = {"measure": "export_memory", "runtime": "zoo", "model": spec.name,
           "command": f"zoo export {spec.name} " + " ".join(EXPORT_OPTIONS) + " -o DIR"}
    command = [sys.executable, "-m", "zoo.bench.export_child", str(directory / "onnx"), str(spec_path),
               "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**row, "not_available": f"zoo export did not finish within {timeout:.0f} s"}
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return {**row, "not_available": f"zoo export failed: {tail}"}
    result = json.loads(lines[-1])
    weight_bytes = model_size(spec).bytes
    return {**row, "weight_bytes": weight_bytes, "seconds": figure([result["seconds"]], "s"),
            "peak_rss_bytes": figure([result["peak_rss_bytes"]], "B"),
            "peak_rss_over_weights": result["peak_rss_bytes"] / weight_bytes}


def memory_status() -> dict[str, int]:
    """Memory figures of this process from ``/proc/self/status``, in bytes."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in STATUS_FIELDS:
                out[key] = int(value.split()[0]) * 1024  # reported in kB
    return out


def child(contender: str, directory: Path, spec_path: Path, device: str) -> dict:
    """Build ``contender``'s model from ``directory`` in this process and report on it."""
    from zoo.core.spec import load_spec

    spec = load_spec(spec_path)
    if contender == "zoo":
        hf_model_class(spec)  # transformers' config classes, imported before the clock, as for hf
        from zoo.hf.checkpoint import load_weights

        def build():
            return load_weights(spec, str(directory), device=device, dtype=torch.float32)
    else:
        model_class = hf_model_class(spec)

        def build():
            return model_class.from_pretrained(directory, dtype=torch.float32).to(device).eval()

    ids = torch.randint(0, spec.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0)).to(device)  # (1, 8)
    baseline = memory_status()
    start = time.perf_counter()
    model = build()
    built = time.perf_counter()
    after_build = memory_status()
    with torch.inference_mode():
        model(ids)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    ready = time.perf_counter()
    after_forward = memory_status()
    report = {
        "contender": contender,
        "build_s": built - start,
        "first_forward_s": ready - built,
        "ready_s": ready - start,
        "baseline_rss_bytes": baseline["VmRSS"],
        "peak_rss_after_build_bytes": after_build["VmHWM"],
        "peak_rss_bytes": after_forward["VmHWM"],
        "rss_anon_bytes": after_forward["RssAnon"],
        "rss_file_bytes": after_forward["RssFile"],
    }
    if device.startswith("cuda"):
        report["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build one model from a checkpoint directory and report time and memory.")
    parser.add_argument("contender", choices=CONTENDERS)
    parser.add_argument("directory", type=Path)
    parser.add_argument("spec", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(child(args.contender, args.directory, args.spec, args.device)), flush=True)


if __name__ == "__main__":
    main()
