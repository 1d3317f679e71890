import numpy as np
import pandas as pd
import pytest

from robustmnist import RobustMnistError
from robustmnist.analysis import (
    accuracy_table,
    best_per_level,
    binned_clean,
    corruption_errors,
    duel,
    duel_findings,
    findings,
    load_results,
    mcnemar,
    mcnemar_table,
    mean_ci,
    summary_table,
)


def test_mean_ci_hand_computed():
    assert mean_ci([0.5]) == (0.5, 0.5, 0.5, 1)
    m, lo, hi, n = mean_ci([1.0, 3.0])
    # t(0.975, 1) * sd / sqrt(n) with sd = sqrt(2), n = 2: 12.706 * sqrt(2) / sqrt(2)
    assert (m, n) == (2.0, 2) and hi - m == pytest.approx(12.706, rel=1e-3)
    assert m - lo == pytest.approx(hi - m)
    # t(0.975, 2) = 4.303; sd of (90, 92, 94) % = 2 pp
    m, lo, hi, n = mean_ci([0.90, 0.92, 0.94])
    assert m == pytest.approx(0.92) and (hi - lo) / 2 == pytest.approx(4.303 * 0.02 / np.sqrt(3), rel=1e-3)


def test_mean_ci_ignores_missing_values():
    assert mean_ci([0.5, np.nan]) == (0.5, 0.5, 0.5, 1)
    m, lo, hi, n = mean_ci([])
    assert n == 0 and np.isnan(m) and np.isnan(lo) and np.isnan(hi)


def test_mcnemar_hand_computed():
    base = np.array([True] * 10 + [False] * 10)
    other = np.array([True] * 8 + [False] * 2 + [True] * 10)
    b, c, p = mcnemar(base, other)
    # b = 2 only-baseline, c = 10 only-other: p = 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * 79 / 4096
    assert (b, c) == (2, 10) and p == pytest.approx(2 * 79 / 4096)
    assert mcnemar(base, base) == (0, 0, 1.0)  # no disagreement: no evidence


def _ce_rows():
    rows = []
    for run, variant, seed, clean, errs in [("b0", "none", 0, 0.01, [0.11, 0.21]),
                                            ("t0", "thickness", 0, 0.02, [0.06, 0.07]),
                                            ("t9", "thickness", 9, 0.02, [0.06, 0.07])]:
        rows.append({"run": run, "variant": variant, "seed": seed, "family": "clean",
                     "level": 0.0, "error": clean})
        for level, e in zip([-1.0, 1.0], errs, strict=True):
            rows.append({"run": run, "variant": variant, "seed": seed, "family": "delta",
                         "level": level, "error": e})
    return pd.DataFrame(rows)


def test_corruption_error_hand_computed():
    ce = corruption_errors(_ce_rows()).set_index("run")
    assert ce.loc["b0", "ce"] == pytest.approx(100)
    assert ce.loc["t0", "ce"] == pytest.approx(100 * (0.06 + 0.07) / (0.11 + 0.21))
    assert ce.loc["t0", "relative_ce"] == pytest.approx(100 * (0.04 + 0.05) / (0.10 + 0.20))
    assert np.isnan(ce.loc["t9", "ce"])  # no baseline with seed 9


def test_load_results_keeps_predictions_aligned_across_sweeps(tmp_path, synthetic_sweep):
    first = synthetic_sweep(tmp_path / "a", {"none": {0: 90}})
    second = synthetic_sweep(tmp_path / "b", {"thickness": {0: 96, 1: 50}})
    results = load_results([first, second])
    assert len(results.rows) == 3 * 5 and results.predictions.shape == (15, 100)
    assert results.variants == ["none", "thickness"]
    for run, right in [("none-seed0", 90), ("thickness-seed0", 96), ("thickness-seed1", 50)]:
        correct = results.correct(run, "delta", 1.0)
        assert correct is not None and correct.sum() == right, run
    assert results.correct("none-seed0", "delta", 7.0) is None


def test_load_results_refuses_the_same_run_in_two_sweeps(tmp_path, synthetic_sweep):
    first = synthetic_sweep(tmp_path / "a", {"none": {0: 90}})
    second = synthetic_sweep(tmp_path / "b", {"none": {0: 91}, "thick": {0: 95}})
    with pytest.raises(RobustMnistError, match=r"run 'none-seed0' \(clean 0\) is in both .*a and .*b"):
        load_results([first, second])


def test_load_results_refuses_other_test_labels(tmp_path, synthetic_sweep):
    first = synthetic_sweep(tmp_path / "a", {"none": {0: 90}})
    second = synthetic_sweep(tmp_path / "b", {"thick": {0: 95}}, n=50)
    with pytest.raises(RobustMnistError, match="other test labels"):
        load_results([first, second])
    with pytest.raises(RobustMnistError, match="no sweep folders"):
        load_results([])


