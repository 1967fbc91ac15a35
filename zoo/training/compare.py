"""Comparing training runs on the same data: each run's size, speed and validation results
read from its directory (``train.json``, ``spec.yaml``, ``metrics.jsonl``), as table rows and
as validation curves against training time and tokens seen.

>>> runs = compare(["runs/rotary", "runs/learned"])
>>> header, rows = table_rows(runs)
>>> draw(runs, "curves.png")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from zoo.core.files import MANIFEST, SPEC, TRAIN_CONFIG, atomic_path, read_json
from zoo.core.spec import load_spec
from zoo.errors import DataError, PictureError, ZooError, first_line
from zoo.training.run_log import RunLog

LANGUAGE_MODELLING, TRANSLATION = "language-modelling", "translation"
SPLIT_SETTINGS = {LANGUAGE_MODELLING: ("val_fraction",),  # train.json keys that choose the validation set
                  TRANSLATION: ("validation_fraction", "test_fraction", "split_seed")}


@dataclass
class RunSummary:
    """One training run as :func:`compare` shows it. ``validations`` are the run's validation
    records in step order, each with ``tokens`` (cumulative training tokens; estimated from the
    training records where the log lacks it, None where it has no token counts at all)."""

    path: Path
    task: str
    model: str
    plugins: str  # "positional/attention/mlp" types; "?" when the spec cannot be loaded
    tokenizer: tuple[str | None, int | None]  # name and vocabulary size
    data: str
    split: dict
    parameters: int | None
    tokens: int | None  # training tokens seen
    seconds: float | None  # training time
    mfu: float | None  # mean model FLOP utilisation of the training records
    validations: list[dict]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def trained_on(self) -> str:
        split = ", ".join(f"{k} {v}" for k, v in self.split.items())
        return f"{self.data} ({split})" if split else self.data

    @property
    def tokens_per_second(self) -> float | None:
        return self.tokens / self.seconds if self.tokens is not None and self.seconds else None


def cumulative_tokens(train: list[dict]) -> list[float] | None:
    """Training tokens seen at each training record: its ``tokens``, or for older records the
    previous count plus ``tokens_per_second`` times the training seconds since; None when a
    record has neither."""
    total, before, out = 0.0, 0.0, []
    for record in train:
        if "tokens" in record:
            total = record["tokens"]
        elif "tokens_per_second" in record:
            total += record["tokens_per_second"] * max(record["seconds"] - before, 0.0)
        else:
            return None
        before = record["seconds"]
        out.append(total)
    return out


def read_run(path: str | Path) -> RunSummary:
    """Summarise the run directory ``path`` (as written by ``zoo train``)."""
    run_dir = Path(path)
    if not (run_dir / TRAIN_CONFIG).is_file():
        raise DataError(f"{run_dir}: not a run directory (no {TRAIN_CONFIG}); make one with "
                        f"zoo train MODEL --data FILE -o {run_dir}")
    config = read_json(run_dir / TRAIN_CONFIG, DataError)
    task = config.get("task", TRANSLATION)  # translation runs predate the key
    try:
        spec = load_spec(run_dir / SPEC)
    except ZooError:  # e.g. a plugin that is not installed here
        spec = None
    records = RunLog(run_dir).records
    start = next((r for r in records if r.get("event") == "start"), {})
    train = [r for r in records if r.get("event") == "train"]
    validations = [dict(r) for r in records if r.get("event") == "validation"]
    tokens = cumulative_tokens(train) if train else None
    for record in validations:
        if "tokens" not in record:
            record["tokens"] = None if tokens is None else float(
                np.interp(record["step"], [0] + [r["step"] for r in train], [0.0] + tokens))
    mfus = [r["mfu"] for r in train if r.get("mfu") is not None]
    parameters = start.get("parameters")
    if parameters is None and (run_dir / MANIFEST).is_file():
        parameters = read_json(run_dir / MANIFEST, DataError).get("parameters")
    vocab_size = config.get("vocab_size") or (spec.vocab_size if spec else None)
    return RunSummary(
        path=run_dir, task=task, model=str(config.get("model")),
        plugins="?" if spec is None else f"{spec.positional.type}/{spec.attention.type}/{spec.mlp.type}",
        tokenizer=(start.get("tokenizer") or config.get("tokenizer"), vocab_size),  # "model" resolved at start
        data=str(config.get("data")), split={k: config.get(k) for k in SPLIT_SETTINGS.get(task, ())},
        parameters=parameters, tokens=None if tokens is None else round(tokens[-1]),
        seconds=train[-1]["seconds"] if train else None, mfu=sum(mfus) / len(mfus) if mfus else None,
        validations=validations)


def compare(paths: Iterable[str | Path]) -> list[RunSummary]:
    """Read the runs at ``paths`` and check that they can be compared: one task, the same data
    and validation split, and at least one validation each."""
    runs = [read_run(p) for p in paths]
    if not runs:
        raise DataError("name at least one run directory to compare")
    first = runs[0]
    for run in runs:
        if not run.validations:
            raise DataError(f"{run.name}: no validation yet; train it longer or lower --eval-every")
        if run.task != first.task:
            raise DataError(f"{first.name} is a {first.task} run, {run.name} a {run.task} run; "
                            "compare runs of the same task")
        if (run.data, run.split) != (first.data, first.split):
            raise DataError(f"{first.name} was trained on {first.trained_on}, {run.name} on {run.trained_on}; "
                            "compare runs on the same data")
    return runs


def tokenizers_differ(runs: list[RunSummary]) -> list[str]:
    """The language-modelling runs' tokenizers when they differ (their losses per token are then
    not comparable; bits per character are), else []."""
    kinds = list(dict.fromkeys(r.tokenizer for r in runs if r.task == LANGUAGE_MODELLING))
    if len(kinds) < 2:
        return []
    names_suffice = len({name for name, _ in kinds}) == len(kinds)
    return [str(name) if names_suffice else f"{name}-{vocab}" for name, vocab in kinds]


def note(runs: list[RunSummary]) -> str | None:
    """The line to print under the table, if any."""
    differ = tokenizers_differ(runs)
    if differ:
        return f"tokenizers differ ({', '.join(differ)}): compare bits per character; loss per token is not comparable"
    return None


def _number(value, form: str) -> str:
    return "-" if value is None else format(value, form)


def table_rows(runs: list[RunSummary]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The comparison table: its header and one row of text per run."""
    lm = runs[0].task == LANGUAGE_MODELLING
    header = ("run", "model", "plugins", *(("tokenizer",) if lm else ()), "parameters", "tokens seen", "tokens/s",
              "MFU", "final loss", "best loss", *(("perplexity", "bits/char") if lm else ("BLEU",)))
    rows = []
    for run in runs:
        final = run.validations[-1]
        results = ((_number(final.get("perplexity"), ".2f"), _number(final.get("bits_per_character"), ".4f"))
                   if lm else (_number(final.get("bleu"), ".2f"),))
        rows.append((run.name, run.model, run.plugins, *((str(run.tokenizer[0]),) if lm else ()),
                     _number(run.parameters, ","), _number(run.tokens, ","), _number(run.tokens_per_second, ",.0f"),
                     _number(run.mfu, ".1%"), _number(final["loss"], ".4f"), _number(min(v["loss"] for v in run.validations), ".4f"), *results))
    return header, rows


