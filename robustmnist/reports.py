"""Comparison reports rendered from result files only (never retrains, re-evaluates or
recomputes statistics: those come from ``analysis.py``).

Input: one or more sweep folders written by ``robustmnist eval --sweep-width --out`` or
``robustmnist run`` (sweep.csv, predictions.npz, sweep.json; training times are recorded in
sweep.json, so a report renders the same from any working directory). Output, in the report
folder: README.md, results.csv (all tidy rows), one CSV per table, and PNG plots. Every
sentence with a number in the "Findings" section is computed by `analysis.findings`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from robustmnist import RobustMnistError, artifacts
from robustmnist.analysis import (
    FAMILY_TITLES,
    Results,
    accuracy_table,
    best_per_level,
    binned_clean,
    compare_finding,
    compare_table,
    duel_findings,
    findings,
    level_label,
    load_results,
    mcnemar_table,
    summary_table,
)
from robustmnist.evaluation import CLASS_COLUMNS


def fmt_ci(mean: float, lo: float, hi: float, n: int, scale: float = 100, digits: int = 2) -> str:
    """'mean ± half-width' in percent; the mean alone for one seed.

    >>> fmt_ci(0.92, 0.8703, 0.9697, 3)
    '92.00 ± 4.97'
    """
    if not np.isfinite(mean):
        return "n/a"
    if n <= 1:
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * (hi - lo) / 2:.{digits}f}"


def wide_accuracy(acc: pd.DataFrame, family: str, variants: list[str]) -> pd.DataFrame:
    """Rows: variant; columns: clean then each level of `family`; cells 'mean ± CI'."""
    table: dict[str, dict[str, str]] = {}
    clean = acc[acc["family"] == "clean"].set_index("variant")
    fam = acc[acc["family"] == family]
    for v in variants:
        row = {"n": str(int(clean.loc[v, "n"])) if v in clean.index else "0"}
        if v in clean.index:
            c = clean.loc[v]
            row["clean"] = fmt_ci(c["mean"], c["lo"], c["hi"], int(c["n"]))
        for _, r in fam[fam["variant"] == v].sort_values("level").iterrows():
            row[level_label(family, r["level"])] = fmt_ci(r["mean"], r["lo"], r["hi"], int(r["n"]))
        table[v] = row
    return pd.DataFrame(table).T


# --------------------------------------------------------------------------- rendering

def _md(frame: pd.DataFrame, index: bool = True) -> str:
    frame = frame.rename_axis(frame.index.name or "variant").reset_index() if index else frame
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _training_time(results: Results) -> tuple[float | None, list[int]]:
    """(summed epoch seconds, distinct epoch counts) from what the sweeps recorded."""
    seconds, epochs, missing = 0.0, set(), False
    for sweep in results.sweeps:
        training = sweep.meta.get("training")
        if not isinstance(training, dict):
            missing = True
            continue
        for run in sweep.rows.drop_duplicates("run")["run"]:
            record = training.get(str(run)) or {}
            if record.get("train_seconds") is None:
                missing = True
            else:
                seconds += float(record["train_seconds"])
            if record.get("epochs"):
                epochs.add(int(record["epochs"]))
    if not epochs:
        epochs = {int(e) for e in results.rows["epochs"].unique()} if "epochs" in results.rows else set()
    return (None if missing else seconds), sorted(epochs)


def _differing_settings(results: Results) -> list[str]:
    """A Setup line naming the training settings (model, schedule, lr, ...) where variants
    differ, per variant, or none when every run has the same (sweeps recorded before runs
    kept their settings name none)."""
    seen: dict[str, dict[str, set[str]]] = {}  # variant -> setting -> values
    for sweep in results.sweeps:
        training = sweep.meta.get("training")
        for run, variant in sweep.rows.drop_duplicates("run")[["run", "variant"]].itertuples(index=False):
            record = training.get(str(run)) if isinstance(training, dict) else None
            settings = record.get("settings") if isinstance(record, dict) else None
            for key, value in (settings.items() if isinstance(settings, dict) else ()):
                seen.setdefault(str(variant), {}).setdefault(str(key), set()).add(str(value))
    keys = sorted({k for by_key in seen.values() for k in by_key})
    shown = {v: {k: "/".join(sorted(by_key.get(k, {"?"}))) for k in keys} for v, by_key in seen.items()}
    differing = [k for k in keys if len({values[k] for values in shown.values()}) > 1
                 or any("/" in values[k] for values in shown.values())]
    if not differing:
        return []
    # The most frequent single value (a tie: the first variant's); a mixed one is never common.
    common: dict[str, str] = {}
    for k in differing:
        single = [values[k] for values in shown.values() if "/" not in values[k]]
        if single:
            common[k] = max(dict.fromkeys(single), key=single.count)
    own = [f"`{v}` " + ", ".join(f"{k} {values[k]}" + (" (its runs differ)" if "/" in values[k] else "")
                                 for k in differing if values[k] != common.get(k))
           for v, values in shown.items() if any(values[k] != common.get(k) for k in differing)]
    rest = ", ".join(f"{k} {common[k]}" for k in differing if k in common)
    return [f"- Training settings where runs differ: {'; '.join(own)}"
            + (f"; every other variant: {rest}." if rest and len(own) < len(shown) else ".")]


def _wall_seconds(results: Results) -> float | None:
    exp_file = results.sweeps[0].folder.root.parent / "experiment.json"
    try:
        inv = json.loads(exp_file.read_text()).get("invocations", []) if exp_file.is_file() else []
        return sum(float(i.get("wall_seconds", 0.0)) for i in inv) or None
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def _setup_section(results: Results) -> list[str]:
    rows, meta = results.rows, results.sweeps[0].meta
    machine = meta.get("machine", {})
    train_seconds, epochs = _training_time(results)
    wall = _wall_seconds(results)
    seeds = rows.groupby("variant")["seed"].nunique()
    sweep_minutes = sum(float(s.meta.get("seconds", 0.0)) for s in results.sweeps) / 60
    trained = ("not recorded in these sweeps" if train_seconds is None
               else f"{train_seconds / 60:.1f} min")
    return [
        "## Setup",
        "",
        f"- Model: {', '.join(sorted(set(rows['model'])))}; epochs per run: "
        f"{', '.join(str(e) for e in epochs) or 'n/a'}; seeds per variant: "
        + ", ".join(f"{v} {n}" for v, n in seeds.items()) + ".",
        *_differing_settings(results),
        "- Test data MD5 (uncompressed IDX): "
        + ", ".join(f"`{k}` {v}" for k, v in meta.get("data_md5", {}).items()) + ".",
        f"- robustmnist {meta.get('version', '?')} (git {meta.get('git_revision') or 'n/a'}), "
        f"torch {machine.get('torch', '?')}, Python {machine.get('python', '?')}.",
        f"- Evaluation device: {machine.get('device', '?')} ({machine.get('device_name', '?')}), "
        f"{machine.get('cpu_count', '?')} CPU cores.",
        f"- Training time (sum of epoch times over all runs): {trained}; "
        f"sweep evaluation: {sweep_minutes:.1f} min"
        + (f"; wall time of the `robustmnist run` invocations that finished: {wall / 60:.1f} "
           "min (an interrupted one is not recorded)." if wall else "."),
        "- Accuracy cells: mean ± half-width of the 95 % t-interval over seeds (n in its column; "
        "a single seed shows the mean only). Binomial noise on 10,000 test images alone is "
        "±0.1 pp at 99 % and ±0.3 pp at 90 %.",
        "",
    ]


def _write_csv(out_dir: Path, name: str, frame: pd.DataFrame, index: bool = False) -> None:
    artifacts.write_text(out_dir / name, frame.to_csv(index=index))


def _summary_section(summary: pd.DataFrame) -> list[str]:
    show = pd.DataFrame({"variant": summary["variant"], "n": summary["n"]})
    for col in [c for c in summary.columns if c not in ("variant", "n")]:
        show[col] = [fmt_ci(*x) for x in summary[col]]
    return ["## Summary per variant", "",
            "Clean accuracy and worst-level accuracy over the delta and absolute families (%), "
            "corruption error over the delta family (CE, baseline = 100; relative CE uses error "
            "minus clean error).", "", _md(show, index=False), ""]


def _levels_section(levels: pd.DataFrame) -> list[str]:
    lv = levels.copy()
    lv["measured_thickness"] = lv["measured_thickness"].map(lambda x: f"{x:.2f} px")
    lv["ink_ratio"] = lv["ink_ratio"].map(lambda x: f"{x:.2f}")
    lv["erased_fraction"] = lv["erased_fraction"].map(lambda x: f"{100 * x:.1f} %")
    return ["## Stroke levels (measured)", "",
            "Mean Morpho-MNIST thickness of the perturbed test digits and ink relative to the "
            "originals; `erased` = share of digits left with < 10 % of their ink.", "",
            _md(lv.rename(columns={"erased_fraction": "erased"}), index=False), ""]


def _family_section(acc: pd.DataFrame, family: str, variants: list[str], title: str,
                    out_dir: Path) -> list[str]:
    from robustmnist import plots

    wide = wide_accuracy(acc, family, variants)
    table = acc[acc["family"].isin([family] + (["clean"] if family == "delta" else []))]
    fig = plots.accuracy_curves(table.assign(level=table["level"].where(
        table["family"] != "clean", 0.0)), "level", FAMILY_TITLES[family],
        f"{title}: accuracy vs {family}", reference_x=2.69 if family == "absolute" else None)
    plots.save(fig, out_dir / f"accuracy_{family}.png")
    artifacts.write_text(out_dir / f"accuracy_{family}.csv", wide.to_csv())
    return [f"## Accuracy (%) by level: {family}", "", FAMILY_TITLES[family], "", _md(wide), "",
            f"![accuracy vs {family}](accuracy_{family}.png)", ""]


def _best_section(best: pd.DataFrame) -> list[str]:
    show = best.assign(level=[level_label(f, x) for f, x in zip(best["family"], best["level"],
                                                                   strict=True)],
                       best_accuracy=best["best_accuracy"].map(lambda x: f"{x:.2f}"),
                       gap_pp=best["gap_pp"].map(lambda x: f"{x:+.2f}"),
                       clear=best["clear"].map(lambda x: "yes" if x else "no"))
    return ["## Best variant per level", "",
            "Mean accuracy over seeds (%); `gap_pp`: best minus runner-up; `clear`: outside "
            "the noise (paired McNemar between the two in every seed, disjoint intervals).", "",
            _md(show, index=False), ""]


def _compare_section(table: pd.DataFrame, a: str, b: str, i: int) -> list[str]:
    show = table.assign(level=[level_label(f, x) for f, x in zip(table["family"], table["level"],
                                                                    strict=True)],
                        diff_pp=table["diff_pp"].map(lambda x: f"{x:+.2f}"),
                        clear=table["clear"].map(lambda x: "yes" if x else "no"))
    for v in (a, b):
        show[v] = table[v].map(lambda x: f"{x:.2f}")
    return [f"## `{a}` vs `{b}`", "",
            f"Mean accuracy over seeds (%) at every level (`compare_{i}.csv`); `diff_pp`: "
            f"`{a}` minus `{b}`; `clear`: outside the noise (paired McNemar between the two in "
            "every seed, disjoint intervals).", "", _md(show, index=False), ""]


def _mcnemar_section(mc: pd.DataFrame) -> list[str]:
    show = mc.copy()
    show["delta_pp"] = show["delta_pp"].map(lambda x: f"{x:+.2f}")
    show["p_max"] = show["p_max"].map(lambda x: f"{x:.2g}")
    show["p_min"] = show["p_min"].map(lambda x: f"{x:.2g}")
    return ["## Paired McNemar tests vs the baseline of the same seed", "",
            "`delta_pp`: mean accuracy difference (variant - baseline); counts summed over "
            "seeds; `significant_seeds`: seeds with p < 0.05 (exact binomial test).", "",
            _md(show, index=False), ""]


def _binned_section(binned: pd.DataFrame, variants: list[str], out_dir: Path) -> list[str]:
    from robustmnist import plots

    plots.save(plots.binned_accuracy(binned, "clean test error by each digit's own thickness"),
               out_dir / "clean_error_by_thickness.png")
    pivot = binned.pivot_table(index="variant", columns="bin", values="mean", sort=False)
    pivot = (100 * (1 - pivot)).round(2)
    counts = binned.drop_duplicates("bin").set_index("bin")["count"]
    return ["## Do thin MNIST digits already fail?", "",
            "Clean test error (%) per bin of each digit's own measured thickness "
            "(digits per bin: " + ", ".join(f"{b}: {c}" for b, c in counts.items()) + ").", "",
            _md(pivot.reindex(variants)), "",
            "![clean error by thickness](clean_error_by_thickness.png)", ""]


def _examples_section(results: Results, out_dir: Path) -> list[str]:
    from robustmnist import plots

    grid = results.examples.transpose(1, 0, 2, 3)  # (K, sets, 28, 28)
    labels = [f"{f}\n{lv:g}" for f, lv in results.example_sets]
    fig = plots.digit_grid(grid[:6], [f"digit {i}" for i in range(min(6, len(grid)))], labels,
                           "test digits at every level")
    plots.save(fig, out_dir / "examples.png")
    return ["## What the levels look like", "", "![examples](examples.png)", ""]


def _class_section(rows: pd.DataFrame, families: list[str], out_dir: Path) -> list[str]:
    from robustmnist import plots

    extremes = []
    for family in families:
        fam_levels = sorted(rows[rows["family"] == family]["level"].unique())
        extremes += [(family, fam_levels[0]), (family, fam_levels[-1])]
    sel = rows[[(f, lv_) in extremes for f, lv_ in zip(rows["family"], rows["level"], strict=True)]]
    heat = sel.groupby(["variant", "family", "level"], sort=False)[CLASS_COLUMNS].mean()
    heat.index = [f"{v} | {f} {level_label(f, lv_)}" for v, f, lv_ in heat.index]
    heat = heat.sort_index()
    plots.save(plots.class_heatmap(heat, "per-class accuracy at the thinnest and thickest levels"),
               out_dir / "class_accuracy.png")
    artifacts.write_text(out_dir / "class_accuracy.csv", heat.to_csv())
    return ["## Per-class accuracy at the extreme levels", "", "![per-class](class_accuracy.png)", ""]


def write_report(paths: Sequence[Path], out_dir: Path, title: str = "report",
                 question: str = "", compare: Sequence[tuple[str, str]] = (),
                 recorded_compare: Sequence[tuple[str, str]] = ()) -> Path:
    """Render README.md, CSVs and plots for the given sweep folders into `out_dir`.
    `compare`: (a, b) variant pairs the study asks about, each compared at every level (an
    unknown name is an error); `recorded_compare`: pairs from the experiment's record, where a
    pair these results lack (a sweep of some of its variants) is skipped and said so."""
    results = load_results(paths)
    for pair in compare:
        if missing := [v for v in pair if v not in results.variants]:
            raise RobustMnistError(f"compare {','.join(pair)!r}: no variant {missing[0]!r} in "
                                   f"these results; choose from {', '.join(results.variants)}")
    skipped = [p for p in recorded_compare if any(v not in results.variants for v in p)]
    compare = [*compare, *(p for p in recorded_compare if p not in skipped)]
    out_dir = artifacts.claim_dir(Path(out_dir), "report folder")
    earlier = _report_files(out_dir)
    rows, variants, families = results.rows, results.variants, results.families
    acc, mc, binned = accuracy_table(rows), mcnemar_table(results), binned_clean(results)
    summary = summary_table(rows, variants)
    levels = rows.drop_duplicates(["family", "level"])[
        ["family", "level", "measured_thickness", "ink_ratio", "erased_fraction"]]
    _write_csv(out_dir, "results.csv", rows)
    _write_csv(out_dir, "accuracy.csv", acc)
    if not mc.empty:
        _write_csv(out_dir, "mcnemar.csv", mc)
    if not binned.empty:
        _write_csv(out_dir, "clean_by_thickness.csv", binned)
    _write_csv(out_dir, "levels.csv", levels)
    _write_csv(out_dir, "summary.csv", summary.assign(**{
        c: [x[0] for x in summary[c]] for c in summary.columns if c not in ("variant", "n")}))

    md = [f"# {title}: stroke-thickness robustness", ""]
    if question:
        md += [f"**Question.** {question}", ""]
    md += ["*Generated by `robustmnist report` from result files; do not edit by hand.*", ""]
    best = best_per_level(results, acc)
    lines = findings(rows, acc, mc, variants) + duel_findings(results, acc, best)
    compared = [(a, b, compare_table(results, acc, a, b)) for a, b in compare]
    lines += [compare_finding(table, a, b) for a, b, table in compared]
    lines += [f"The experiment's compared pair `{a}` vs `{b}` is skipped: not both in these "
              "results." for a, b in skipped]
    md += ["## Findings", "", *[f"- {line}" for line in lines],
           "- Noise rule: a difference is called outside the noise only when the paired McNemar "
           "test (against the same-seed baseline, or between the two variants compared) has "
           "p < 0.05 in every seed and the 95 % intervals do not overlap.", ""]
    md += _setup_section(results) + _summary_section(summary) + _levels_section(levels)
    for family in families:
        md += _family_section(acc, family, variants, title, out_dir)
    if not best.empty:
        md += _best_section(best)
        _write_csv(out_dir, "best_per_level.csv", best)
    for i, (a, b, table) in enumerate(compared, 1):
        md += _compare_section(table, a, b, i)
        _write_csv(out_dir, f"compare_{i}.csv", table)
    if not mc.empty:
        md += _mcnemar_section(mc)
    if not binned.empty:
        md += _binned_section(binned, variants, out_dir)
    if len(results.example_sets):
        md += _examples_section(results, out_dir)
    if families:
        md += _class_section(rows, families, out_dir)
    md += ["## Files", "", "- `results.csv`: every row (checkpoint x family x level), tidy.",
           "- `accuracy.csv`, `accuracy_<family>.csv`, `summary.csv`, `levels.csv`, "
           "`mcnemar.csv`, `best_per_level.csv`, "
           + ("`compare_<i>.csv`, " if compared else "")
           + "`clean_by_thickness.csv`, `class_accuracy.csv`: the tables above.",
           "- Sources: " + ", ".join(f"`{s.folder.root}`" for s in results.sweeps) + ".", ""]
    artifacts.write_text(out_dir / "README.md", "\n".join(md))
    for path, inode in earlier.items():  # written again = replaced (a new inode): keep
        if path.is_file() and path.stat().st_ino == inode:
            path.unlink()
    return out_dir


#: Every file a report may write. One of these that this report did not write again is from
#: an earlier report into the folder (another family, a section this one has not): removed.
#: Nothing else in the folder is touched.
REPORT_FILES = ("README.md", "results.csv", "accuracy.csv", "summary.csv", "levels.csv",
                "mcnemar.csv", "best_per_level.csv", "clean_by_thickness.csv",
                "clean_error_by_thickness.png", "class_accuracy.csv", "class_accuracy.png",
                "examples.png",
                *(f"accuracy_{family}.{ext}" for family in FAMILY_TITLES for ext in ("csv", "png")))


def _report_files(out_dir: Path) -> dict[Path, int]:
    """Report files already in `out_dir` -> their inode (writes replace files atomically)."""
    names = [*REPORT_FILES, *(p.name for p in out_dir.glob("compare_*.csv")
                              if p.name[len("compare_"):-len(".csv")].isdigit())]
    return {out_dir / name: (out_dir / name).stat().st_ino for name in names
            if (out_dir / name).is_file()}
