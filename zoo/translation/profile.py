"""``zoo train --profile``: the training step before and after each measured speed-up, side by side.

Every stage trains a fresh copy of the model (same seed) on the same batches of a
seeded sample of the training split, in one process, and the stages take turns
(round-robin, so a machine that slows down mid-run slows them all alike). A stage adds
one change to the one before: the AdamW kernel, the attention kernel, reading the loss
back once per log line instead of every step, the batch size, zoo's dropout mask, the
blocked cross-entropy and, where the model's spec has changed it, the dropout rate
(the stages before use the 2017 paper's 0.1). The loop changes leave what a step
computes as it was (the dropout mask is drawn differently from the same distribution);
the batch size and the dropout rate change what a step learns, and their loss per token
was compared on full runs (README).
The 1,024-token stages cut their batches from the same sample, so their batches differ
from the 512-token stages'. For the first and the last stage, ``torch.profiler`` shows
where a step's time goes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from zoo.core.builder import build
from zoo.core.spec import load_spec
from zoo.training.distributed import Distributed
from zoo.training.loop import BEFORE, Loop, autocast_for, make_optimizer, measure_utilisation, train_step, use_loop
from zoo.translation.task import TranslationTask, read_split, tokenize_corpus
from zoo.translation.train_config import TranslationConfig
from zoo.translation.vocabulary import Vocabulary

SAMPLE_PAIRS = 20_000  # training pairs the profile's vocabulary and batches come from
BEFORE_BATCH_TOKENS = 512  # the batch size before the measurement
BEFORE_DROPOUT = 0.1  # transformer-en-it-small's dropout before the measurement (the 2017 paper's)


@dataclass
class Stage:
    name: str
    loop: Loop
    batch_tokens: int
    dropout: float = BEFORE_DROPOUT
    tokens: int = 0
    seconds: float = 0.0
    loss_sum: float = 0.0  # label-smoothed training loss over the measured steps
    target_tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.target_tokens if self.target_tokens else float("nan")


def stages(batch_tokens: int, dropout: float) -> list[Stage]:
    """The loop before, then one change at a time up to the defaults: ``batch_tokens``, and
    the spec's ``dropout`` where it differs from the recipe before."""
    fused = replace(BEFORE, optimizer="fused")
    math = replace(fused, attention="math")
    unsynced = replace(math, sync_every_step=False)
    cheap_dropout = replace(unsynced, dropout="zoo")
    out = [Stage(f"before: AdamW for-loop, flash attention, loss read every step, {BEFORE_BATCH_TOKENS}-token batches",
                 BEFORE, BEFORE_BATCH_TOKENS),
           Stage("+ fused AdamW", fused, BEFORE_BATCH_TOKENS),
           Stage("+ math attention kernel", math, BEFORE_BATCH_TOKENS),
           Stage("+ loss read once per log line", unsynced, BEFORE_BATCH_TOKENS)]
    if batch_tokens != BEFORE_BATCH_TOKENS:
        out.append(Stage(f"+ {batch_tokens}-token batches", unsynced, batch_tokens))
    out += [Stage("+ zoo's dropout mask", cheap_dropout, batch_tokens),
            Stage("+ blocked cross-entropy", Loop(), batch_tokens)]
    if dropout != BEFORE_DROPOUT:
        out.append(Stage(f"+ dropout {dropout:g}, the model's recipe", Loop(), batch_tokens, dropout=dropout))
    out[-1].name += " (the defaults)"
    return out


