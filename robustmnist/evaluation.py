"""Evaluation: checkpoints x (clean + thickness-perturbed test sets) -> tidy rows.

Rows are plain dicts (one per checkpoint x family x level), the format every later step reads:
``run, model, variant, seed, epochs, family, level, measured_thickness, ink_ratio,
erased_fraction, n, accuracy, error, nll, acc_class_0 .. acc_class_9``. Per-image predictions
are kept too (for paired McNemar tests in reports).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from robustmnist import RobustMnistError, artifacts
from robustmnist.data import MD5, load_split
from robustmnist.perturb import DEFAULT_LEVELS, FAMILIES, check_level, load_or_build
from robustmnist.training import evaluate_split, load_checkpoint, model_from_checkpoint

CLASS_COLUMNS = [f"acc_class_{c}" for c in range(10)]
N_EXAMPLES = 8  # example digits kept per set, for the report's grid


@dataclass(frozen=True)
class EvaluatedSet:
    family: str
    level: float
    images: torch.Tensor      # uint8 (N, 1, 28, 28) on the evaluation device
    measured_thickness: float
    ink_ratio: float
    erased_fraction: float
    digit_thickness: np.ndarray   # (N,) measured per digit, px


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    labels: np.ndarray
    predictions: dict[str, np.ndarray] = field(default_factory=dict)  # key(run, fam, lvl) -> (N,)
    meta: dict[str, Any] = field(default_factory=dict)
    clean_thickness: np.ndarray | None = None  # (N,) each clean test digit's own thickness
    examples: dict[str, np.ndarray] = field(default_factory=dict)  # "fam|lvl" -> (K, 28, 28)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def prediction_key(run: str, family: str, level: float) -> str:
    return f"{run}|{family}|{level:g}"


def parse_levels(families: Sequence[str], levels: Sequence[float] | None) -> dict[str, list[float]]:
    """family -> levels to evaluate (defaults per family); validated."""
    chosen: dict[str, list[float]] = {}
    for family in families:
        if family not in FAMILIES or family == "clean":
            raise RobustMnistError(f"unknown family {family!r}; choose from "
                                   f"{', '.join(f for f in FAMILIES if f != 'clean')}")
        family_levels = list(levels) if levels else list(DEFAULT_LEVELS[family])
        for level in family_levels:
            check_level(family, level)
        chosen[family] = family_levels
    return chosen


def checkpoint_identity(ckpt: dict[str, Any]) -> dict[str, Any]:
    config = ckpt["config"]
    meta = ckpt.get("meta", {})
    run = meta.get("run_name") or Path(ckpt["path"]).parent.name
    return {"run": run, "model": ckpt["model"],
            "variant": meta.get("variant") or config["aug"]["policy"],
            "seed": int(config["seed"]), "epochs": int(ckpt["epoch"])}


def build_sets(families: dict[str, list[float]], data_dir: Path | None, cache_dir: Path | None,
               device: torch.device, log: Callable[[str], None] = lambda _m: None,
               ) -> tuple[list[EvaluatedSet], torch.Tensor]:
    """The clean test set plus each (family, level) set, on `device`; labels too."""
    test = load_split("test", data_dir, log=log)
    originals = test.images[:, 0].numpy()
    source_md5 = MD5["t10k-images-idx3-ubyte"]
    sets = []
    for family, levels in [("clean", [0.0]), *families.items()]:
        for level in levels:
            t0 = time.perf_counter()
            pset, built = load_or_build(originals, family, level, source_md5, cache_dir)
            if built:
                log(f"built {family} {level:g} in {time.perf_counter() - t0:.1f}s "
                    f"(measured {pset.mean_thickness:.2f} px, ink {pset.mean_ink_ratio:.2f})")
            sets.append(EvaluatedSet(
                family, float(level), torch.from_numpy(pset.images).unsqueeze(1).to(device),
                pset.mean_thickness, pset.mean_ink_ratio, pset.erased_fraction, pset.thickness))
    return sets, test.labels.to(device)


def sweep(checkpoints: Sequence[Path], families: dict[str, list[float]], *,
          device: torch.device, data_dir: Path | None = None, cache_dir: Path | None = None,
          log: Callable[[str], None] = lambda _m: None) -> SweepResult:
    """Evaluate every checkpoint on the clean set and every (family, level) set."""
    t0 = time.perf_counter()
    loaded = [load_checkpoint(Path(c)) for c in checkpoints]  # fail fast, before any work
    identities = [checkpoint_identity(c) for c in loaded]
    names = [i["run"] for i in identities]
    if len(set(names)) != len(names):
        # Two run folders of the same name: qualify with the parent folder.
        for ident, ckpt in zip(identities, loaded, strict=True):
            ident["run"] = str(Path(ckpt["path"]).parent)
    sets, labels = build_sets(families, data_dir, cache_dir, device, log)
    labels_np = labels.cpu().numpy()
    rows: list[dict[str, Any]] = []
    predictions: dict[str, np.ndarray] = {}
    for ckpt, ident in zip(loaded, identities, strict=True):
        model = model_from_checkpoint(ckpt, device)
        config = ckpt["config"]
        for s in sets:
            nll, acc, pred = evaluate_split(model, s.images, labels, config["mean"], config["std"])
            pred_np = pred.cpu().numpy().astype(np.int8)
            predictions[prediction_key(ident["run"], s.family, s.level)] = pred_np
            row = {**ident, "checkpoint": ckpt["path"], "family": s.family, "level": s.level,
                   "measured_thickness": s.measured_thickness, "ink_ratio": s.ink_ratio,
                   "erased_fraction": s.erased_fraction, "n": len(labels_np),
                   "accuracy": acc, "error": 1 - acc, "nll": nll}
            for c in range(10):
                mask = labels_np == c
                row[CLASS_COLUMNS[c]] = float((pred_np[mask] == c).mean()) if mask.any() else np.nan
            rows.append(row)
        log(f"evaluated {ident['run']} on {len(sets)} sets")
    meta = {"checkpoints": [str(c["path"]) for c in loaded], "families": families,
            "checkpoint_mtimes": {str(c["path"]): os.path.getmtime(c["path"]) for c in loaded},
            "seconds": time.perf_counter() - t0, **artifacts.provenance(device),
            "data_md5": {k: MD5[k] for k in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}}
    examples = {f"{s.family}|{s.level:g}": s.images[:N_EXAMPLES, 0].cpu().numpy() for s in sets}
    return SweepResult(rows, labels_np, predictions, meta, sets[0].digit_thickness, examples)


def corruption_errors(frame: pd.DataFrame, family: str = "delta") -> pd.DataFrame:
    """CE and relative CE per run vs the unaugmented baseline of the same seed (= 100).

    CE = sum over levels of error / the baseline's sum; relative CE uses error - clean error.
    Runs whose seed has no baseline get NaN.
    """
    out = []
    fam = frame[frame["family"] == family]
    clean = frame[frame["family"] == "clean"].set_index("run")["error"]
    for run, group in fam.groupby("run", sort=False):
        ident = group.iloc[0]
        base = fam[(fam["variant"] == "none") & (fam["seed"] == ident["seed"])]
        ce = rce = np.nan
        if not base.empty:
            base_run = base["run"].iloc[0]
            merged = group.merge(base[["level", "error"]], on="level", suffixes=("", "_base"))
            if len(merged) == len(group) and merged["error_base"].sum() > 0:
                ce = 100 * merged["error"].sum() / merged["error_base"].sum()
                rel = (merged["error"] - clean[run]).sum()
                rel_base = (merged["error_base"] - clean[base_run]).sum()
                rce = 100 * rel / rel_base if rel_base > 0 else np.nan
        out.append({"run": run, "variant": ident["variant"], "seed": ident["seed"],
                    "family": family, "ce": ce, "relative_ce": rce})
    return pd.DataFrame(out)


def save_sweep(result: SweepResult, out_dir: Path) -> dict[str, Path]:
    """Write sweep.csv, predictions.npz and sweep.json (the latter last: it marks completion)."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RobustMnistError(f"cannot create {out_dir} ({err.strerror}); choose a writable --out") from err
    paths = {"csv": out_dir / "sweep.csv", "predictions": out_dir / "predictions.npz",
             "meta": out_dir / "sweep.json"}
    try:
        artifacts.write_text(paths["csv"], result.frame().to_csv(index=False))
        buf = io.BytesIO()
        np.savez_compressed(buf, labels=result.labels.astype(np.int8),
                            keys=np.array(list(result.predictions)),
                            predictions=np.stack(list(result.predictions.values())),
                            clean_thickness=np.asarray(result.clean_thickness, np.float32),
                            example_keys=np.array(list(result.examples)),
                            examples=np.stack(list(result.examples.values())))
        artifacts.write_bytes(paths["predictions"], buf.getvalue())
        artifacts.write_text(paths["meta"], json.dumps({**result.meta, "complete": True},
                                                       indent=2, default=str) + "\n")
    except OSError as err:
        raise RobustMnistError(f"cannot write to {out_dir} ({err.strerror}); "
                               "choose a writable --out") from err
    return paths


@dataclass(frozen=True)
class SavedPredictions:
    labels: np.ndarray
    predictions: dict[str, np.ndarray]
    clean_thickness: np.ndarray
    examples: dict[str, np.ndarray]


def load_predictions(path: Path) -> SavedPredictions:
    with np.load(path, allow_pickle=False) as z:
        return SavedPredictions(
            z["labels"].astype(np.int64),
            dict(zip([str(k) for k in z["keys"]], z["predictions"], strict=True)),
            z["clean_thickness"],
            dict(zip([str(k) for k in z["example_keys"]], z["examples"], strict=True)))
