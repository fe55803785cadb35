"""A CSV metrics log that a resumed run continues instead of restarting.

Lightning's CSVLogger deletes `metrics.csv` when its folder exists and rewrites it when new keys
appear, so a resumed run lost everything logged before. This one writes long rows
(`step,metric,value`), appended and flushed as they come; on resume the rows past the resumed
step (those of the edit that is redone) are cut first.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from benchmark.records import open_no_follow

HEADER = ["step", "metric", "value"]


class AppendingCSVLogger(Logger):
    def __init__(self, folder: Path, resume_step: int | None = None):
        super().__init__()
        self.path = Path(folder) / "logs" / "metrics.csv"
        self._handle = None
        if rank_zero_only.rank != 0:  # one file for the run, written by rank 0 alone
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None or not self.path.exists():
            with open_no_follow(self.path, "w", newline="") as handle:
                handle.write(",".join(HEADER) + "\n")
        else:
            with open(self.path, newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if r.get("step", "").isdigit()
                        and int(r["step"]) <= resume_step]
            with open_no_follow(self.path, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=HEADER)
                writer.writeheader()
                writer.writerows({k: r[k] for k in HEADER} for r in rows)
        self._handle = open_no_follow(self.path, "a", newline="")
        self._writer = csv.writer(self._handle)

    @property
    def name(self) -> str:
        return "csv"

    @property
    def version(self) -> str:
        return ""

    @property
    def log_dir(self) -> str:
        return str(self.path.parent)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        return self._writer

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The resolved config is the run folder's config.yaml."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for name, value in metrics.items():
            self._writer.writerow([step if step is not None else "", name, value])
        self._handle.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None and not self._handle.closed:
            self._handle.close()