def top_operators(run_steps: Callable[[], None], count: int = 6) -> list[tuple[str, float]]:
    """The operators with the largest share of CPU time while ``run_steps`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_steps()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1
    ranked = sorted(events, key=lambda e: -e.self_cpu_time_total)[:count]
    return [(e.key.removeprefix("aten::"), e.self_cpu_time_total / total) for e in ranked]


def profile_training(config: TranslationConfig, steps: int = 40, rounds: int = 2, progress: bool = True,
                     warn: Callable[[str], None] = print) -> dict:
    """Tokens/s and MFU of every stage on the same batches; the operator profile of the first and last."""
    from tqdm import tqdm

    dist = Distributed.start(config.device)
    splits = read_split(config, warn)
    rng = np.random.default_rng(config.seed)
    train_pairs = [splits["train"][i] for i in rng.permutation(len(splits["train"]))[:SAMPLE_PAIRS]]
    vocabulary = Vocabulary.train([p.en for p in train_pairs], [p.it for p in train_pairs], config.vocab_size,
                                  config.tokenizer, config.vocabulary)
    spec = load_spec(config.model, {**config.overrides, "vocab_size": vocabulary.size})
    sample = {"train": train_pairs, "validation": []}
    autocast, _ = autocast_for(config, dist.device)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    plan = stages(config.batch_tokens, spec.dropout)
    runs = {}
    for stage in plan:
        corpus = tokenize_corpus(sample, vocabulary, replace(config, batch_tokens=stage.batch_tokens), spec,
                                 dist.rank, dist.world)
        stage_spec = load_spec(config.model, {**config.overrides, "vocab_size": vocabulary.size, "dropout": stage.dropout})
        model = use_loop(build(stage_spec, seed=config.seed, device=dist.device).train(), stage.loop)
        runs[stage.name] = (corpus.batches, model, make_optimizer(model, config, stage.loop))
    task = TranslationTask(config, warn)  # the loss; its corpus: the last stage's, for the FLOPs per token
    task.corpus = corpus
    utilisation = measure_utilisation(task.flops_per_token(spec), dist.device,
                                      getattr(autocast, "fast_dtype", torch.float32))

    def run(stage: Stage, first: int, count: int, record: bool = True) -> None:
        """Train ``count`` steps of ``stage``; add their tokens, seconds and loss to it if ``record``."""
        batches, model, optimizer = runs[stage.name]
        batch_plan = batches.plan(0)
        tokens, target_tokens, loss_sum, start = 0, 0, torch.zeros((), device=dist.device), time.perf_counter()
        for i in range(first, first + count):
            batch = batches.collate(batch_plan[i % len(batch_plan)]).to(dist.device)
            loss_sum += train_step(model, model, task, batch, optimizer, scaler, autocast, config, stage.loop,
                                   lr=config.lr / 10)[0]
            tokens += batch.n_src_tokens + batch.n_tgt_tokens
            target_tokens += batch.n_tgt_tokens
        if record:
            stage.seconds += time.perf_counter() - start
            stage.tokens, stage.target_tokens = stage.tokens + tokens, stage.target_tokens + target_tokens
            stage.loss_sum += float(loss_sum)

    bar = tqdm(total=len(plan) * (rounds + 1), desc="profiling", unit="stage", disable=not progress)
    for stage in plan:  # warm-up: first calls allocate and pick kernels
        run(stage, 0, 3, record=False)
        bar.update()
    for r in range(rounds):
        for stage in plan:
            run(stage, 3 + r * steps, steps)
            bar.update()
    bar.close()
    operators = {stage.name: top_operators(lambda: run(stage, 0, min(steps, 10), record=False))
                 for stage in (plan[0], plan[-1])}
    base = plan[0].tokens_per_second or 1.0
    return {"model": spec.name, "device": str(dist.device), "threads": torch.get_num_threads(),
            "dtype": utilisation.dtype, "steps_per_stage": steps * rounds, **utilisation.to_dict(),
            "stages": [{"name": s.name, "batch_tokens": s.batch_tokens, "tokens_per_second": round(s.tokens_per_second, 1),
                        "mfu": utilisation.of(s.tokens_per_second), "speedup": round(s.tokens_per_second / base, 3),
                        "training_loss": round(s.loss, 4)}
                       for s in plan],
            "operators": {name: [{"operator": op, "share": round(share, 4)} for op, share in ops]
                          for name, ops in operators.items()}}


def report_lines(result: dict) -> list[str]:
    """The profile as ``zoo train --profile`` prints it."""
    ceiling = result["matmul_ceiling_flop_per_s"]
    lines = [f"training step profile: {result['model']} on {result['device']} ({result['threads']} threads, "
             f"{result['dtype']} matmuls, ceiling {ceiling / 1e12:.2f} TFLOP/s), "
             f"{result['flops_per_token'] / 1e6:.1f} MFLOP per token, {result['steps_per_stage']} steps per stage, "
             f"same batches" if ceiling else "training step profile (no matmul ceiling measured)",
             f"  {'stage':<86} {'tokens/s':>9} {'MFU':>6} {'speed-up':>8} {'loss':>6}"]
    for s in result["stages"]:
        mfu = "n/a" if s["mfu"] is None else f"{s['mfu']:.1%}"
        lines.append(f"  {s['name']:<86} {s['tokens_per_second']:>9,.0f} {mfu:>6} {s['speedup']:>7.2f}x "
                     f"{s['training_loss']:>6.3f}")
    lines.append("  (loss: label-smoothed training loss per target token over the measured steps; "
                 "stages with the same batch size train on the same batches)")
    lines.append("where a step's time goes (share of CPU time, largest operators):")
    for name, ops in result["operators"].items():
        lines.append(f"  {name.split(':')[0].split(' (')[0]}: " + ", ".join(f"{o['operator']} {o['share']:.0%}" for o in ops))
    return lines
