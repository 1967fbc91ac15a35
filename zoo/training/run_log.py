"""A training run's metrics log (``metrics.jsonl``) and its curves (``curves.png``): loss, the
task's validation figure (BLEU, bits per character), training speed."""

from __future__ import annotations

import json
from pathlib import Path

from zoo.core.files import CURVES, METRICS, atomic_file, atomic_path


class RunLog:
    """Appends one JSON record per line; on resume, records past the training snapshot resumed from are dropped."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None,
                 metric: tuple[str, str] | None = ("bleu", "validation BLEU (greedy, single reference)")) -> None:
        self.path = Path(run_dir) / METRICS
        self.metric = metric  # a validation record's field to draw beside the loss, and its title
        self.records: list[dict] = []
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
        if resume_step is not None:
            self.records = [r for r in self.records if r.get("step", 0) <= resume_step]
            self._rewrite()

    def _rewrite(self) -> None:
        with atomic_file(self.path) as f:
            f.write("".join(json.dumps(r) + "\n" for r in self.records).encode("utf-8"))

    def append(self, record: dict) -> None:
        self.records.append(record)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self) -> Path:
        """Draw training loss, validation loss, the task's validation figure and training speed
        (tokens/s, MFU) against steps into ``curves.png``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [r for r in self.records if r.get("event") == "train"]
        validations = [r for r in self.records if r.get("event") == "validation"]
        val = [r for r in validations if "averaged_steps" not in r]
        averaged = [r for r in validations if "averaged_steps" in r]  # the published mean of the last weights
        fig, (loss_ax, metric_ax, speed_ax) = plt.subplots(1, 3, figsize=(16, 4))
        loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
        if val:
            loss_ax.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="validation (NLL)")
        if averaged:
            loss_ax.plot([r["step"] for r in averaged], [r["loss"] for r in averaged], "*", color="tab:red",
                         markersize=10, label="validation, weights averaged")
        loss_ax.set(xlabel="step", ylabel="loss per token", title="loss")
        loss_ax.legend()
        loss_ax.grid(alpha=0.3)
        if self.metric:
            key, title = self.metric
            shown = [r for r in val if r.get(key) is not None]
            metric_ax.plot([r["step"] for r in shown], [r[key] for r in shown], "o-", color="tab:green",
                           label="last weights")
            shown = [r for r in averaged if r.get(key) is not None]
            if shown:
                metric_ax.plot([r["step"] for r in shown], [r[key] for r in shown], "*", color="tab:red",
                               markersize=10, label="weights averaged")
                metric_ax.legend()
            metric_ax.set(xlabel="step", title=title)
            metric_ax.grid(alpha=0.3)
        else:
            metric_ax.axis("off")
        speed_ax.plot([r["step"] for r in train], [r["tokens_per_second"] for r in train], color="tab:purple")
        speed_ax.set(xlabel="step", ylabel="tokens/s", title="training speed")
        speed_ax.grid(alpha=0.3)
        with_mfu = [r for r in train if r.get("mfu") is not None]
        if with_mfu:  # the right-hand axis: the same speed as model FLOP utilisation
            mfu_ax = speed_ax.twinx()
            mfu_ax.plot([r["step"] for r in with_mfu], [100 * r["mfu"] for r in with_mfu], alpha=0)
            mfu_ax.set_ylabel("MFU (%)")
        fig.tight_layout()
        target = self.path.with_name(CURVES)
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        return target
