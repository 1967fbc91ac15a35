"""Training an encoder-decoder translation model: the loop behind ``zoo train``.

Label-smoothed cross-entropy, AdamW with warm-up then inverse-square-root decay
(Vaswani et al., 2017), gradient clipping, length-bucketed token-count batches, mixed
precision (bf16 or fp16 on GPU, bf16 on CPUs that have it), training snapshots written atomically and resumable,
DistributedDataParallel when launched by ``torchrun``, model FLOP utilisation on screen.
A run directory holds::

    spec.yaml model.safetensors manifest.json   the latest weights, a zoo model directory
    tokenizer.json                              the subword vocabulary (see zoo.translation.vocabulary)
    train.json                                  this run's TrainConfig
    checkpoints/step-N/                         training snapshots to resume from (zoo.translation.snapshots)
    averaging/step-N.safetensors                the last weights, whose mean is published (zoo.translation.averaging)
    metrics.jsonl curves.png                    loss, tokens/s, validation loss and BLEU
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from zoo.core.dropout import Dropout
from zoo.core.files import MANIFEST, SPEC, TRAIN_CONFIG, WEIGHTS, atomic_directory
from zoo.core.model_dir import write_model_files
from zoo.core.spec import ModelSpec, load_spec
from zoo.errors import DataError, ZooError
from zoo.translation.averaging import average, point_step, points, save_point
from zoo.translation.data import Batch, TokenBatches, group_references, read_pairs, sample_sources, split_pairs
from zoo.translation.distributed import Distributed
from zoo.translation.loss import smoothed_cross_entropy
from zoo.translation.run_log import RunLog
from zoo.translation.snapshots import (Progress, copy_weights, load_snapshot, random_state, save_snapshot,
                                       set_random_state, snapshots)
from zoo.translation.train_config import TrainConfig, parse_interval  # noqa: F401 (public here too)
from zoo.translation.vocabulary import PAD_ID, Vocabulary


class Every:
    """Whether a step- or time-based interval has come round; time intervals count training seconds."""

    def __init__(self, value: int | str, seconds: float) -> None:
        self.unit, self.amount = parse_interval(value)
        self.last_seconds = seconds

    def due(self, step: int, seconds: float) -> bool:
        if self.unit == "steps":
            return step % self.amount == 0
        if seconds - self.last_seconds >= self.amount:
            self.last_seconds = seconds
            return True
        return False


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up to ``config.lr`` over ``warmup_steps``, then decay as 1/√step.

    With ``lr = d_model^-0.5 · warmup^-0.5`` this is the 2017 paper's schedule.
    """
    step = max(step, 1)
    return config.lr * min(step / config.warmup_steps, math.sqrt(config.warmup_steps / step))


def translation_loss(model: nn.Module, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
                     smoothing: float, blocked: bool = True) -> torch.Tensor:
    """Summed label-smoothed cross-entropy over the non-padding target tokens (``blocked``: see
    :mod:`zoo.translation.loss`; else ``F.cross_entropy``, the same value)."""
    logits = model(src, tgt_in, (src != PAD_ID).long())  # (B, T, V)
    return smoothed_cross_entropy(logits, tgt_out, smoothing, PAD_ID, blocked)


def cpu_has_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels for this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_for(config: TrainConfig, device: torch.device) -> tuple[contextlib.AbstractContextManager, bool]:
    """The mixed-precision context for ``config.amp`` and whether fp16 gradient scaling is needed
    (the context's ``fast_dtype`` is the dtype matmuls run in; float32 without autocast)."""
    mode = config.amp
    if mode == "auto" and device.type == "cuda":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    elif mode == "auto":  # bf16 only where the CPU computes it natively (AVX512-BF16, AMX): 1.5x faster here
        mode = "bf16" if cpu_has_bf16() else "off"
    if mode == "off":
        return contextlib.nullcontext(), False
    if mode not in ("bf16", "fp16"):
        raise DataError(f"--amp {mode}: choose auto, off, bf16 or fp16")
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), mode == "fp16" and device.type == "cuda"


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter's bytes: equal digests mean bit-identical replicas."""
    digest = hashlib.sha256()
    for param in model.parameters():
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- one step


