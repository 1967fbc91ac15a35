"""The machine's ceilings, measured by the benchmark itself with torch.

* **Matrix-multiply FLOP/s**: ``torch.mm`` of two large square matrices (2·n³ FLOP per
  product), fp32 and, where the device runs them natively, bf16 and fp16; on a CPU also
  fp32 through ONNX Runtime's ``MatMul`` (its own GEMM, MLAS), because a BLAS may not use
  the widest vector units a CPU has (MKL takes its AVX2 path on AMD processors) and a
  ceiling that one runtime beats is no ceiling. The fp32 FLOP ceiling is the higher. A low
  precision counts as supported only if a probe product runs at least half as fast as
  in fp32 (a CPU without bf16/fp16 instructions emulates them, hundreds of times slower).
* **Read bandwidth**: ``torch.sum`` over one fp32 tensor far larger than the last-level
  cache (1 GiB), bytes read / time. A decode step streams every weight matrix once
  through a matrix-vector product, which is the same access pattern: sequential reads
  of data that cannot stay in cache, with almost no arithmetic per byte and no writes.
  A copy is also reported for context; it reads and writes, so it is not the ceiling
  a decode step sees.

A ceiling is what the machine can do, so the fractions in the report divide by the best
run (``max``) of each ceiling, not its median: on a machine shared with other work the
median of a ceiling understates it and would flatter every fraction.
"""

from __future__ import annotations

import statistics

import torch

from zoo.bench.timing import rate, time_call

GiB = 1 << 30


def device_sync(device: str):
    """A function that waits for the device's queued work (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _matmul_seconds(dtype: torch.dtype, device: str, size: int, warmup: int, repeats: int,
                    min_seconds: float = 0.0) -> list[float]:
    """Seconds per product of two random ``size``² matrices: ``repeats`` runs, and more
    until ``min_seconds`` have passed (so that a short probe outlasts a scheduler hiccup)."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)  # (n, n)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)  # (n, n)
    out = torch.empty(size, size, device=device, dtype=dtype)  # (n, n)
    sync = device_sync(device)
    seconds = time_call(lambda: torch.mm(a, b, out=out), warmup, repeats, sync)
    while sum(seconds) < min_seconds:
        seconds += time_call(lambda: torch.mm(a, b, out=out), 0, repeats, sync)
    return seconds


def matmul_ceiling(dtype: torch.dtype, device: str, size: int, warmup: int, repeats: int,
                   probe: int = 512) -> dict:
    """FLOP/s of an n×n by n×n product in ``dtype``. A low precision whose best probe run
    is under half the fp32 rate is emulated (not native) and reported as not available."""
    name = str(dtype).removeprefix("torch.")
    entry = {"name": f"matmul_{name}", "dtype": name, "size": size,
             "method": f"torch.mm of two {size}x{size} {name} matrices, 2*n^3 FLOP per product"}
    if dtype != torch.float32:
        flops = 2 * probe ** 3
        fp32 = flops / min(_matmul_seconds(torch.float32, device, probe, 1, 3, min_seconds=0.2))
        low = flops / min(_matmul_seconds(dtype, device, probe, 1, 3, min_seconds=0.2))
        if low < fp32 / 2:
            return {**entry, "not_available": (
                f"{name} matmul is not native on this {torch.device(device).type}: the best {probe}x{probe} product "
                f"ran at {low / 1e9:.1f} GFLOP/s against {fp32 / 1e9:.1f} GFLOP/s in fp32")}
    seconds = _matmul_seconds(dtype, device, size, warmup, repeats)
    return {**entry, "flop_per_s": rate(seconds, 2 * size ** 3, "FLOP/s")}


