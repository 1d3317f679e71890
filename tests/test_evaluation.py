import json

import numpy as np
import pandas as pd
import pytest

from robustmnist import RobustMnistError
from robustmnist.augmentation import AugConfig
from robustmnist.evaluation import (
    corruption_errors,
    load_predictions,
    parse_levels,
    prediction_key,
    save_sweep,
    sweep,
)
from robustmnist.training import TrainConfig, train

FAMILIES = {"delta": [-1.0, 1.0], "absolute": [2.0], "ladder": [2.0]}


@pytest.fixture
def two_runs(tmp_path, tiny_data_dir):
    runs = []
    for policy in ("none", "thickness"):
        config = TrainConfig(epochs=1, batch_size=64, device="cpu",
                             aug=AugConfig.from_policy(policy))
        train(config, tmp_path / f"{policy}-seed0")
        runs.append(tmp_path / f"{policy}-seed0" / "checkpoint.pt")
    return runs


def test_sweep_rows_and_files(tmp_path, two_runs, device):
    result = sweep(two_runs, FAMILIES, device=device, cache_dir=tmp_path / "cache")
    frame = result.frame()
    assert len(frame) == 2 * (1 + 4)
    assert set(frame["variant"]) == {"none", "thickness"}
    row = frame[(frame["variant"] == "none") & (frame["family"] == "clean")].iloc[0]
    pred = result.predictions[prediction_key(row["run"], "clean", 0.0)]
    assert row["accuracy"] == pytest.approx(np.mean(pred == result.labels))
    assert row["error"] == pytest.approx(1 - row["accuracy"])
    per_class = [row[f"acc_class_{c}"] for c in range(10)]
    assert np.nanmean(per_class) == pytest.approx(row["accuracy"], abs=1e-9)  # balanced classes
    thick = frame[(frame["family"] == "delta") & (frame["level"] == 1.0)]["measured_thickness"].iloc[0]
    thin = frame[(frame["family"] == "delta") & (frame["level"] == -1.0)]["measured_thickness"].iloc[0]
    assert thin < row["measured_thickness"] < thick
    paths = save_sweep(result, tmp_path / "out")
    assert json.loads(paths["meta"].read_text())["complete"] is True
    saved = load_predictions(paths["predictions"])
    np.testing.assert_array_equal(saved.predictions[prediction_key(row["run"], "clean", 0.0)], pred)
    assert len(saved.clean_thickness) == len(result.labels)
    pd.testing.assert_frame_equal(pd.read_csv(paths["csv"]), frame, check_dtype=False)


def test_sweep_fails_before_work_on_a_bad_checkpoint(tmp_path, two_runs, device):
    bad = tmp_path / "bad.pt"
    bad.write_text("garbage")
    with pytest.raises(RobustMnistError, match="corrupt"):
        sweep([*two_runs, bad], FAMILIES, device=device, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_unwritable_output(tmp_path, two_runs, device):
    result = sweep(two_runs[:1], {}, device=device)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RobustMnistError, match="writable"):
        save_sweep(result, blocker / "sub")


def test_parse_levels():
    assert parse_levels(["delta"], None)["delta"][0] == -1.5
    assert parse_levels(["absolute"], [2.0]) == {"absolute": [2.0]}
    with pytest.raises(RobustMnistError, match="unknown family"):
        parse_levels(["blur"], None)


def test_corruption_error_hand_computed():
    rows = []
    for run, variant, seed, clean, errs in [("b0", "none", 0, 0.01, [0.11, 0.21]),
                                            ("t0", "thickness", 0, 0.02, [0.06, 0.07]),
                                            ("t9", "thickness", 9, 0.02, [0.06, 0.07])]:
        rows.append({"run": run, "variant": variant, "seed": seed, "family": "clean",
                     "level": 0.0, "error": clean})
        for level, e in zip([-1.0, 1.0], errs, strict=True):
            rows.append({"run": run, "variant": variant, "seed": seed, "family": "delta",
                         "level": level, "error": e})
    ce = corruption_errors(pd.DataFrame(rows)).set_index("run")
    assert ce.loc["b0", "ce"] == pytest.approx(100)
    assert ce.loc["t0", "ce"] == pytest.approx(100 * 0.13 / 0.32)
    assert ce.loc["t0", "relative_ce"] == pytest.approx(100 * (0.04 + 0.05) / (0.10 + 0.20))
    assert np.isnan(ce.loc["t9", "ce"])  # no baseline with seed 9