@dataclass(frozen=True)
class Loop:
    """How a step is carried out: choices that change its speed, not its arithmetic.

    Measured with ``zoo train --profile`` (see :mod:`zoo.translation.profile`) on the
    2-core CPU with AMX-bf16: the fused AdamW kernel instead of a Python loop over
    parameters; the plain ("math") attention kernel, which beats the flash-attention
    kernel's backward pass several times over on sentences of 5-20 tokens; zoo's dropout
    mask (:mod:`zoo.core.dropout`) and the blocked cross-entropy
    (:mod:`zoo.translation.loss`). CUDA keeps PyTorch's kernels.
    """

    optimizer: str = "fused"  # fused | foreach | for-loop: the AdamW implementation
    attention: str = "math"  # math | auto: scaled_dot_product_attention's kernel on a CPU
    sync_every_step: bool = False  # read the loss back to the host after every step
    dropout: str = "zoo"  # zoo | torch: whose dropout mask (the same distribution)
    loss: str = "blocked"  # blocked | torch: how the cross-entropy is computed (the same value)


# The loop before the measurement (zoo train --profile shows both)
BEFORE = Loop(optimizer="for-loop", attention="auto", sync_every_step=True, dropout="torch", loss="torch")


def use_loop(model: nn.Module, loop: Loop) -> nn.Module:
    """Set the model's dropout layers to the mask ``loop`` asks for; returns ``model``."""
    for module in model.modules():
        if isinstance(module, Dropout):
            module.cheap_mask = loop.dropout == "zoo"
    return model


def make_optimizer(model: nn.Module, config: TrainConfig, loop: Loop = Loop()) -> torch.optim.Optimizer:
    """AdamW (β = 0.9, 0.98, ε = 1e-9, the 2017 paper's), no weight decay on biases and norms."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    kernel = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[loop.optimizer]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=config.lr, betas=(0.9, 0.98), eps=1e-9, **kernel)


def attention_kernel(loop: Loop, device: torch.device) -> contextlib.AbstractContextManager:
    """The scaled_dot_product_attention kernel ``loop`` asks for on this device."""
    if loop.attention == "math" and device.type == "cpu":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])
    return contextlib.nullcontext()


def train_step(net: nn.Module, model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer, scaler,
               autocast, config: TrainConfig, loop: Loop, lr: float) -> torch.Tensor:
    """One optimizer step on ``batch``; returns the summed label-smoothed loss (a detached tensor)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast, attention_kernel(loop, batch.src.device):
        loss_sum = translation_loss(net, batch.src, batch.tgt_in, batch.tgt_out, config.label_smoothing,
                                    blocked=loop.loss == "blocked")
    scaler.scale(loss_sum / batch.n_tgt_tokens).backward()
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm, foreach=loop.optimizer != "for-loop")
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    loss_sum = loss_sum.detach()
    if loop.sync_every_step:
        loss_sum = torch.tensor(loss_sum.item())
    return loss_sum


@dataclass
class Utilisation:
    """Model FLOP utilisation: the model's FLOPs per second over the device's matmul ceiling."""

    flops_per_token: float  # one training pass, per source + target token, at the data's mean lengths
    ceiling: float | None  # FLOP/s of a large matmul in the dtype training computes in
    dtype: str

    def of(self, tokens_per_second: float) -> float | None:
        """The fraction of the ceiling ``tokens_per_second`` uses."""
        return tokens_per_second * self.flops_per_token / self.ceiling if self.ceiling else None

    def to_dict(self) -> dict:
        return {"flops_per_token": round(self.flops_per_token), "matmul_ceiling_flop_per_s": self.ceiling,
                "dtype": self.dtype}


