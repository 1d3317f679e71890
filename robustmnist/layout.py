"""Where every file of a run, a sweep and an experiment lives: one place for all the names.

>>> RunDir(Path("runs/none-seed0")).checkpoint.as_posix()
'runs/none-seed0/checkpoint.pt'
>>> ExperimentDir(Path("results/q")).run("thick", 1).root.as_posix()
'results/q/runs/thick-seed1'
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from robustmnist import RobustMnistError


@dataclass(frozen=True)
class RunDir:
    """A training run: config.json, metrics.csv, checkpoint.pt, summary.json."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def read_metrics(self) -> list[dict[str, float]]:
        """The rows of metrics.csv ([] when absent); a clear error when malformed."""
        if not self.metrics.is_file():
            return []
        try:
            with self.metrics.open() as f:
                return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
        except (OSError, ValueError, TypeError) as err:
            raise RobustMnistError(f"{self.metrics}: unreadable metrics ({err}); restore it or "
                                   "retrain with --force") from None


@dataclass(frozen=True)
class SweepDir:
    """A sweep: sweep.csv (tidy rows), predictions.npz (aligned with the rows), sweep.json
    (provenance; written last, it marks the sweep complete)."""

    root: Path

    @classmethod
    def of(cls, path: Path) -> SweepDir:
        """The sweep folder of `path` (the folder itself or its sweep.csv)."""
        path = Path(path)
        return cls(path.parent if path.name == "sweep.csv" else path)

    @property
    def csv(self) -> Path:
        return self.root / "sweep.csv"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.npz"

    @property
    def meta(self) -> Path:
        return self.root / "sweep.json"


@dataclass(frozen=True)
class ExperimentDir:
    """An experiment's output: runs/<variant>-seed<seed>/, sweep/, experiment.json."""

    root: Path

    def run(self, variant: str, seed: int) -> RunDir:
        return RunDir(self.root / "runs" / f"{variant}-seed{seed}")

    @property
    def sweep(self) -> SweepDir:
        return SweepDir(self.root / "sweep")

    @property
    def record(self) -> Path:
        return self.root / "experiment.json"