def check_picture_path(path: str | Path) -> None:
    """Refuse a file name whose suffix matplotlib cannot write."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if Path(path).suffix.lower().lstrip(".") not in formats:
        raise PictureError(f"{path}: cannot draw a picture of that type; end the name with "
                           f"{', '.join('.' + f for f in sorted(formats))}")


def draw(runs: list[RunSummary], path: str | Path) -> Path:
    """Draw each run's validation loss (bits per character when tokenizers differ) against
    training seconds and against tokens seen, side by side, into ``path`` (PNG, SVG, PDF, ...)."""
    check_picture_path(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    key, measure = (("bits_per_character", "bits per character") if tokenizers_differ(runs)
                    else ("loss", "loss per token"))
    fig, (time_ax, tokens_ax) = plt.subplots(1, 2, figsize=(13, 4.5))
    try:
        for run in runs:
            points = [v for v in run.validations if v.get(key) is not None]
            time_ax.plot([v["seconds"] for v in points], [v[key] for v in points], "o-", label=run.name)
            if all(v["tokens"] is not None for v in points):
                tokens_ax.plot([v["tokens"] for v in points], [v[key] for v in points], "o-", label=run.name)
        tokens_ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 500k, 1.5M
        for ax, x, title in ((time_ax, "training seconds", "against training time"),
                             (tokens_ax, "training tokens seen", "against tokens seen")):
            ax.set(xlabel=x, ylabel=f"validation {measure}", title=f"validation {measure} {title}")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    except OSError as exc:
        raise PictureError(f"{path}: cannot write the picture ({first_line(exc)})") from None
    finally:
        plt.close(fig)
    return Path(path)