def measure_utilisation(spec: ModelSpec, batches: TokenBatches, device: torch.device,
                        dtype: torch.dtype) -> Utilisation:
    """Count the model's FLOPs per token at the data's mean lengths and time the device's
    matmul ceiling in ``dtype`` (as ``zoo bench`` does, briefly: about a second)."""
    from zoo.bench.ceilings import matmul_ceiling, matmul_size
    from zoo.core.flops import training_flops_per_token

    source, target = max(1, round(float(batches.src_len.mean()))), max(1, round(float(batches.tgt_len.mean())))
    per_token = training_flops_per_token(spec, target, source)
    ceiling = matmul_ceiling(dtype, str(device), matmul_size(device), warmup=1, repeats=10)
    best = ceiling["flop_per_s"]["max"] if "flop_per_s" in ceiling else None
    return Utilisation(per_token, best, str(dtype).removeprefix("torch."))


# --------------------------------------------------------------------------- data


@dataclass
class Corpus:
    """The split, tokenised; what the loop and validation need."""

    splits: dict
    batches: TokenBatches
    val_src: list[np.ndarray]
    val_tgt: list[np.ndarray]
    dropped: int


def tokenize_corpus(splits: dict, vocabulary: Vocabulary, config: TrainConfig, spec: ModelSpec,
                    dist: Distributed) -> Corpus:
    """Encode the training and validation splits and plan the training batches."""
    limit = spec.context_length

    def encode(pairs):
        src = vocabulary.encode_source([p.en for p in pairs])
        tgt = vocabulary.encode_target([p.it for p in pairs])
        keep = [i for i in range(len(pairs)) if len(src[i]) <= limit and len(tgt[i]) - 1 <= limit]
        arrays = ([np.asarray(src[i], dtype=np.int32) for i in keep], [np.asarray(tgt[i], dtype=np.int32) for i in keep])
        return arrays, len(pairs) - len(keep)

    (train_src, train_tgt), dropped = encode(splits["train"])
    if not train_src:
        raise DataError(f"{config.data}: the training split is empty; use a larger file")
    (val_src, val_tgt), _ = encode(splits["validation"][: config.eval_pairs])
    batches = TokenBatches(train_src, train_tgt, config.batch_tokens, PAD_ID, seed=config.seed,
                           rank=dist.rank, world=dist.world)
    return Corpus(splits, batches, val_src, val_tgt, dropped)


def read_split(config: TrainConfig, warn: Callable[[str], None]) -> dict:
    pairs = read_pairs(config.data, config.skip_bad_lines, warn)
    return split_pairs(pairs, config.validation_fraction, config.test_fraction, config.split_seed)


def create_run(config: TrainConfig, run_dir: Path, splits: dict, force: bool) -> None:
    """Train the vocabulary on the training split and write the new run directory atomically."""
    from zoo.core.builder import build

    train_pairs = splits["train"]
    vocabulary = Vocabulary.train([p.en for p in train_pairs], [p.it for p in train_pairs],
                                  config.vocab_size, config.tokenizer, config.vocabulary)
    spec = load_spec(config.model, {**config.overrides, "vocab_size": vocabulary.size})
    model = build(spec, seed=config.seed)
    with atomic_directory(run_dir, overwrite=force) as tmp:
        vocabulary.save(tmp)
        write_model_files(model, spec, tmp, {"training": {"step": 0}})
        config.save(tmp)


