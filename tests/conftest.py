"""Shared fixtures: tiny synthetic MNIST-like digits, made here, never downloaded."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from robustmnist import data
from robustmnist.data import MnistSplit, split_from_arrays

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


@pytest.fixture
def tiny_data_dir(tmp_path, tiny_arrays, monkeypatch) -> Path:
    """A data dir holding synthetic IDX files, with the MD5 table pointed at them."""
    root = tmp_path / "data"
    md5s = {}
    for split, (images, labels) in tiny_arrays.items():
        image_name, label_name = data.FILES[split]
        for name, array in ((image_name, images), (label_name, labels)):
            data.write_idx(data.raw_dir(root) / name, array)
            md5s[name] = data.md5(data.encode_idx(array))
    monkeypatch.setattr(data, "MD5", md5s)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(root))
    monkeypatch.setenv(data.SOURCES_ENV, "cache")
    return root


@pytest.fixture
def device() -> torch.device:
    return torch.device("cpu")


def pytest_collection_modifyitems(config, items):
    # Tests marked gpu skip cleanly where CUDA is absent.
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