def onnxruntime_matmul_ceiling(size: int, threads: int, warmup: int, repeats: int) -> dict:
    """FLOP/s of an fp32 n×n by n×n ``MatMul`` in an ONNX Runtime CPU session of one node."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    square = [size, size]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, square) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, square)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    generator = np.random.default_rng(0)
    feeds = {n: generator.standard_normal(square, dtype=np.float32) for n in ("a", "b")}  # (n, n) each
    seconds = time_call(lambda: session.run(None, feeds), warmup, repeats)
    return {"name": "matmul_float32_onnxruntime", "dtype": "float32", "size": size,
            "method": f"ONNX Runtime MatMul of two {size}x{size} float32 matrices (CPU provider), 2*n^3 FLOP",
            "flop_per_s": rate(seconds, 2 * size ** 3, "FLOP/s")}


def read_bandwidth(device: str, nbytes: int, warmup: int, repeats: int) -> dict:
    """Bytes per second read by ``torch.sum`` over an fp32 tensor of ``nbytes``."""
    x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)  # (N,) pages touched now, not in the timing
    seconds = time_call(lambda: x.sum(), warmup, repeats, device_sync(device))
    return {"name": "read_bandwidth", "bytes": x.numel() * 4,
            "method": f"torch.sum over one fp32 tensor of {x.numel() * 4 / GiB:.2f} GiB (bytes read / time)",
            "bytes_per_s": rate(seconds, x.numel() * 4, "B/s")}


class BandwidthProbe:
    """The read bandwidth of this moment, sustained: ``torch.sum`` over ``nbytes`` again and again
    for ``seconds``, the median rate. Taken between decode runs, it sets each decode figure against
    the bandwidth of its own minutes: on a shared 2-core machine it moved between 29 and 57 GB/s from
    one measurement to the next while the decode speeds held within a few percent."""

    def __init__(self, device: str, nbytes: int, seconds: float = 0.5) -> None:
        self.x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)  # (N,)
        self.sync = device_sync(device)
        self.seconds = seconds

    def __call__(self) -> float:
        times = []
        while len(times) < 3 or sum(times) < self.seconds:
            times += time_call(lambda: self.x.sum(), 0, 1, self.sync)
        return self.x.numel() * 4 / statistics.median(times)


def copy_bandwidth(device: str, nbytes: int, warmup: int, repeats: int) -> dict:
    """Bytes per second (read + written) of a tensor copy of ``nbytes``."""
    x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)  # (N,)
    y = torch.zeros_like(x)  # (N,)
    seconds = time_call(lambda: y.copy_(x), warmup, repeats, device_sync(device))
    return {"name": "copy_bandwidth", "bytes": 2 * x.numel() * 4,
            "method": f"Tensor.copy_ of {x.numel() * 4 / GiB:.2f} GiB (bytes read + bytes written) / time",
            "bytes_per_s": rate(seconds, 2 * x.numel() * 4, "B/s")}


def best(entry: dict) -> float:
    """The ceiling a fraction divides by: the best run of a measured ceiling."""
    return (entry.get("flop_per_s") or entry["bytes_per_s"])["max"]


def fp32_flop_ceiling(ceilings: dict) -> tuple[str, float]:
    """The name and FLOP/s of the highest fp32 matmul ceiling measured."""
    measured = [(name, best(e)) for name, e in ceilings.items()
                if name.startswith("matmul_float32") and "flop_per_s" in e]
    return max(measured, key=lambda item: item[1])


def matmul_size(device: str | torch.device, tiny: bool = False) -> int:
    """The side of the square matrices a ceiling multiplies: large enough to keep the
    matrix units busy, small enough that one product takes a fraction of a second."""
    return 512 if tiny else (8192 if torch.device(device).type == "cuda" else 2048)


def measure_ceilings(device: str, warmup: int, repeats: int, threads: int, tiny: bool = False,
                     step=lambda name: None) -> dict:
    """Every ceiling, keyed by name; ``step(name)`` is called before each measurement.

    A ceiling takes at least 10 runs (``repeats`` if more), each short (2048² products on
    a CPU, a fraction of a second), so that the best run finds the machine free even
    when it is shared.
    """
    size = matmul_size(device, tiny)
    nbytes = (64 << 20) if tiny else GiB
    repeats = repeats if tiny else max(repeats, 10)
    out = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        name = f"matmul_{str(dtype).removeprefix('torch.')}"
        step(name)
        out[name] = matmul_ceiling(dtype, device, size, warmup, repeats)
    if torch.device(device).type == "cpu":
        step("matmul_float32_onnxruntime")
        out["matmul_float32_onnxruntime"] = onnxruntime_matmul_ceiling(size, threads, warmup, repeats)
    step("read_bandwidth")
    out["read_bandwidth"] = read_bandwidth(device, nbytes, warmup, repeats)
    step("copy_bandwidth")
    out["copy_bandwidth"] = copy_bandwidth(device, nbytes, warmup, repeats)
    return out