def publish_weights(run_dir: Path, model: nn.Module, spec: ModelSpec, extra: dict) -> None:
    """Replace the run directory's ``model.safetensors`` and ``manifest.json``, each atomically."""
    tmp = Path(tempfile.mkdtemp(prefix=".weights-", dir=run_dir))
    try:
        write_model_files(model, spec, tmp, extra)
        for name in (WEIGHTS, SPEC, MANIFEST):
            os.replace(tmp / name, run_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(model: nn.Module, vocabulary: Vocabulary, corpus: Corpus, config: TrainConfig,
             device: torch.device, autocast) -> dict:
    """Validation NLL per target token and greedy single-reference BLEU on a seeded sample of the sources."""
    from zoo.translation.evaluate import score
    from zoo.translation.search import Translator

    model.eval()
    loss_sum, tokens = 0.0, 0
    val = TokenBatches(corpus.val_src, corpus.val_tgt, config.batch_tokens, PAD_ID) if corpus.val_src else None
    for batch in (val.iterate(0) if val else []):
        batch = batch.to(device)
        with autocast:
            loss_sum += translation_loss(model, batch.src, batch.tgt_in, batch.tgt_out, 0.0).item()
        tokens += batch.n_tgt_tokens
    sources, references = group_references(corpus.splits["validation"])
    sources, references = sample_sources(sources, references, config.eval_sentences)  # across the split, not its shortest end
    bleu = None
    if sources:
        with autocast:
            hypotheses = Translator(model, vocabulary, device).translate(sources, beam=1, batch_size=100)  # greedy: quick
        bleu = score(hypotheses, references).single_reference.bleu
    model.train()
    return {"loss": loss_sum / max(tokens, 1), "bleu": bleu, "sentences": len(sources)}


# --------------------------------------------------------------------------- the loop


def train(config: TrainConfig, run_dir: str | os.PathLike, resume: bool = False, force: bool = False,
          progress: bool = True, warn: Callable[[str], None] | None = None,
          on_step: Callable[[int], None] | None = None, loop: Loop = Loop()) -> dict:
    """Train into ``run_dir`` (new, or continued from its newest training snapshot with ``resume``).

    Returns a summary (steps, tokens, seconds, tokens/s, last validation BLEU). ``on_step``
    is called with the step number after every optimizer step.
    """
    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))
    run_dir = Path(run_dir)
    dist = Distributed.start(config.device)
    try:
        return _train(config, run_dir, resume, force, progress, warn, on_step, dist, loop)
    finally:
        dist.stop()


