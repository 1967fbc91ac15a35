"""What fits where: the memory one training process needs, before anything is allocated.

``zoo train MODEL ... --plan N`` prints, for ``ddp`` and ``fsdp`` at N processes, the
bytes per process of weights, gradients, optimizer state and activations at the run's
``--seq-len`` and batch; ``zoo train`` refuses a run whose plan does not fit the device,
as ``zoo build`` refuses an oversized model. Sizes come from shapes on the meta device
(:mod:`zoo.core.limits`). The counts:

- weights: float32 master weights, 4 bytes a parameter (a LoRA base in bf16: 2 for the
  adapted projections); with autocast, the bf16 copies of the weights the step computes
  with; under FSDP a 1/N shard plus the units gathered at once (two blocks, prefetching,
  and the root: embeddings, final norm, head).
- gradients: 4 bytes a trained parameter; DDP adds its reducer's buckets, as large again;
  FSDP keeps a 1/N shard plus two blocks' unsharded gradients while they are reduced.
- optimizer: AdamW's two moments, 8 bytes a trained parameter (FSDP: 1/N of them).
- activations: per layer ``s·b·h·(34 + 5·a·s/h)`` bytes at 16 bits (Korthikanti et al.,
  2022, with the MLP term scaled to the model's width), twice that in float32; with
  ``--checkpoint-activations`` each layer keeps its input only and one layer is recomputed
  at a time; plus the logits and their gradient.

Estimates, not measurements: the README compares them with measured peaks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from zoo.core.spec import ModelSpec

GiB = 2**30


@dataclass(frozen=True)
class Plan:
    """Bytes one process needs for a training step."""

    strategy: str
    processes: int
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


@dataclass(frozen=True)
class Shape:
    """The parameter counts a plan needs: the whole model, its largest block, its root (what is not a block)."""

    parameters: int
    block: int
    root: int
    layers: int


def model_shape(spec: ModelSpec) -> Shape:
    from zoo.core.limits import _layer_fields, model_size

    parameters = model_size(spec).parameters
    layers = _layer_fields(spec)
    one = dataclasses.replace(spec, **{name: 1 for name in layers})
    base = model_size(one).parameters
    blocks = [model_size(dataclasses.replace(one, **{name: 2})).parameters - base for name in layers]
    root = base - sum(blocks)
    return Shape(parameters, max(blocks), root, sum(layers.values()))


def activation_bytes(spec: ModelSpec, seq_len: int, batch: int, dtype_bytes: int, checkpointing: bool,
                     scores: bool = True) -> int:
    """The activations a training step keeps for its backward pass (see the module's note); ``scores``:
    the attention kernel keeps its (s x s) scores (the math kernel zoo uses on CPUs; flash attention on GPUs does not)."""
    s, b, h = seq_len, batch, spec.d_model
    heads = spec.attention.options.n_heads
    d_ff = getattr(spec.mlp.options, "d_ff", None) or 4 * h
    per_layer = (s * b * h * (15 + 19 * d_ff / (4 * h)) + (5 * heads * s * s * b if scores else 0)) * dtype_bytes / 2
    layers = spec.n_layers + (spec.n_decoder_layers if spec.is_encoder_decoder else 0)
    kept = layers * s * b * h * dtype_bytes + per_layer if checkpointing else layers * per_layer
    logits = s * b * spec.vocab_size * (dtype_bytes + 4)
    return int(kept + logits)


def plan(spec: ModelSpec, strategy: str, processes: int, seq_len: int, batch: int, compute: torch.dtype,
         checkpointing: bool = False, trainable: int | None = None, base_bytes: int = 4,
         shape: Shape | None = None, scores: bool = True) -> Plan:
    """The bytes per process of a training step of ``spec`` (``trainable``: a LoRA run's adapter parameters)."""
    shape = shape or model_shape(spec)
    P, n = shape.parameters, processes
    cb = compute.itemsize
    casts = P * cb if cb < 4 else 0  # autocast's low-precision copies of the weights
    activations = activation_bytes(spec, seq_len, batch, cb, checkpointing, scores)
    if trainable is not None:  # LoRA: a frozen base, an adapter that trains
        return Plan("lora", n, P * base_bytes + (casts if base_bytes == 4 else 0), 4 * trainable,
                    8 * trainable, activations)
    if strategy == "fsdp":
        gathered = (2 * shape.block + shape.root) * cb
        return Plan("fsdp", n, 4 * P // n + gathered, 4 * P // n + 2 * shape.block * 4, 8 * P // n, activations)
    buckets = 4 * P if n > 1 else 0
    return Plan("ddp", n, 4 * P + casts, 4 * P + buckets, 8 * P, activations)


def device_budget(device: torch.device, processes: int) -> tuple[int | None, str]:
    """Bytes one process may use on ``device`` (the host's available memory shared by the
    processes on a CPU; a GPU's own memory on CUDA) and how to name it."""
    from zoo.core.limits import host_memory_available

    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory, f"{torch.cuda.get_device_name(device)}"
    available = host_memory_available()
    if available is None:
        return None, "this machine"
    return available // processes, f"this machine's available memory / {processes} processes"


def fewest_gpus(spec: ModelSpec, card: int, seq_len: int, batch: int, checkpointing: bool = False,
                shape: Shape | None = None, limit: int = 64) -> int | None:
    """The fewest GPUs (1, 2, 4, ...) of ``card`` bytes that fit full fine-tuning with FSDP (bf16 mixed
    precision, flash attention), None if even ``limit`` do not (the activations do not shrink with more GPUs)."""
    shape = shape or model_shape(spec)
    n = 1
    while n <= limit:
        if plan(spec, "fsdp", n, seq_len, batch, torch.bfloat16, checkpointing, shape=shape, scores=False).total <= card:
            return n
        n *= 2
    return None


def catalog_rows(names: list[str], seq_len: int = 1024, batch: int = 1, cards: tuple[int, ...] = (24, 40, 80)):
    """The README's table: per model, DDP's bytes a GPU and the GPUs FSDP needs of each card size."""
    rows = []
    for name in names:
        from zoo.core.spec import load_spec

        spec = load_spec(name)
        shape = model_shape(spec)
        length = min(seq_len, spec.context_length)
        ddp = plan(spec, "ddp", 2, length, batch, torch.bfloat16, shape=shape, scores=False).total
        cells = []
        for checkpointing in (False, True):
            counts = [fewest_gpus(spec, c * 10**9, length, batch, checkpointing, shape) for c in cards]
            cells.append(" / ".join("-" if n is None else str(n) for n in counts))
        rows.append([name, f"{shape.parameters / 1e6:,.0f}M", f"{ddp / 1e9:.1f} GB",
                     " / ".join("yes" if ddp <= c * 10**9 else "no" for c in cards), *cells])
    return rows


def lora_parameters(spec: ModelSpec, rank: int, targets: str) -> int:
    """The parameters a LoRA adapter of ``rank`` on ``targets`` trains: r·(in + out) per layer."""
    from zoo.core.adapters import lora_targets
    from zoo.core.meta import assemble

    model = assemble(spec)
    return sum(rank * (m.in_features + m.out_features) for m in map(model.get_submodule, lora_targets(model, targets)))


def training_plans(task, processes: int, compute: torch.dtype, device: torch.device) -> list[Plan]:
    """The plans of ``task``'s run at ``processes``: ddp and fsdp, or LoRA's."""
    config = task.config
    spec, seq_len, batch = task.planned()
    shape = model_shape(spec)
    common = dict(seq_len=seq_len, batch=batch, compute=compute, checkpointing=config.checkpoint_activations,
                  shape=shape, scores=device.type != "cuda")
    if getattr(config, "lora_rank", None):
        base = 2 if getattr(config, "lora_base", "float32") == "bfloat16" else 4
        trainable = lora_parameters(spec, config.lora_rank, config.lora_targets)
        return [plan(spec, "ddp", processes, trainable=trainable, base_bytes=base, **common)]
    return [plan(spec, strategy, processes, **common) for strategy in ("ddp", "fsdp")]


def plan_lines(task, processes: int, device: torch.device, compute: torch.dtype) -> list[list[str]]:
    """The rows ``zoo train --plan`` prints."""
    budget, where = device_budget(device, processes)
    rows = []
    for p in training_plans(task, processes, compute, device):
        fits = "?" if budget is None else "yes" if p.total <= budget else "no"
        rows.append([p.strategy, str(p.processes), *(f"{v / GiB:.2f}" for v in
                     (p.weights, p.gradients, p.optimizer, p.activations, p.total)), fits])
    return rows


def check_training_fits(task, processes: int, device: torch.device, compute: torch.dtype) -> None:
    """Refuse, in one line and before anything is written, a run whose plan exceeds the device."""
    from zoo.core.limits import format_bytes
    from zoo.errors import DataError

    budget, where = device_budget(device, processes)
    chosen = task.config.strategy if not getattr(task.config, "lora_rank", None) else "lora"
    mine = next(p for p in training_plans(task, processes, compute, device) if p.strategy == chosen)
    if budget is not None and mine.total > budget:
        spec = task.planned()[0]
        raise DataError(f"training {spec.name} with {chosen} on {processes} process(es) needs about "
                        f"{format_bytes(mine.total)} a process ({where}: {format_bytes(budget)}); see zoo train "
                        "... --plan N, and try --strategy fsdp over more processes, --lora, --checkpoint-activations "
                        "or a smaller --batch-size")
