"""Evaluation: checkpoints x (clean + thickness-perturbed test sets) -> tidy rows.

Rows (one per checkpoint x family x level) are the format every later step reads:
``run, model, variant, seed, epochs, checkpoint, family, level, measured_thickness, ink_ratio,
erased_fraction, n, accuracy, error, nll, acc_class_0 .. acc_class_9``. Per-image predictions
are kept as one (rows, N) array aligned with the rows (for paired McNemar tests in reports).
A sweep folder (`layout.SweepDir`) holds sweep.csv, predictions.npz and sweep.json.
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from robustmnist import RobustMnistError, artifacts
from robustmnist.checkpoint import Checkpoint, Classifier, load_checkpoint
from robustmnist.data import MD5, MnistSplit, data_subdir, load_split
from robustmnist.layout import RunDir, SweepDir
from robustmnist.perturb import (
    DEFAULT_LEVELS,
    FAMILIES,
    PerturbedSet,
    check_level,
    load_or_build,
    load_or_build_levels,
)

CLASS_COLUMNS = [f"acc_class_{c}" for c in range(10)]
REQUIRED_COLUMNS = ("run", "variant", "seed", "family", "level", "accuracy")
N_EXAMPLES = 8  # example digits kept per set, for the report's grid
#: A level that leaves more than this share of digits nearly erased gets a warning.
ERASED_WARNING = 0.05

Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def cache_dir_of(data_dir: Path | None) -> Path:
    """Where perturbed test sets are cached: ``<data dir>/perturbed``."""
    return data_subdir(data_dir, "perturbed")


def test_set(family: str, level: float, data_dir: Path | None = None,
             cache_dir: Path | None = None, log: Log = _quiet,
             test: MnistSplit | None = None) -> tuple[PerturbedSet, np.ndarray]:
    """The (family, level) version of the MNIST test set (built once, then cached) and its
    labels. ``clean`` (level 0) is the unmodified set, measured the same way. `test` may be
    passed when already loaded."""
    check_level(family, level)
    test = test or load_split("test", data_dir, log=log)
    t0 = time.perf_counter()
    pset, built = load_or_build(test.images[:, 0].numpy(), family, level,
                                MD5["t10k-images-idx3-ubyte"],
                                cache_dir if cache_dir is not None else cache_dir_of(data_dir))
    if built:
        log(f"built {family} {level:g} in {time.perf_counter() - t0:.1f}s "
            f"(measured {pset.mean_thickness:.2f} px, ink {pset.mean_ink_ratio:.2f})")
    return pset, test.labels.numpy()


def family_sets(family: str, levels: Sequence[float], data_dir: Path | None = None,
                cache_dir: Path | None = None, log: Log = _quiet,
                test: MnistSplit | None = None) -> list[PerturbedSet]:
    """Every level of one family: the cached ones loaded, the missing ones built together
    (each digit's skeleton or upscaling computed once for all of them)."""
    test = test or load_split("test", data_dir, log=log)
    t0 = time.perf_counter()
    results = load_or_build_levels(test.images[:, 0].numpy(), family, levels,
                                   MD5["t10k-images-idx3-ubyte"],
                                   cache_dir if cache_dir is not None else cache_dir_of(data_dir))
    built = [p for p, was_built in results if was_built]
    if built:
        log(f"built {family} {', '.join(f'{p.level:g}' for p in built)} in "
            f"{time.perf_counter() - t0:.1f}s (measured "
            f"{', '.join(f'{p.mean_thickness:.2f}' for p in built)} px)")
    return [p for p, _ in results]


def _repeated(values: Sequence[Any]) -> Any:
    """The first value that occurs again in `values` (None if all differ)."""
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def parse_levels(families: Sequence[str], levels: Sequence[float] | None) -> dict[str, list[float]]:
    """family -> levels to evaluate (defaults per family); validated."""
    chosen: dict[str, list[float]] = {}
    # Repeats are refused, as an experiment file refuses them.
    if (family := _repeated(families)) is not None:
        raise RobustMnistError(f"--family {family} is given twice; give each family once")
    if (level := _repeated(levels or [])) is not None:
        raise RobustMnistError(f"--levels: {level:g} is given twice; list each level once")
    for family in families:
        if family not in FAMILIES or family == "clean":
            raise RobustMnistError(f"unknown family {family!r}; choose from "
                                   f"{', '.join(f for f in FAMILIES if f != 'clean')}")
        family_levels = list(levels) if levels else list(DEFAULT_LEVELS[family])
        for level in family_levels:
            check_level(family, level)
        chosen[family] = family_levels
    return chosen


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    labels: np.ndarray                   # (N,) test labels
    predictions: np.ndarray              # (rows, N) int8, aligned with `rows`
    meta: dict[str, Any] = field(default_factory=dict)
    clean_thickness: np.ndarray | None = None  # (N,) each clean test digit's own thickness
    example_sets: list[tuple[str, float]] = field(default_factory=list)
    examples: np.ndarray | None = None   # (sets, K, 28, 28) uint8, aligned with example_sets

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def _unique_identities(loaded: Sequence[Checkpoint]) -> list[dict[str, Any]]:
    identities = [c.identity() for c in loaded]
    names = [i["run"] for i in identities]
    if len(set(names)) != len(names):
        # Two run folders of the same name: qualify with the parent folder.
        for ident, ckpt in zip(identities, loaded, strict=True):
            ident["run"] = str(ckpt.path.parent)
    if len({i["run"] for i in identities}) != len(identities):
        raise RobustMnistError("the same checkpoint is listed twice; pass each once")
    return identities


def _row(ident: dict[str, Any], ckpt: Checkpoint, pset: PerturbedSet, labels: np.ndarray,
         nll: float, acc: float, pred: np.ndarray) -> dict[str, Any]:
    row = {**ident, "checkpoint": str(ckpt.path), "family": pset.family, "level": float(pset.level),
           "measured_thickness": pset.mean_thickness, "ink_ratio": pset.mean_ink_ratio,
           "erased_fraction": pset.erased_fraction, "n": len(labels),
           "accuracy": acc, "error": 1 - acc, "nll": nll}
    for c in range(10):
        mask = labels == c
        row[CLASS_COLUMNS[c]] = float((pred[mask] == c).mean()) if mask.any() else np.nan
    return row


#: Per set, in order: (mean NLL, accuracy, predicted labels int8 (N,)).
Scores = list[tuple[float, float, np.ndarray]]
#: Scores every checkpoint on every set; an executor may pass its own (e.g. one Ray task per
#: checkpoint). Arguments: checkpoints, sets, labels (N,), device.
ScoreFn = Callable[[Sequence[Checkpoint], Sequence[PerturbedSet], np.ndarray, torch.device],
                   list[Scores]]


def score(ckpt: Checkpoint, sets: Sequence[PerturbedSet], labels: np.ndarray,
          device: torch.device) -> Scores:
    """One checkpoint on every set (pure: numbers only, no rows or paths)."""
    model = Classifier.from_checkpoint(ckpt, device)
    labels_t = torch.from_numpy(labels).to(device)
    out = []
    for pset in sets:
        nll, acc, pred = model.evaluate(torch.from_numpy(pset.images).unsqueeze(1), labels_t)
        out.append((nll, acc, pred.cpu().numpy().astype(np.int8)))
    return out


def _score_here(loaded: Sequence[Checkpoint], sets: Sequence[PerturbedSet], labels: np.ndarray,
                device: torch.device) -> list[Scores]:
    return [score(ckpt, sets, labels, device) for ckpt in loaded]


def sweep(checkpoints: Sequence[Path], families: dict[str, list[float]], *,
          device: torch.device, data_dir: Path | None = None, cache_dir: Path | None = None,
          log: Log = _quiet, scores: ScoreFn | None = None) -> SweepResult:
    """Evaluate every checkpoint on the clean set and every (family, level) set.

    The sets are loaded (or built) once; `scores` evaluates the checkpoints on them (default:
    here, one after another). Rows come out checkpoint-major (all sets of the first
    checkpoint, then the next)."""
    t0 = time.perf_counter()
    loaded = [load_checkpoint(Path(c)) for c in checkpoints]  # fail fast, before any work
    identities = _unique_identities(loaded)
    sets = [(family, float(level)) for family, levels in [("clean", [0.0]), *families.items()]
            for level in levels]
    test = load_split("test", data_dir, log=log)
    psets = [p for family, levels in [("clean", [0.0]), *families.items()]
             for p in family_sets(family, levels, data_dir, cache_dir, log, test)]
    labels = test.labels.numpy()
    per_ckpt = (scores or _score_here)(loaded, psets, labels, device)
    flat = [(_row(ident, ckpt, pset, labels, nll, acc, pred), pred)
            for ident, ckpt, ckpt_scores in zip(identities, loaded, per_ckpt, strict=True)
            for pset, (nll, acc, pred) in zip(psets, ckpt_scores, strict=True)]
    for ident in identities:
        log(f"evaluated {ident['run']} on {len(sets)} sets")
    meta = {"checkpoints": [str(c.path) for c in loaded], "families": families,
            "checkpoint_mtimes": {str(c.path): os.path.getmtime(c.path) for c in loaded},
            "training": {i["run"]: training_record(c) for i, c in zip(identities, loaded, strict=True)},
            "seconds": time.perf_counter() - t0, **artifacts.provenance(device),
            "data_md5": {k: MD5[k] for k in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}}
    return SweepResult([r for r, _ in flat], labels,
                       np.stack([p for _, p in flat]) if flat else np.zeros((0, len(labels)), np.int8),
                       meta, psets[0].thickness, sets,
                       np.stack([p.images[:N_EXAMPLES] for p in psets]))


def training_record(ckpt: Checkpoint) -> dict[str, Any]:
    """Epochs, training settings (all but the seed and the augmentation) and summed epoch
    seconds of a run (seconds from its metrics.csv, when next to it)."""
    metrics = RunDir(ckpt.path.parent).read_metrics() if ckpt.path.name == "checkpoint.pt" else []
    settings = {k: v for k, v in ckpt.config.result_fields().items() if k not in ("seed", "aug")}
    return {"epochs": len(metrics) or ckpt.epoch, "settings": settings,
            "train_seconds": sum(m["epoch_seconds"] for m in metrics) if metrics else None}


def erased_warnings(frame: pd.DataFrame) -> list[str]:
    """One warning per level that nearly erases more than ERASED_WARNING of the digits."""
    out = []
    for _, s in frame.drop_duplicates(["family", "level"]).iterrows():
        if s["erased_fraction"] > ERASED_WARNING:
            out.append(f"{s['family']} {s['level']:+g} leaves {100 * s['erased_fraction']:.0f} % "
                       f"of digits with under 10 % of their ink (ink ratio {s['ink_ratio']:.2f}); "
                       "accuracy there measures erased digits")
    return out


# --------------------------------------------------------------------------- files

def save_sweep(result: SweepResult, out_dir: Path) -> SweepDir:
    """Write sweep.csv, predictions.npz and sweep.json (the latter last: it marks completion)."""
    folder = SweepDir(Path(out_dir))
    artifacts.claim_dir(folder.root, "sweep folder")
    with artifacts.folder_lock(folder.root, "sweep folder"):
        artifacts.write_text(folder.csv, result.frame().to_csv(index=False))
        buf = io.BytesIO()
        np.savez_compressed(
            buf, labels=result.labels.astype(np.int8), predictions=result.predictions,
            clean_thickness=np.asarray(result.clean_thickness, np.float32),
            example_family=np.array([f for f, _ in result.example_sets]),
            example_level=np.array([lv for _, lv in result.example_sets], np.float64),
            examples=result.examples if result.examples is not None else np.zeros((0, 0, 28, 28)))
        artifacts.write_bytes(folder.predictions, buf.getvalue())
        artifacts.write_text(folder.meta, json.dumps({**result.meta, "complete": True},
                                                     indent=2, default=str) + "\n")
    return folder


@dataclass(frozen=True)
class SavedSweep:
    """A sweep folder read back: rows, predictions aligned with them, provenance."""

    folder: SweepDir
    rows: pd.DataFrame
    meta: dict[str, Any]
    labels: np.ndarray
    predictions: np.ndarray       # (rows, N)
    clean_thickness: np.ndarray
    example_sets: list[tuple[str, float]]
    examples: np.ndarray          # (sets, K, 28, 28)


def load_sweep(path: Path) -> SavedSweep:
    """Read a complete sweep folder; one clear error for anything missing or malformed."""
    folder = SweepDir.of(path)
    if not folder.csv.is_file():
        raise RobustMnistError(f"{folder.root}: no sweep.csv; pass a folder written by "
                               "`robustmnist eval --sweep-width --out` or `robustmnist run`")
    try:
        meta = json.loads(folder.meta.read_text()) if folder.meta.is_file() else {}
    except (OSError, ValueError) as err:
        raise RobustMnistError(f"{folder.meta}: unreadable ({err}); rerun the evaluation") from None
    if not isinstance(meta, dict) or meta.get("complete") is not True:
        raise RobustMnistError(f"{folder.root}: the sweep is incomplete (no complete sweep.json); "
                               "rerun the evaluation")
    try:
        rows = pd.read_csv(folder.csv)
    except (OSError, ValueError) as err:
        raise RobustMnistError(f"{folder.csv}: unreadable ({str(err).splitlines()[0]}); "
                               "rerun the evaluation") from None
    missing = set(REQUIRED_COLUMNS) - set(rows.columns)
    if missing or rows.empty:
        raise RobustMnistError(f"{folder.csv}: " + (f"missing columns {sorted(missing)}" if missing
                               else "no rows") + "; rerun the evaluation")
    try:
        with np.load(folder.predictions, allow_pickle=False) as z:
            saved = {k: z[k] for k in ("labels", "predictions", "clean_thickness",
                                       "example_family", "example_level", "examples")}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise RobustMnistError(f"{folder.predictions}: missing or unreadable ({type(err).__name__}); "
                               "rerun the evaluation") from None
    preds, labels = saved["predictions"], saved["labels"].astype(np.int64)
    if preds.ndim != 2 or preds.shape != (len(rows), len(labels)):
        raise RobustMnistError(f"{folder.predictions}: {preds.shape} predictions do not match "
                               f"{len(rows)} rows of sweep.csv; rerun the evaluation")
    sets = [(str(f), float(lv)) for f, lv in zip(saved["example_family"], saved["example_level"],
                                                 strict=True)]
    return SavedSweep(folder, rows, meta, labels, preds, saved["clean_thickness"], sets,
                      saved["examples"])


@dataclass(frozen=True)
class MeasuredSet:
    thickness: np.ndarray   # (N,) px, NaN where no ink
    ink_ratio: np.ndarray   # (N,)
    labels: np.ndarray      # (N,)
    seconds: float


def measure_set(split: str, family: str, level: float, data_dir: Path | None = None,
                log: Log = _quiet) -> MeasuredSet:
    """Per-digit thickness and ink ratio of a split, or of a perturbed test set."""
    from robustmnist.measure import measure_thickness

    if family != "clean" and split != "test":
        raise RobustMnistError("perturbed sets are built from the test split; use --split test")
    check_level(family, level)  # clean has one level, 0, on either split
    loaded = load_split(split, data_dir, log=log)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    if split == "test":
        pset, labels = test_set(family, level, data_dir, log=log, test=loaded)
        return MeasuredSet(pset.thickness, pset.ink_ratio, labels, time.perf_counter() - t0)
    thickness = measure_thickness(loaded.images[:, 0].numpy())
    return MeasuredSet(thickness, np.ones(len(thickness)), loaded.labels.numpy(),
                       time.perf_counter() - t0)