def _train(config, run_dir, resume, force, progress, warn, on_step, dist: Distributed, loop: Loop) -> dict:
    from tqdm import tqdm

    from zoo.core.builder import build

    device = dist.device
    if not resume and run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise ZooError(f"{run_dir} already exists; continue it with --resume {run_dir} or replace it with --force")
    if resume and not (run_dir / TRAIN_CONFIG).is_file():
        raise DataError(f"{run_dir}: no training run to resume (no {TRAIN_CONFIG}); start one with -o {run_dir}")
    spec_check = load_spec(config.model, config.overrides or None)
    if not spec_check.is_encoder_decoder:
        raise DataError(f"{config.model} is a {spec_check.family} model; zoo train trains encoder-decoder translation models")
    splits = read_split(config, warn if dist.is_main else (lambda _: None))
    if not resume and dist.is_main:
        create_run(config, run_dir, splits, force)
    dist.barrier()
    vocabulary = Vocabulary.load(run_dir)
    spec = load_spec(run_dir / SPEC)
    corpus = tokenize_corpus(splits, vocabulary, config, spec, dist)
    if corpus.dropped and dist.is_main:
        warn(f"left out {corpus.dropped} training pairs longer than the context length ({spec.context_length} tokens)")

    model = use_loop(build(spec, seed=config.seed, device=device).train(), loop)
    optimizer = make_optimizer(model, config, loop)
    autocast, needs_scaling = autocast_for(config, device)
    utilisation = measure_utilisation(spec, corpus.batches, device, getattr(autocast, "fast_dtype", torch.float32))
    scaler = torch.amp.GradScaler("cuda", enabled=needs_scaling)
    torch.manual_seed(config.seed * 1000 + dist.rank)  # dropout
    progress_state = Progress()
    found = snapshots(run_dir) if resume else []
    if found:
        restored = load_snapshot(found[-1], model, optimizer, device)
        progress_state = restored.progress
        if len(restored.random_states) == dist.world:
            set_random_state(restored.random_states[dist.rank], device)
        if restored.scaler:
            scaler.load_state_dict(restored.scaler)
    log = RunLog(run_dir, resume_step=progress_state.step) if dist.is_main else None
    net = model
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    p = progress_state
    steps_per_epoch = len(corpus.batches)
    total_steps = min(config.max_steps or math.inf, config.epochs * steps_per_epoch)
    timed = config.max_minutes is not None
    budget = config.max_minutes * 60 if timed else math.inf
    if dist.is_main and p.step == 0:
        log.append({"event": "start", "step": 0, "pairs": {k: len(v) for k, v in splits.items()},
                    "train_pairs_used": sum(len(b) for b in corpus.batches.plan(0)) * dist.world,
                    "steps_per_epoch": steps_per_epoch, "vocab_size": vocabulary.size, "world": dist.world,
                    "device": str(device), "threads": torch.get_num_threads(),
                    "parameters": sum(t.numel() for t in model.parameters()), **utilisation.to_dict()})
    bar = tqdm(total=int(budget) if timed else int(total_steps) if total_steps < math.inf else None,
               initial=int(p.seconds) if timed else p.step, unit="s" if timed else "step",
               desc="training", file=sys.stderr, dynamic_ncols=True, disable=not (progress and dist.is_main))
    def new_window() -> dict:
        """The steps since the last log record: summed loss (kept on the device), target tokens, tokens, seconds."""
        return {"loss": torch.zeros((), device=device), "tgt": 0, "tokens": 0, "seconds": 0.0}

    window = new_window()
    totals = {"tokens": 0, "seconds": 0.0}  # this session's training steps, for the summary
    evaluation_due = Every(config.eval_every, p.seconds)
    snapshot_due = Every(config.checkpoint_every, p.seconds)
    point_due = Every(config.average_every, p.seconds)
    last_validation: dict = {}
    session_start, seconds_before = time.perf_counter(), p.seconds

    def flush_window(lr: float) -> None:
        """Log the loss and throughput of the steps since the last record."""
        nonlocal window
        tokens = int(dist.sum(window["tokens"]))
        loss = dist.sum(float(window["loss"])) / max(dist.sum(window["tgt"]), 1)
        rate = tokens / max(window["seconds"], 1e-9)
        mfu = utilisation.of(rate / dist.world)  # each process has its own device and ceiling
        p.tokens += tokens
        totals["tokens"] += tokens
        totals["seconds"] += window["seconds"]
        if dist.is_main:
            log.append({"event": "train", "step": p.step, "epoch": round(p.epoch + p.batch / steps_per_epoch, 4),
                        "loss": round(loss, 4), "lr": lr, "tokens_per_second": round(rate, 1),
                        "mfu": None if mfu is None else round(mfu, 4), "seconds": round(p.seconds, 1)})
        bar.set_postfix(step=p.step, loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}",
                        mfu="n/a" if mfu is None else f"{mfu:.1%}", lr=f"{lr:.2e}", refresh=False)
        window = new_window()

    def snapshot() -> None:
        randoms = dist.gather(random_state(device))
        digests = dist.gather(parameter_digest(model))
        if dist.is_main:
            save_snapshot(run_dir, model, optimizer, p, randoms, scaler.state_dict() if needs_scaling else None,
                          keep=config.keep_checkpoints)
            publish_weights(run_dir, model, spec, {"training": {"step": p.step, "tokens": p.tokens,
                                                                "seconds": round(p.seconds, 1),
                                                                "validation_bleu": last_validation.get("bleu")}})
            # "checkpoint": the event's name in metrics.jsonl, kept for existing runs and their readers
            log.append({"event": "checkpoint", "step": p.step, "replica_digests": digests,
                        "replicas_identical": len(set(digests)) == 1})
            if len(set(digests)) > 1:
                warn(f"step {p.step}: the {dist.world} replicas' weights differ")
        dist.barrier()

    def evaluate_now(averaged: list[int] | None = None) -> None:
        nonlocal last_validation
        if dist.is_main:
            result = validate(model, vocabulary, corpus, config, device, autocast)
            last_validation = {"event": "validation", "step": p.step, "seconds": round(p.seconds, 1), **result}
            if averaged:
                last_validation["averaged_steps"] = averaged
            log.append(last_validation)
            log.plot()
            what = f"mean of the weights at steps {averaged[0]:,}-{averaged[-1]:,} ({len(averaged)})" if averaged else "greedy"
            bar.write(f"step {p.step}: validation loss {result['loss']:.3f}, BLEU {result['bleu'] or 0:.2f} "
                      f"({result['sentences']} sentences, {what})", file=sys.stderr)
        dist.barrier()

    def average_weights() -> None:
        """Replace the model's weights with the mean of the newest weight points, publish and validate them."""
        chosen: list[Path] = []
        if dist.is_main:
            save_point(run_dir, model, p.step, config.average_last)
            chosen = points(run_dir)[-config.average_last:]
        if dist.broadcast(len(chosen)) < 2:  # one point is the last weights, published already
            return
        if dist.is_main:
            copy_weights(model, average(chosen), f"the mean of {len(chosen)} weight points")
            averaged = [point_step(path) for path in chosen]
        evaluate_now(averaged if dist.is_main else None)
        if dist.is_main:
            publish_weights(run_dir, model, spec, {"training": {
                "step": p.step, "tokens": p.tokens, "seconds": round(p.seconds, 1),
                "validation_bleu": last_validation.get("bleu"), "averaged_steps": averaged}})

    try:
        stop = p.step >= total_steps or p.seconds >= budget
        while not stop:
            index = corpus.batches.plan(p.epoch)[p.batch]
            batch = corpus.batches.collate(index).to(device)
            tick = time.perf_counter()
            lr = learning_rate(p.step + 1, config)
            window["loss"] += train_step(net, model, batch, optimizer, scaler, autocast, config, loop, lr)
            window["tgt"] += batch.n_tgt_tokens
            window["tokens"] += batch.n_src_tokens + batch.n_tgt_tokens
            window["seconds"] += time.perf_counter() - tick
            p.step += 1
            p.batch += 1
            if p.batch >= steps_per_epoch:
                p.epoch, p.batch = p.epoch + 1, 0
            p.seconds = seconds_before + time.perf_counter() - session_start

            if p.step % config.log_every == 0:
                flush_window(lr)
            if timed:
                bar.update(int(p.seconds) - bar.n)
            else:
                bar.update(1)
            stop = p.step >= total_steps or p.seconds >= budget
            evaluate, save = evaluation_due.due(p.step, p.seconds), snapshot_due.due(p.step, p.seconds)
            point = point_due.due(p.step, p.seconds) and config.average_last > 1
            stop, evaluate, save, point = dist.broadcast((stop, evaluate, save, point))  # rank 0's clock decides for all
            if point and not stop and dist.is_main:
                save_point(run_dir, model, p.step, config.average_last)
            if evaluate and not stop:
                evaluate_now()
            if save and not stop:
                snapshot()
            if on_step is not None:
                on_step(p.step)
        if window["seconds"]:
            flush_window(learning_rate(p.step, config))
        evaluate_now()
        snapshot()
        if config.average_last > 1:
            average_weights()
    finally:
        bar.close()
    session_seconds = time.perf_counter() - session_start
    return {"run_dir": str(run_dir), "steps": p.step, "epochs": round(p.epoch + p.batch / steps_per_epoch, 3),
            "tokens": p.tokens, "seconds": round(p.seconds, 1), "session_seconds": round(session_seconds, 1),
            "tokens_per_second": round(totals["tokens"] / totals["seconds"], 1) if totals["seconds"] else None,
            "mfu": utilisation.of(totals["tokens"] / totals["seconds"] / dist.world) if totals["seconds"] else None,
            "averaged_steps": last_validation.get("averaged_steps"),
            "validation_bleu": last_validation.get("bleu"), "validation_loss": last_validation.get("loss"),
            "world": dist.world}
