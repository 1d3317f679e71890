import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from robustmnist import RobustMnistError, evaluation
from robustmnist.checkpoint import build_network, load_checkpoint
from robustmnist.config import AugConfig, TrainConfig
from robustmnist.evaluation import (
    erased_warnings,
    load_sweep,
    measure_set,
    parse_levels,
    save_sweep,
    sweep,
)
from robustmnist.training import train

FAMILIES = {"delta": [-1.0, 1.0], "absolute": [2.0], "ladder": [2.0]}
SETS = [("clean", 0.0), ("delta", -1.0), ("delta", 1.0), ("absolute", 2.0), ("ladder", 2.0)]


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory, tiny_splits):
    """Two tiny runs, trained once for the module (tests copy them to change them)."""
    folder = tmp_path_factory.mktemp("runs")
    for policy in ("none", "thickness"):
        config = TrainConfig(epochs=1, batch_size=64, device="cpu",
                             aug=AugConfig.from_policy(policy))
        train(config, folder / f"{policy}-seed0", train_split=tiny_splits["train"],
              test_split=tiny_splits["test"])
    return [folder / f"{policy}-seed0" / "checkpoint.pt" for policy in ("none", "thickness")]


@pytest.fixture
def two_runs(trained_runs, tiny_data_dir):
    """The two runs' checkpoints, with the tiny data set as MNIST (for the test sets)."""
    return trained_runs


def _by_hand(checkpoint, images_u8, labels):
    """(nll, accuracy, predictions) of a checkpoint, computed without Classifier."""
    ckpt = load_checkpoint(checkpoint)
    net = build_network(ckpt)
    x = (torch.from_numpy(images_u8).float().unsqueeze(1) / 255 - ckpt.config.mean) / ckpt.config.std
    with torch.no_grad():
        logp = net(x)
    y = torch.from_numpy(labels).long()
    pred = logp.argmax(1)
    return F.nll_loss(logp, y).item(), (pred == y).float().mean().item(), pred.numpy()


def test_sweep_rows_match_each_checkpoint_on_each_set(tmp_path, two_runs, device):
    result = sweep(two_runs, FAMILIES, device=device, cache_dir=tmp_path / "cache")
    frame = result.frame()
    # checkpoint-major rows; predictions aligned with them
    assert list(zip(frame["run"], frame["family"], frame["level"], strict=True)) == [
        (run, f, lv) for run in ("none-seed0", "thickness-seed0") for f, lv in SETS]
    assert result.predictions.shape == (len(frame), 200) and result.predictions.dtype == np.int8
    np.testing.assert_allclose((result.predictions == result.labels).mean(1), frame["accuracy"])
    for i, row in frame.iterrows():
        pset, labels = evaluation.test_set(row["family"], row["level"], cache_dir=tmp_path / "cache")
        nll, acc, pred = _by_hand(row["checkpoint"], pset.images, labels)
        np.testing.assert_array_equal(result.predictions[i], pred)
        assert row["accuracy"] == pytest.approx(acc) and row["nll"] == pytest.approx(nll, rel=1e-4)
        assert row["measured_thickness"] == pytest.approx(pset.mean_thickness)
    row = frame.iloc[0]
    per_class = [row[f"acc_class_{c}"] for c in range(10)]
    assert np.nanmean(per_class) == pytest.approx(row["accuracy"], abs=1e-9)  # balanced classes
    thickness = frame.drop_duplicates(["family", "level"]).set_index(["family", "level"])[
        "measured_thickness"]
    assert thickness[("delta", -1.0)] < thickness[("clean", 0.0)] < thickness[("delta", 1.0)]
    assert result.example_sets == SETS and result.examples.shape == (5, 8, 28, 28)
    assert len(result.clean_thickness) == 200
    assert set(result.meta["training"]) == {"none-seed0", "thickness-seed0"}
    assert result.meta["training"]["none-seed0"]["epochs"] == 1
    settings = result.meta["training"]["none-seed0"]["settings"]  # what the report compares
    config = load_checkpoint(row["checkpoint"]).config  # row: none-seed0's first set
    assert settings == {k: v for k, v in config.result_fields().items() if k not in ("seed", "aug")}
    assert (settings["model"], settings["lr_schedule"]) == ("baseline", "constant")


