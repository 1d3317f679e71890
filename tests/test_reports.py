import json

import numpy as np
import pandas as pd
import pytest

from robustmnist import RobustMnistError
from robustmnist.analysis import accuracy_table, load_results
from robustmnist.reports import fmt_ci, wide_accuracy, write_report


def test_report_files_and_numbers(tmp_path, synthetic_sweep):
    results = synthetic_sweep(tmp_path / "sweep")  # none 90/92/94 %, thickness 96/97/98 %
    out = write_report([results], tmp_path / "report", title="synthetic", question="Why?")
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
    assert readme.startswith("# synthetic: stroke-thickness robustness\n\n**Question.** Why?")
    assert "| none | 3 | 92.00 ± 4.97 | 92.00 ± 4.97 | 92.00 ± 4.97 |" in readme  # clean, -1, +1
    assert "| thickness | 3 | 97.00 ± 2.48 |" in readme
    mc = pd.read_csv(out / "mcnemar.csv")
    row = mc[(mc["family"] == "delta") & (mc["level"] == 1.0)].iloc[0]
    assert row["only_variant_right"] == (96 - 90) + (97 - 92) + (98 - 94)
    assert row["only_baseline_right"] == 0 and row["delta_pp"] == pytest.approx(5.0)
    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    assert summary.loc["thickness", "CE"] == pytest.approx(np.mean([4 / 10, 3 / 8, 2 / 6]))
    assert "- The baseline reaches 92.00 % clean test accuracy (n = 3 seeds)." in readme


def test_training_time_comes_from_the_sweep_record(tmp_path, synthetic_sweep):
    runs = [f"{v}-seed{s}" for v in ("none", "thickness") for s in range(3)]
    recorded = synthetic_sweep(tmp_path / "a", meta={"training": {
        r: {"epochs": 4, "train_seconds": 60.0} for r in runs}})
    readme = (write_report([recorded], tmp_path / "ra") / "README.md").read_text()
    assert "epochs per run: 4;" in readme
    assert "Training time (sum of epoch times over all runs): 6.0 min;" in readme
    unrecorded = synthetic_sweep(tmp_path / "b")
    readme = (write_report([unrecorded], tmp_path / "rb") / "README.md").read_text()
    assert "Training time (sum of epoch times over all runs): not recorded in these sweeps;" in readme


def test_setup_names_the_training_settings_only_where_variants_differ(tmp_path, synthetic_sweep):
    runs = [f"{v}-seed{s}" for v in ("none", "thickness") for s in range(3)]

    def record(run, **settings):
        return {"epochs": 4, "train_seconds": 60.0,
                "settings": {"model": "baseline", "lr": 0.001, "lr_schedule": "constant", **settings}}

    mixed = synthetic_sweep(tmp_path / "a", meta={"training": {r: record(
        r, **({"lr_schedule": "cosine"} if r.startswith("thickness") else {})) for r in runs}})
    readme = (write_report([mixed], tmp_path / "ra") / "README.md").read_text()
    assert ("- Training settings where runs differ: `thickness` lr_schedule cosine; every "
            "other variant: lr_schedule constant.") in readme
    # a variant whose seeds were trained differently says so
    uneven = synthetic_sweep(tmp_path / "b", meta={"training": {r: record(
        r, **({"model": "wide"} if r == "thickness-seed2" else {})) for r in runs}})
    readme = (write_report([uneven], tmp_path / "rb") / "README.md").read_text()
    assert ("differ: `thickness` model baseline/wide (its runs differ); every other variant: "
            "model baseline.") in readme
    # one variant alone, its seeds trained two ways: named, no "every other variant"
    alone = synthetic_sweep(tmp_path / "d", meta={"training": {r: record(
        r, **({"lr_schedule": "cosine"} if r.endswith("seed2") else {})) for r in runs}})
    readme = (write_report([alone], tmp_path / "rd") / "README.md").read_text()
    assert ("- Training settings where runs differ: `none` lr_schedule constant/cosine (its runs "
            "differ); `thickness` lr_schedule constant/cosine (its runs differ).") in readme
    same = synthetic_sweep(tmp_path / "c", meta={"training": {r: record(r) for r in runs}})
    readme = (write_report([same], tmp_path / "rc") / "README.md").read_text()
    assert "Training settings where" not in readme and "seeds per variant: none 3, thickness 3." in readme


def test_report_is_the_same_from_any_working_directory(tmp_path, synthetic_sweep, monkeypatch):
    results = synthetic_sweep(tmp_path / "sweep")
    first = (write_report([results], tmp_path / "r1") / "README.md").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert (write_report([results], tmp_path / "r2") / "README.md").read_text() == first


def test_report_refuses_incomplete_results(tmp_path, synthetic_sweep):
    results = synthetic_sweep(tmp_path / "sweep")
    (results / "sweep.json").write_text(json.dumps({"complete": False}))
    with pytest.raises(RobustMnistError, match="incomplete"):
        write_report([results], tmp_path / "report")
    with pytest.raises(RobustMnistError, match=r"no sweep\.csv"):
        write_report([tmp_path], tmp_path / "report")


def test_report_refuses_predictions_out_of_step_with_the_rows(tmp_path, synthetic_sweep):
    results = synthetic_sweep(tmp_path / "sweep")
    rows = pd.read_csv(results / "sweep.csv")
    rows.iloc[:-1].to_csv(results / "sweep.csv", index=False)  # one row fewer than predictions
    with pytest.raises(RobustMnistError, match=r"do not match 29 rows of sweep\.csv"):
        write_report([results], tmp_path / "report")


