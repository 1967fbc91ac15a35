"""A training run's metrics log (``metrics.jsonl``) and its loss / validation-BLEU curves PNG."""

from __future__ import annotations

import json
from pathlib import Path

from zoo.core.files import CURVES, METRICS, atomic_file, atomic_path


class RunLog:
    """Appends one JSON record per line; on resume, records past the training snapshot resumed from are dropped."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / METRICS
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
        """Draw training loss, validation loss and validation BLEU against steps into ``curves.png``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [r for r in self.records if r.get("event") == "train"]
        val = [r for r in self.records if r.get("event") == "validation"]
        fig, (loss_ax, bleu_ax) = plt.subplots(1, 2, figsize=(11, 4))
        loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train (label-smoothed)")
        if val:
            loss_ax.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="validation (NLL)")
        loss_ax.set(xlabel="step", ylabel="loss per target token", title="loss")
        loss_ax.legend()
        loss_ax.grid(alpha=0.3)
        bleu_ax.plot([r["step"] for r in val], [r["bleu"] for r in val], "o-", color="tab:green")
        bleu_ax.set(xlabel="step", ylabel="BLEU", title="validation BLEU (greedy, single reference)")
        bleu_ax.grid(alpha=0.3)
        fig.tight_layout()
        target = self.path.with_name(CURVES)
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        return target
