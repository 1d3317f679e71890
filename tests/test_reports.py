import io
import json

import numpy as np
import pandas as pd
import pytest

from robustmnist import RobustMnistError
from robustmnist.evaluation import prediction_key
from robustmnist.reports import mcnemar, mean_ci, write_report

N = 100
LEVELS = {"clean": [0.0], "delta": [-1.0, 1.0], "absolute": [1.0, 4.0]}
# variant -> seed -> number of correct test images (out of N), the same at every level
CORRECT = {"none": {0: 90, 1: 92, 2: 94}, "thickness": {0: 96, 1: 97, 2: 98}}


def _synthetic_results(folder):
    """A sweep folder with known numbers: 2 variants x 3 seeds x 5 sets."""
    labels = np.arange(N) % 10
    rows, keys, preds = [], [], []
    for variant, seeds in CORRECT.items():
        for seed, correct in seeds.items():
            run = f"{variant}-seed{seed}"
            pred = labels.copy()
            pred[correct:] = (labels[correct:] + 1) % 10  # the last N - correct are wrong
            for family, levels in LEVELS.items():
                for level in levels:
                    row = {"run": run, "model": "baseline", "variant": variant, "seed": seed,
                           "epochs": 1, "checkpoint": str(folder / run / "checkpoint.pt"),
                           "family": family, "level": level, "measured_thickness": 2.0 + level,
                           "ink_ratio": 1.0, "erased_fraction": 0.0, "n": N,
                           "accuracy": correct / N, "error": 1 - correct / N, "nll": 0.1}
                    for c in range(10):
                        row[f"acc_class_{c}"] = float(np.mean(pred[labels == c] == c))
                    rows.append(row)
                    keys.append(prediction_key(run, family, level))
                    preds.append(pred.astype(np.int8))
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "sweep.csv", index=False)
    buf = io.BytesIO()
    example_keys = [f"{f}|{lv:g}" for f, lvs in LEVELS.items() for lv in lvs]
    np.savez(buf, labels=labels.astype(np.int8), keys=np.array(keys), predictions=np.stack(preds),
             clean_thickness=np.linspace(1.0, 5.0, N).astype(np.float32),
             example_keys=np.array(example_keys),
             examples=np.zeros((len(example_keys), 8, 28, 28), np.uint8))
    (folder / "predictions.npz").write_bytes(buf.getvalue())
    (folder / "sweep.json").write_text(json.dumps({"complete": True, "seconds": 12.0,
                                                   "machine": {"device": "cpu"}}))
    return folder


def test_report_files_and_numbers(tmp_path):
    results = _synthetic_results(tmp_path / "sweep")
    out = write_report([results], tmp_path / "report", title="synthetic")
    names = {p.name for p in out.iterdir()}
    assert {"README.md", "results.csv", "accuracy.csv", "summary.csv", "mcnemar.csv", "levels.csv",
            "accuracy_delta.png", "accuracy_absolute.png", "clean_error_by_thickness.png",
            "examples.png", "class_accuracy.png"} <= names
    assert len(pd.read_csv(out / "results.csv")) == 2 * 3 * 5
    acc = pd.read_csv(out / "accuracy.csv")
    none_clean = acc[(acc["variant"] == "none") & (acc["family"] == "clean")].iloc[0]
    assert none_clean["mean"] == pytest.approx(0.92) and none_clean["n"] == 3
    # 95 % t-interval of (90, 92, 94) %: half-width t(0.975, 2) * 2 / sqrt(3) = 4.97 pp
    assert (none_clean["hi"] - none_clean["lo"]) / 2 == pytest.approx(0.0497, abs=1e-4)
    readme = (out / "README.md").read_text()
    assert "92.00 ± 4.97" in readme and "97.00 ± 2.48" in readme
    mc = pd.read_csv(out / "mcnemar.csv")
    row = mc[(mc["family"] == "delta") & (mc["level"] == 1.0)].iloc[0]
    assert row["only_variant_right"] == (96 - 90) + (97 - 92) + (98 - 94)
    assert row["only_baseline_right"] == 0
    assert row["delta_pp"] == pytest.approx(5.0)
    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    assert summary.loc["thickness", "CE"] == pytest.approx(np.mean([4 / 10, 3 / 8, 2 / 6]))
    assert "Findings" in readme and "`thickness`" in readme


def test_report_refuses_incomplete_results(tmp_path):
    results = _synthetic_results(tmp_path / "sweep")
    (results / "sweep.json").write_text(json.dumps({"complete": False}))
    with pytest.raises(RobustMnistError, match="incomplete"):
        write_report([results], tmp_path / "report")
    with pytest.raises(RobustMnistError, match=r"no sweep\.csv"):
        write_report([tmp_path], tmp_path / "report")


def test_mean_ci_and_mcnemar():
    assert mean_ci([0.5]) == (0.5, 0.5, 0.5, 1)
    m, _, hi, n = mean_ci([1.0, 3.0])
    # t(0.975, 1) * sd / sqrt(n) with sd = sqrt(2), n = 2
    assert (m, n) == (2.0, 2) and hi - m == pytest.approx(12.706, rel=1e-3)
    base = np.array([True] * 10 + [False] * 10)
    other = np.array([True] * 8 + [False] * 2 + [True] * 10)
    b, c, p = mcnemar(base, other)
    assert (b, c) == (2, 10) and p == pytest.approx(0.0386, abs=1e-3)
