"""Shared fixtures: tiny synthetic MNIST-like digits, made here, never downloaded; a tiny
trained run; synthetic sweep folders with known numbers."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from robustmnist import data
from robustmnist.config import TrainConfig
from robustmnist.data import MnistSplit, split_from_arrays
from robustmnist.layout import SweepDir

SHARED = Path(__file__).resolve().parents[2] / "shared"


def synth_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 white-on-black digits drawn with a Hershey font, labels 0..9."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    labels = np.arange(n) % 10
    for i, label in enumerate(labels):
        canvas = np.zeros((28, 28), np.uint8)
        scale = rng.uniform(0.75, 0.9)
        thickness = int(rng.integers(1, 3))
        org = (int(rng.integers(6, 10)), int(rng.integers(20, 24)))
        cv2.putText(canvas, str(label), org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness,
                    cv2.LINE_AA)
        images[i] = canvas
    return images, labels.astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": synth_digits(600, 0), "test": synth_digits(200, 1)}


@pytest.fixture(scope="session")
def tiny_splits(tiny_arrays) -> dict[str, MnistSplit]:
    return {k: split_from_arrays(*v, name=k) for k, v in tiny_arrays.items()}


def write_idx_files(root: Path, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, str]:
    """Write the splits as IDX files in `root`'s torchvision layout; their MD5 table."""
    md5s = {}
    for split, (images, labels) in arrays.items():
        image_name, label_name = data.FILES[split]
        for name, array in ((image_name, images), (label_name, labels)):
            data.write_idx(data.raw_dir(root) / name, array)
            md5s[name] = data.md5(data.encode_idx(array))
    return md5s


@pytest.fixture
def tiny_data_dir(tmp_path, tiny_arrays, monkeypatch) -> Path:
    """A data dir holding synthetic IDX files, with the MD5 table pointed at them."""
    root = tmp_path / "data"
    monkeypatch.setattr(data, "MD5", write_idx_files(root, tiny_arrays))
    monkeypatch.setenv(data.DATA_DIR_ENV, str(root))
    monkeypatch.setenv(data.SOURCES_ENV, "cache")
    return root


@pytest.fixture
def device() -> torch.device:
    return torch.device("cpu")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_splits) -> Path:
    """A run folder trained for 2 epochs on the tiny splits (shared: copy it to modify it)."""
    from robustmnist.training import train

    run_dir = tmp_path_factory.mktemp("shared") / "tiny-seed3"
    train(TrainConfig(epochs=2, batch_size=64, device="cpu", seed=3), run_dir,
          train_split=tiny_splits["train"], test_split=tiny_splits["test"])
    return run_dir


#: Synthetic sweep sets: family -> levels.
SWEEP_LEVELS = {"clean": [0.0], "delta": [-1.0, 1.0], "absolute": [1.0, 4.0]}
#: variant -> seed -> number of correct test images (out of 100), the same at every level.
SWEEP_CORRECT = {"none": {0: 90, 1: 92, 2: 94}, "thickness": {0: 96, 1: 97, 2: 98}}


def write_sweep(folder: Path, correct: dict[str, dict[int, int]] | None = None,
                n: int = 100, meta: dict | None = None) -> Path:
    """A complete sweep folder in the format `evaluation.save_sweep` writes, with known
    numbers: run ``<variant>-seed<seed>`` gets the first `correct` of `n` images right (at
    every level of SWEEP_LEVELS) and the rest wrong; predictions aligned with sweep.csv."""
    correct = SWEEP_CORRECT if correct is None else correct
    sweep = SweepDir(Path(folder))
    labels = np.arange(n) % 10
    rows, preds = [], []
    for variant, seeds in correct.items():
        for seed, right in seeds.items():
            run = f"{variant}-seed{seed}"
            pred = labels.copy()
            pred[right:] = (labels[right:] + 1) % 10  # the last n - right are wrong
            for family, levels in SWEEP_LEVELS.items():
                for level in levels:
                    row = {"run": run, "model": "baseline", "variant": variant, "seed": seed,
                           "epochs": 1, "checkpoint": str(sweep.root / run / "checkpoint.pt"),
                           "family": family, "level": level, "measured_thickness": 2.0 + level,
                           "ink_ratio": 1.0, "erased_fraction": 0.0, "n": n,
                           "accuracy": right / n, "error": 1 - right / n, "nll": 0.1}
                    for c in range(10):
                        row[f"acc_class_{c}"] = float(np.mean(pred[labels == c] == c))
                    rows.append(row)
                    preds.append(pred.astype(np.int8))
    sweep.root.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(sweep.csv, index=False)
    sets = [(f, lv) for f, lvs in SWEEP_LEVELS.items() for lv in lvs]
    buf = io.BytesIO()
    np.savez(buf, labels=labels.astype(np.int8), predictions=np.stack(preds),
             clean_thickness=np.linspace(1.0, 5.0, n).astype(np.float32),
             example_family=np.array([f for f, _ in sets]),
             example_level=np.array([lv for _, lv in sets], np.float64),
             examples=np.zeros((len(sets), 8, 28, 28), np.uint8))
    sweep.predictions.write_bytes(buf.getvalue())
    sweep.meta.write_text(json.dumps({"complete": True, "seconds": 12.0,
                                      "machine": {"device": "cpu"}, **(meta or {})}))
    return sweep.root


@pytest.fixture
def synthetic_sweep() -> Callable[..., Path]:
    """`write_sweep` (a factory: tests call it with their folder and numbers)."""
    return write_sweep


def pytest_collection_modifyitems(config, items):
    # Tests marked gpu skip cleanly where CUDA is absent.
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