@pytest.mark.parametrize(("args", "text"), [((0.92, 0.8703, 0.9697, 3), "92.00 ± 4.97"),
                                            ((0.5, 0.5, 0.5, 1), "50.00"),
                                            ((np.nan, np.nan, np.nan, 0), "n/a")])
def test_fmt_ci(args, text):
    assert fmt_ci(*args) == text


def test_wide_accuracy_has_one_row_per_variant_and_signed_levels(tmp_path, synthetic_sweep):
    results = load_results([synthetic_sweep(tmp_path / "s")])
    wide = wide_accuracy(accuracy_table(results.rows), "delta", ["none", "thickness", "thick"])
    assert list(wide.columns) == ["n", "clean", "-1", "+1"]
    assert wide.loc["thickness", "+1"] == "97.00 ± 2.48" and wide.loc["none", "n"] == "3"
    assert wide.loc["thick", "n"] == "0"  # a variant without results stays visible
    absolute = wide_accuracy(accuracy_table(results.rows), "absolute", ["none"])
    assert list(absolute.columns) == ["n", "clean", "1", "4"]


def test_a_second_report_into_the_folder_leaves_nothing_of_the_first(tmp_path, synthetic_sweep):
    """Files of an earlier report the new one does not write (another family) are removed;
    a user's file in the (robustmnist-owned) folder is kept."""
    out = tmp_path / "rep"
    write_report([synthetic_sweep(tmp_path / "a")], out)
    assert (out / "accuracy_absolute.csv").is_file()
    (out / "accuracy_absolute.png").touch()
    (out / "my notes.txt").write_text("mine")
    (out / "my-analysis.csv").write_text("a,b\n")
    only_delta = {"none": {0: 90}, "thickness": {0: 95}}
    second = synthetic_sweep(tmp_path / "b", only_delta)
    frame = pd.read_csv(second / "sweep.csv")
    keep = frame["family"].isin(["clean", "delta"]).to_numpy()
    frame[keep].to_csv(second / "sweep.csv", index=False)
    data = dict(np.load(second / "predictions.npz"))
    data["predictions"] = data["predictions"][keep]
    np.savez(second / "predictions.npz", **data)
    write_report([second], out)
    assert (out / "accuracy_delta.csv").is_file() and (out / "README.md").is_file()
    assert not (out / "accuracy_absolute.csv").exists() and not (out / "accuracy_absolute.png").exists()
    assert (out / "my notes.txt").read_text() == "mine" and (out / "my-analysis.csv").is_file()


def test_compared_pairs_get_a_table_at_every_level_and_a_finding(tmp_path, synthetic_sweep):
    # a beats b by 10 of 100 digits in every seed (McNemar p = 0.002) with disjoint intervals;
    # b and c differ by one digit per seed: within the noise.
    sweep = synthetic_sweep(tmp_path / "sweep", {"none": {0: 50, 1: 52, 2: 54},
                                                 "a": {0: 80, 1: 81, 2: 82},
                                                 "b": {0: 70, 1: 71, 2: 72},
                                                 "c": {0: 71, 1: 72, 2: 73}})
    out = write_report([sweep], tmp_path / "report", compare=[("a", "b"), ("b", "c")])
    first = pd.read_csv(out / "compare_1.csv")
    assert len(first) == 5 and first["clear"].all()  # clean + the four synthetic levels
    assert first["diff_pp"].tolist() == pytest.approx([10.0] * 5)
    assert first["a"].tolist() == pytest.approx([81.0] * 5)
    second = pd.read_csv(out / "compare_2.csv")
    assert not second["clear"].any() and second["diff_pp"].tolist() == pytest.approx([-1.0] * 5)
    readme = (out / "README.md").read_text()
    assert "## `a` vs `b`" in readme
    assert "- `a` vs `b`: clearly ahead at clean (+10.00 pp), delta -1 (+10.00 pp), " in readme
    assert "- `b` vs `c`: clearly ahead at no level; within the noise at 5 of 5 levels." in readme


def test_compare_names_a_variant_of_the_results(tmp_path, synthetic_sweep):
    with pytest.raises(RobustMnistError, match="compare 'pen,none': no variant 'pen'"):
        write_report([synthetic_sweep(tmp_path / "s")], tmp_path / "r", compare=[("pen", "none")])


def test_recorded_pairs_a_sweep_lacks_are_skipped_and_old_compare_files_go(tmp_path, synthetic_sweep):
    sweep = synthetic_sweep(tmp_path / "sweep")
    out = write_report([sweep], tmp_path / "r", compare=[("thickness", "none")])
    (out / "compare_7.csv").write_text("not ours?\n")  # a name of the report's own pattern
    keep = out / "compare_notes.csv"
    keep.write_text("the user's\n")
    write_report([sweep], out, recorded_compare=[("thickness", "pen"), ("none", "thickness")])
    assert not (out / "compare_7.csv").exists() and keep.read_text() == "the user's\n"
    readme = (out / "README.md").read_text()
    assert "compared pair `thickness` vs `pen` is skipped" in readme
    assert "## `none` vs `thickness`" in readme and "## `thickness` vs `none`" not in readme
    assert pd.read_csv(out / "compare_1.csv").columns[2] == "none"
