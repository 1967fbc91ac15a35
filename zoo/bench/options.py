"""What ``zoo bench`` measures and how often: :class:`BenchOptions`, shared by the run and
the runtimes it measures."""

from __future__ import annotations

from dataclasses import dataclass, field

from zoo.errors import ZooError

RUNTIMES = ("torch", "torch-bf16", "onnxruntime", "onnxruntime-int8", "onnxruntime-int4", "hf")
DEFAULT_RUNTIMES = ("torch", "onnxruntime", "hf")
# ONNX Runtime contenders and the weight quantization of their export (None: fp32)
ONNX_RUNTIMES = {"onnxruntime": None, "onnxruntime-int8": "int8", "onnxruntime-int4": "int4"}


@dataclass
class BenchOptions:
    """What ``zoo bench`` measures and how often."""

    model: str = "gpt2"
    overrides: dict = field(default_factory=dict)
    runtimes: tuple[str, ...] = DEFAULT_RUNTIMES
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