def test_clean_set_is_the_test_split(tmp_path, tiny_data_dir, tiny_arrays):
    pset, labels = evaluation.test_set("clean", 0.0, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(pset.images, tiny_arrays["test"][0])
    np.testing.assert_array_equal(labels, tiny_arrays["test"][1])
    with pytest.raises(RobustMnistError):
        evaluation.test_set("delta", 9.0, cache_dir=tmp_path / "cache")


def test_saved_sweep_reads_back_identically(tmp_path, two_runs, device):
    result = sweep(two_runs, {"delta": [1.0]}, device=device, cache_dir=tmp_path / "cache")
    folder = save_sweep(result, tmp_path / "out")
    assert json.loads(folder.meta.read_text())["complete"] is True
    for path in (folder.root, folder.csv):  # the folder or its sweep.csv
        saved = load_sweep(path)
        pd.testing.assert_frame_equal(saved.rows, result.frame(), check_dtype=False)
        np.testing.assert_array_equal(saved.predictions, result.predictions)
        np.testing.assert_array_equal(saved.labels, result.labels)
        np.testing.assert_array_equal(saved.examples, result.examples)
        np.testing.assert_allclose(saved.clean_thickness, result.clean_thickness, rtol=1e-6)
        assert saved.example_sets == [("clean", 0.0), ("delta", 1.0)]


def test_same_run_name_in_two_folders_is_qualified(tmp_path, two_runs, device):
    other = tmp_path / "elsewhere" / "none-seed0"
    other.parent.mkdir()
    shutil.copytree(two_runs[0].parent, other)
    # The copy keeps its recorded run name; sweep tells the two apart by folder.
    frame = sweep([two_runs[0], other], {}, device=device).frame()
    assert frame["run"].nunique() == 2
    with pytest.raises(RobustMnistError, match="listed twice"):
        sweep([two_runs[0], two_runs[0]], {}, device=device)


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
    expected = re.escape(f"{blocker} is a file where a folder is needed; move it away")
    with pytest.raises(RobustMnistError, match=expected):
        save_sweep(result, blocker / "sub")


def test_parse_levels():
    assert parse_levels(["delta"], None)["delta"][0] == -1.5
    assert parse_levels(["absolute"], [3.0, 2.0]) == {"absolute": [3.0, 2.0]}
    with pytest.raises(RobustMnistError, match="--levels: 2 is given twice"):
        parse_levels(["absolute"], [2.0, 3.0, 2.0])  # refused, as an experiment file does
    with pytest.raises(RobustMnistError, match="--family delta is given twice"):
        parse_levels(["delta", "delta"], None)
    with pytest.raises(RobustMnistError, match="unknown family"):
        parse_levels(["blur"], None)
    with pytest.raises(RobustMnistError, match="unknown family"):
        parse_levels(["clean"], None)


def test_erased_warnings_only_above_the_threshold():
    frame = pd.DataFrame([
        {"family": "ladder", "level": -2.0, "erased_fraction": 0.34, "ink_ratio": 0.2},
        {"family": "ladder", "level": -2.0, "erased_fraction": 0.34, "ink_ratio": 0.2},  # 2nd run
        {"family": "delta", "level": -1.0, "erased_fraction": 0.05, "ink_ratio": 0.6},
    ])
    assert erased_warnings(frame) == [
        "ladder -2 leaves 34 % of digits with under 10 % of their ink (ink ratio 0.20); "
        "accuracy there measures erased digits"]


def test_measure_set(tiny_data_dir, tiny_arrays):
    from robustmnist.measure import measure_thickness

    measured = measure_set("train", "clean", 0.0)
    np.testing.assert_allclose(measured.thickness, measure_thickness(tiny_arrays["train"][0]))
    np.testing.assert_array_equal(measured.labels, tiny_arrays["train"][1])
    with pytest.raises(RobustMnistError, match="--split test"):
        measure_set("train", "delta", 1.0)