def test_tables_from_known_numbers(tmp_path, synthetic_sweep):
    results = load_results([synthetic_sweep(tmp_path / "s")])  # none 90/92/94, thickness 96/97/98
    acc = accuracy_table(results.rows).set_index(["variant", "family", "level"])
    assert acc.loc[("thickness", "delta", 1.0), "mean"] == pytest.approx(0.97)
    assert acc.loc[("thickness", "delta", 1.0), "n"] == 3
    mc = mcnemar_table(results).set_index(["variant", "family", "level"])
    row = mc.loc[("thickness", "absolute", 4.0)]
    assert row["only_variant_right"] == 6 + 5 + 4 and row["only_baseline_right"] == 0
    assert row["delta_pp"] == pytest.approx(5.0) and row["seeds"] == 3
    summary = summary_table(results.rows, results.variants).set_index("variant")
    assert summary.loc["none", "clean"][0] == pytest.approx(0.92)
    assert summary.loc["thickness", "CE"][0] == pytest.approx(np.mean([4 / 10, 3 / 8, 2 / 6]))


def test_binned_clean_splits_by_each_digits_thickness(tmp_path, synthetic_sweep):
    # clean_thickness rises 1 -> 5 px over the 100 images, and the wrong ones are the last
    results = load_results([synthetic_sweep(tmp_path / "s", {"none": {0: 50}})])
    binned = binned_clean(results).set_index("bin")
    assert binned["count"].sum() == 100
    assert binned.loc["<1.5", "mean"] == 1.0 and binned.loc[">=4", "mean"] == 0.0


def test_findings_apply_the_noise_rule(tmp_path, synthetic_sweep):
    results = load_results([synthetic_sweep(tmp_path / "s")])
    rows, variants = results.rows, results.variants
    lines = findings(rows, accuracy_table(rows), mcnemar_table(results), variants)
    assert lines[0] == "The baseline reaches 92.00 % clean test accuracy (n = 3 seeds)."
    # 5 pp better in every seed, but each seed's McNemar test has only 4-6 discordant images
    assert "Clean accuracy of `thickness` vs baseline: +5.00 pp (within the noise)." in lines
    only_thickness = rows[rows["variant"] == "thickness"]
    assert findings(only_thickness, accuracy_table(only_thickness), pd.DataFrame(),
                    ["thickness"]) == [
        "No unaugmented baseline (variant `none`) among the results: no comparisons."]


def test_duels_and_best_per_level_apply_the_noise_rule(tmp_path, synthetic_sweep):
    """pen is right on 25 more images than thin in every seed (clear); pen and thick differ
    by one image a seed (within the noise, though pen is best everywhere)."""
    numbers = {"none": {0: 60, 1: 62, 2: 61}, "pen": {0: 95, 1: 96, 2: 97},
               "thin": {0: 70, 1: 71, 2: 72}, "thick": {0: 94, 1: 95, 2: 96}}
    results = load_results([synthetic_sweep(tmp_path / "s", numbers)])
    acc = accuracy_table(results.rows)
    d = duel(results, acc, "pen", "thin", "delta", 1.0)
    assert d is not None and d["diff_pp"] == pytest.approx(25.0) and d["seeds"] == 3 and d["clear"]
    close = duel(results, acc, "pen", "thick", "delta", 1.0)
    assert close is not None and close["diff_pp"] == pytest.approx(1.0) and not close["clear"]
    assert duel(results, acc, "pen", "missing", "delta", 1.0) is None
    # significant in every seed, but the seeds disagree so much that the intervals overlap
    spread = {"none": {0: 80, 1: 50, 2: 80}, "pen": {0: 99, 1: 70, 2: 99}}
    wide = load_results([synthetic_sweep(tmp_path / "w", spread)])
    noisy = duel(wide, accuracy_table(wide.rows), "pen", "none", "delta", 1.0)
    assert noisy is not None and noisy["diff_pp"] == pytest.approx(19.33, abs=0.01)
    assert not noisy["clear"]
    best = best_per_level(results, acc)
    assert set(best["best"]) == {"pen"} and set(best["runner_up"]) == {"thick"}
    assert not best["clear"].any() and best["gap_pp"].tolist() == pytest.approx([1.0] * len(best))
    lines = duel_findings(results, acc, best)
    assert "`pen` vs `thin` on the thinnest strokes: delta -1 +25.00 pp (outside the noise)" in lines[0]
    assert "`pen` vs `thick` on the thickest strokes:" in lines[1] and "(within the noise)" in lines[1]


def test_experiment_of_keeps_the_question(tmp_path, synthetic_sweep):
    """The report's question comes from experiment.json, or from the experiment file named
    there when an older record has no description."""
    import json

    from robustmnist.analysis import experiment_of

    sweep = synthetic_sweep(tmp_path / "out" / "sweep")
    record = tmp_path / "out" / "experiment.json"
    record.write_text(json.dumps({"experiment": {"name": "e", "description": "Why?"}}))
    assert experiment_of([sweep]) == ("e", "Why?")
    toml = tmp_path / "e.toml"
    toml.write_text('name = "e"\ndescription = "From the file?"\n')
    record.write_text(json.dumps({"experiment": {"name": "e", "source": str(toml)}}))
    assert experiment_of([sweep]) == ("e", "From the file?")
    toml.unlink()
    assert experiment_of([sweep]) == ("e", "")
