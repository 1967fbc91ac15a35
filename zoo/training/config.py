"""The settings of a training run, saved as ``train.json``: what every task shares, and the
look-up from a run's ``task`` to its settings class (translation, language modelling).

Torch-free, so the command line can show the defaults without importing torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from zoo.core.files import TRAIN_CONFIG, atomic_file, read_json
from zoo.errors import DataError

# a run's task -> "module:class" of its settings and of its task (imported on use)
TASKS = {
    "translation": ("zoo.translation.train_config:TranslationConfig", "zoo.translation.task:TranslationTask"),
    "language-modelling": ("zoo.lm.config:LMConfig", "zoo.lm.task:LanguageModelling"),
}


@dataclass
class TrainConfig:
    """Everything the shared loop reads; a task's settings class adds its own fields and defaults."""

    task: str = ""
    model: str = ""
    data: str = ""
    overrides: dict = field(default_factory=dict)  # --set PATH=VALUE on the spec
    seed: int = 0
    # optimisation: AdamW (β1 0.9), gradient clipping, a learning-rate schedule
    lr: float = 1e-3  # peak, reached after warmup_steps
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine (to lr/10 over the budget) | inverse-sqrt | constant
    beta2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    amp: str = "auto"  # auto (CUDA; CPUs with native bf16) | off | bf16 | fp16
    # budget: the first limit reached stops training
    max_minutes: float | None = None
    max_steps: int | None = None
    epochs: int = 30
    # bookkeeping
    checkpoint_every: int | str = "5m"  # training snapshots: steps ("200") or time ("5m", "90s")
    keep_checkpoints: int = 2  # snapshots kept
    # checkpoint averaging (zoo.training.averaging): the published weights are the mean of the
    # last ``average_last`` weight points, one every ``average_every`` (1: no averaging)
    average_last: int = 1
    average_every: int | str = "1m"
    eval_every: int | str = "5m"
    log_every: int = 20
    device: str | None = None  # None: CUDA when available
    checkpoint_activations: bool = False  # recompute each block in the backward pass: less memory, more time
    strategy: str = "ddp"  # ddp: every process holds the whole model | fsdp: FSDP2 shards (zoo.training.fsdp)
    # fine-tuning: start from a checkpoint instead of random weights (the task says which it takes)
    weights: str | None = None
    # LoRA (zoo.training.weights): train a rank-r adapter on the frozen weights instead of every weight
    lora_rank: int | None = None
    lora_alpha: float | None = None  # the update is scaled by alpha / rank; None: 2 x rank
    lora_dropout: float = 0.0
    lora_targets: str = "attention,mlp"  # roles (attention, mlp) or linear layers by name (c_attn, attn.c_proj)
    lora_base: str = "float32"  # float32 | bfloat16: the frozen matrices' dtype (bfloat16 needs --amp bf16)
    merge: bool = True  # publish the merged weights (False: base/ + adapter/, merged when loaded)

    # settings that decide the run's trajectory, fixed once it starts (a task adds its own) ...
    TRAJECTORY: ClassVar[tuple[str, ...]] = ("lr", "warmup_steps", "schedule", "beta2", "eps", "weight_decay",
                                             "clip_norm", "amp", "seed", "strategy", "weights", "lora_rank",
                                             "lora_alpha", "lora_dropout", "lora_targets", "lora_base")
    # ... and those a resumed run may change: when to stop, checkpoint, validate and publish
    ADJUSTABLE: ClassVar[tuple[str, ...]] = ("max_minutes", "max_steps", "epochs", "checkpoint_every", "eval_every",
                                             "average_last", "average_every", "checkpoint_activations", "merge")
    # Fine-tuning a checkpoint (weights) starts from these unless the command line says otherwise:
    # a small peak with a short warm-up (large steps would wreck what the checkpoint knows) and no
    # weight decay pulling it towards zero ...
    FINE_TUNING: ClassVar[dict] = {"lr": 1e-4, "warmup_steps": 20, "weight_decay": 0.0}
    # ... and a LoRA adapter (lora_rank) from these: B starts at zero and is scaled by alpha / rank
    # (2 by default), so it takes larger steps than the full weights; Hu et al. (2021) fine-tuned
    # GPT-2 with lr 2e-4 at a scale of 8, about the same step in the weights as 1e-3 at our 2. An
    # adapter run publishes its last adapter (checkpoint averaging averages whole models).
    LORA_TUNING: ClassVar[dict] = {**FINE_TUNING, "lr": 1e-3, "average_last": 1}

    def save(self, run_dir: Path) -> None:
        with atomic_file(Path(run_dir) / TRAIN_CONFIG) as f:
            f.write((json.dumps(dataclasses.asdict(self), indent=2) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, run_dir: Path) -> "TrainConfig":
        """The settings of run directory ``run_dir``, as the class of its task."""
        path = Path(run_dir) / TRAIN_CONFIG
        if not Path(run_dir).is_dir():
            raise DataError(f"{run_dir}: no such run directory; start one with zoo train MODEL --data FILE -o {run_dir}")
        if not path.is_file():
            raise DataError(f"{run_dir}: no {TRAIN_CONFIG}; is it a run directory made by 'zoo train'?")
        data = read_json(path, DataError)
        task = data.setdefault("task", "translation")  # runs from before language modelling have no task
        config_class = task_config(task, f"{path}: ")
        if not issubclass(config_class, cls):
            raise DataError(f"{run_dir} is a {task} run, not a {cls.__name__} run")
        known = {f.name for f in dataclasses.fields(config_class)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"{path}: unknown setting {unknown[0]!r}; was the run made by a newer zoo?")
        return config_class(**data)


def task_config(task: str, where: str = "") -> type[TrainConfig]:
    """The settings class of ``task``."""
    return _load(task, 0, where)


def task_class(task: str) -> type:
    """The :class:`zoo.training.task.Task` subclass of ``task``."""
    return _load(task, 1)


def task_of_family(family: str) -> str:
    """The task that trains a model of ``family``: a decoder learns text, an encoder-decoder translates."""
    return "translation" if family == "encoder-decoder" else "language-modelling"


def _load(task: str, which: int, where: str = ""):
    if task not in TASKS:
        raise DataError(f"{where}unknown training task {task!r}; zoo trains {', '.join(TASKS)}")
    module, _, name = TASKS[task][which].partition(":")
    return getattr(importlib.import_module(module), name)


def parse_interval(value: int | str) -> tuple[str, float]:
    """``200`` or ``"200"`` → ("steps", 200); ``"5m"`` → ("seconds", 300); ``"90s"`` → ("seconds", 90)."""
    text = str(value).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], 0)
    try:
        amount = float(text[:-1]) if scale else int(text)
    except ValueError:
        amount = -1
    if amount <= 0:
        raise DataError(f"interval {value!r}: give a number of steps (200) or a time (90s, 5m, 1h)")
    return ("seconds", amount * scale) if scale else ("steps", amount)
