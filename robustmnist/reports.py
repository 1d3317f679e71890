"""Comparison reports generated from result files only (never retrains or re-evaluates).

Input: one or more sweep folders written by ``robustmnist eval --sweep-width --out`` or
``robustmnist run`` (sweep.csv, predictions.npz, sweep.json), plus the run folders their rows
point to (metrics.csv, for wall times). Output, in the report folder: README.md, results.csv
(all tidy rows), one CSV per table, and PNG plots. Every sentence with a number in the
"Findings" section is computed from those numbers, with the noise rule stated there.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from robustmnist import RobustMnistError, artifacts
from robustmnist.evaluation import (
    CLASS_COLUMNS,
    corruption_errors,
    load_predictions,
    prediction_key,
)

BASELINE = "none"
FAMILY_TITLES = {
    "delta": "stroke change (px of width at 28x28; <0 thinner)",
    "absolute": "every digit redrawn at one thickness (px)",
    "ladder": "28x28 morphology rungs (-1 = 2x2 erosion, +2 = 3x3 dilation)",
}
WORST_FAMILIES = ("delta", "absolute")
THICKNESS_BINS = [0.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, np.inf]


# --------------------------------------------------------------------------- loading

def _sweep_dir(path: Path) -> Path:
    path = Path(path)
    return path.parent if path.name == "sweep.csv" else path


def load_results(paths: Sequence[Path]) -> tuple[pd.DataFrame, list[dict[str, Any]], dict[str, Any]]:
    """(rows, sweep metas, predictions bundle) from sweep folders; clear errors if incomplete."""
    frames, metas = [], []
    bundle: dict[str, Any] = {"predictions": {}, "labels": None, "clean_thickness": None,
                              "examples": {}}
    for p in paths:
        folder = _sweep_dir(p)
        csv_path, meta_path = folder / "sweep.csv", folder / "sweep.json"
        if not csv_path.is_file():
            raise RobustMnistError(f"{folder}: no sweep.csv; pass a folder written by "
                                   "`robustmnist eval --sweep-width --out` or `robustmnist run`")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if meta.get("complete") is not True:
            raise RobustMnistError(f"{folder}: the sweep is incomplete (no complete sweep.json); "
                                   "rerun the evaluation")
        frame = pd.read_csv(csv_path)
        missing = {"run", "variant", "seed", "family", "level", "accuracy"} - set(frame.columns)
        if missing:
            raise RobustMnistError(f"{csv_path}: missing columns {sorted(missing)}")
        frames.append(frame)
        metas.append({**meta, "folder": str(folder)})
        pred_path = folder / "predictions.npz"
        if pred_path.is_file():
            saved = load_predictions(pred_path)
            bundle["predictions"].update(saved.predictions)
            bundle["labels"] = saved.labels
            bundle["clean_thickness"] = saved.clean_thickness
            bundle["examples"].update(saved.examples)
    rows = pd.concat(frames, ignore_index=True).drop_duplicates(["run", "family", "level"])
    return rows, metas, bundle


def experiment_of(paths: Sequence[Path]) -> tuple[str, str]:
    """(name, question) of the experiment the first result folder belongs to, if recorded."""
    folder = _sweep_dir(paths[0]) if paths else Path(".")
    exp_file = folder.parent / "experiment.json"
    if exp_file.is_file():
        exp = json.loads(exp_file.read_text()).get("experiment", {})
        return exp.get("name", folder.parent.name), exp.get("description", "")
    return folder.parent.name or "report", ""


# --------------------------------------------------------------------------- statistics

def mean_ci(values: Sequence[float]) -> tuple[float, float, float, int]:
    """(mean, lo, hi, n): 95 % t-interval over seeds; lo = hi = mean when n = 1."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return (math.nan, math.nan, math.nan, 0)
    m = float(v.mean())
    if n == 1:
        return (m, m, m, 1)
    half = float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return (m, m - half, m + half, n)


def fmt_ci(mean: float, lo: float, hi: float, n: int, scale: float = 100, digits: int = 2) -> str:
    if not np.isfinite(mean):
        return "n/a"
    if n <= 1:
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * (hi - lo) / 2:.{digits}f}"


def mcnemar(base_correct: np.ndarray, other_correct: np.ndarray) -> tuple[int, int, float]:
    """(b, c, p): b = only the baseline right, c = only the other right; exact two-sided p."""
    b = int(np.sum(base_correct & ~other_correct))
    c = int(np.sum(~base_correct & other_correct))
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return b, c, p


# --------------------------------------------------------------------------- tables

def accuracy_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Long table: variant x family x level -> mean, lo, hi, n (accuracy over seeds)."""
    out = []
    for (variant, family, level), g in rows.groupby(["variant", "family", "level"], sort=False):
        m, lo, hi, n = mean_ci(g["accuracy"])
        out.append({"variant": variant, "family": family, "level": level, "mean": m, "lo": lo,
                    "hi": hi, "n": n, "measured_thickness": g["measured_thickness"].iloc[0]})
    return pd.DataFrame(out)


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


def summary_table(rows: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    """Per variant: clean accuracy, worst perturbed accuracy, CE and relative CE (delta)."""
    ce = corruption_errors(rows) if (rows["family"] == "delta").any() else pd.DataFrame()
    out = []
    for v in variants:
        g = rows[rows["variant"] == v]
        clean = g[g["family"] == "clean"]["accuracy"]
        # The ladder's -2 rung erases a third of the digits; worst-case is over the sweep families.
        worst = g[g["family"].isin(WORST_FAMILIES)].groupby("run")["accuracy"].min()
        entry = {"variant": v, "n": int(clean.size)}
        entry["clean"] = mean_ci(clean)
        entry["worst level"] = mean_ci(worst)
        if not ce.empty:
            cev = ce[ce["variant"] == v]
            entry["CE"] = mean_ci(cev["ce"] / 100)
            entry["relative CE"] = mean_ci(cev["relative_ce"] / 100)
        out.append(entry)
    return pd.DataFrame(out)


def mcnemar_table(rows: pd.DataFrame, bundle: dict[str, Any]) -> pd.DataFrame:
    """Per variant x family x level: paired McNemar vs the baseline of the same seed."""
    preds, labels = bundle["predictions"], bundle["labels"]
    if labels is None:
        return pd.DataFrame()
    out = []
    base_runs = rows[rows["variant"] == BASELINE].drop_duplicates("run").set_index("seed")["run"]
    keyed = rows.drop_duplicates(["run", "family", "level"])
    for (variant, family, level), g in keyed.groupby(["variant", "family", "level"], sort=False):
        if variant == BASELINE:
            continue
        bs, cs, ps, deltas = [], [], [], []
        for _, r in g.iterrows():
            if r["seed"] not in base_runs.index:
                continue
            base_key = prediction_key(base_runs[r["seed"]], family, level)
            key = prediction_key(r["run"], family, level)
            if base_key not in preds or key not in preds:
                continue
            b, c, p = mcnemar(preds[base_key] == labels, preds[key] == labels)
            bs.append(b)
            cs.append(c)
            ps.append(p)
            deltas.append((c - b) / len(labels))
        if not ps:
            continue
        out.append({"variant": variant, "family": family, "level": level, "seeds": len(ps),
                    "delta_pp": 100 * float(np.mean(deltas)), "only_baseline_right": sum(bs),
                    "only_variant_right": sum(cs), "p_max": max(ps), "p_min": min(ps),
                    "significant_seeds": int(sum(p < 0.05 for p in ps))})
    return pd.DataFrame(out)


def binned_clean(rows: pd.DataFrame, bundle: dict[str, Any]) -> pd.DataFrame:
    """Clean error per bin of each test digit's own measured thickness, per variant."""
    thickness, labels, preds = bundle["clean_thickness"], bundle["labels"], bundle["predictions"]
    if thickness is None or labels is None:
        return pd.DataFrame()
    names = [f"<{THICKNESS_BINS[1]:g}"] + [
        f"{a:g}-{b:g}" for a, b in itertools.pairwise(THICKNESS_BINS[1:-1])
    ] + [f">={THICKNESS_BINS[-2]:g}"]
    which = np.digitize(np.nan_to_num(thickness, nan=0.0), THICKNESS_BINS[1:-1])
    out = []
    runs = rows[rows["family"] == "clean"].drop_duplicates("run")
    for variant, g in runs.groupby("variant", sort=False):
        for i, name in enumerate(names):
            mask = which == i
            accs = [float(np.mean(preds[prediction_key(r, "clean", 0.0)][mask] == labels[mask]))
                    for r in g["run"] if mask.any() and prediction_key(r, "clean", 0.0) in preds]
            m, lo, hi, n = mean_ci(accs)
            out.append({"variant": variant, "bin": name, "count": int(mask.sum()),
                        "mean": m, "lo": lo, "hi": hi, "n": n})
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- findings

def findings(rows: pd.DataFrame, acc: pd.DataFrame, mc: pd.DataFrame, variants: list[str]) -> list[str]:
    """Sentences computed from the numbers. Noise rule: a difference counts when its paired
    McNemar test is significant (p < 0.05) in every seed and the 95 % CIs do not overlap."""
    lines: list[str] = []
    if BASELINE not in variants:
        return ["No unaugmented baseline (variant `none`) among the results: no comparisons."]
    others = [v for v in variants if v != BASELINE]
    clean = acc[acc["family"] == "clean"].set_index("variant")
    base_clean = clean.loc[BASELINE]
    n = int(base_clean["n"])
    lines.append(f"The baseline reaches {100 * base_clean['mean']:.2f} % clean test accuracy "
                 f"(n = {n} seed{'s' if n != 1 else ''}).")
    for family in [f for f in FAMILY_TITLES if f in set(rows["family"])]:
        fam = acc[acc["family"] == family]
        levels = sorted(fam["level"].unique())
        for level in (levels[0], levels[-1]):
            at = fam[fam["level"] == level].set_index("variant")
            best = at["mean"].idxmax()
            base = at.loc[BASELINE] if BASELINE in at.index else None
            if base is None:
                continue
            measured = at["measured_thickness"].iloc[0]
            text = (f"{family} {level_label(family, level)} (measured {measured:.2f} px): "
                    f"baseline {100 * base['mean']:.2f} %")
            if best == BASELINE:
                text += "; no variant beats it."
            else:
                gain = 100 * (at.loc[best, "mean"] - base["mean"])
                sig = _is_clear(mc, best, family, level, at.loc[best], base)
                text += (f", best `{best}` {100 * at.loc[best, 'mean']:.2f} % "
                         f"({gain:+.2f} pp, {'outside' if sig else 'not clearly outside'} the noise).")
            lines.append(text)
    for v in others:
        if v not in clean.index:
            continue
        diff = 100 * (clean.loc[v, "mean"] - base_clean["mean"])
        sig = _is_clear(mc, v, "clean", 0.0, clean.loc[v], base_clean)
        lines.append(f"Clean accuracy of `{v}` vs baseline: {diff:+.2f} pp "
                     f"({'outside' if sig else 'within'} the noise).")
    ce = corruption_errors(rows) if "delta" in set(rows["family"]) else pd.DataFrame()
    if not ce.empty and ce["ce"].notna().any():
        per = ce.groupby("variant", sort=False)["ce"].mean().drop(BASELINE, errors="ignore")
        if not per.empty:
            text = (f"Lowest corruption error over the delta family: `{per.idxmin()}` "
                    f"(CE {per.min():.1f}, baseline = 100)")
            if len(per) > 1:
                text += f"; highest: `{per.idxmax()}` ({per.max():.1f})"
            lines.append(text + ".")
    return lines


def _is_clear(mc: pd.DataFrame, variant: str, family: str, level: float,
              a: pd.Series, b: pd.Series) -> bool:
    if mc.empty:
        return False
    hit = mc[(mc["variant"] == variant) & (mc["family"] == family) & (mc["level"] == level)]
    if hit.empty:
        return False
    all_sig = int(hit["significant_seeds"].iloc[0]) == int(hit["seeds"].iloc[0])
    disjoint = a["lo"] > b["hi"] or b["lo"] > a["hi"] if a["n"] > 1 else True
    return bool(all_sig and disjoint)


# --------------------------------------------------------------------------- rendering

def level_label(family: str, level: float) -> str:
    """'+1.5' for signed families (delta, ladder), '1.5' for absolute thickness."""
    return f"{level:g}" if family == "absolute" else f"{level:+g}"


def _md(frame: pd.DataFrame, index: bool = True) -> str:
    frame = frame.rename_axis(frame.index.name or "variant").reset_index() if index else frame
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _setup_section(rows: pd.DataFrame, metas: list[dict[str, Any]], out_dir: Path) -> list[str]:
    meta = metas[0]
    machine = meta.get("machine", {})
    train_seconds = 0.0
    epochs = set()
    for ckpt in rows.drop_duplicates("run")["checkpoint"]:
        metrics = Path(ckpt).parent / "metrics.csv"
        if metrics.is_file():
            m = pd.read_csv(metrics)
            train_seconds += float(m["epoch_seconds"].sum())
            epochs.add(len(m))
    exp_file = Path(meta["folder"]).parent / "experiment.json"
    wall = None
    if exp_file.is_file():
        inv = json.loads(exp_file.read_text()).get("invocations", [])
        wall = sum(i.get("wall_seconds", 0.0) for i in inv)
    seeds = rows.groupby("variant")["seed"].nunique()
    lines = [
        "## Setup",
        "",
        f"- Model: {', '.join(sorted(set(rows['model'])))}; epochs per run: "
        f"{', '.join(str(e) for e in sorted(epochs)) or 'n/a'}; seeds per variant: "
        + ", ".join(f"{v} {n}" for v, n in seeds.items()) + ".",
        "- Test data MD5 (uncompressed IDX): "
        + ", ".join(f"`{k}` {v}" for k, v in meta.get("data_md5", {}).items()) + ".",
        f"- robustmnist {meta.get('version', '?')} (git {meta.get('git_revision') or 'n/a'}), "
        f"torch {machine.get('torch', '?')}, Python {machine.get('python', '?')}.",
        f"- Evaluation device: {machine.get('device', '?')} ({machine.get('device_name', '?')}), "
        f"{machine.get('cpu_count', '?')} CPU cores.",
        f"- Training time (sum of epoch times over all runs): {train_seconds / 60:.1f} min; "
        f"sweep evaluation: {sum(m.get('seconds', 0.0) for m in metas) / 60:.1f} min"
        + (f"; wall time of all `robustmnist run` invocations: {wall / 60:.1f} min." if wall else "."),
        "- Accuracy cells: mean ± half-width of the 95 % t-interval over seeds (n in its column; "
        "a single seed shows the mean only). Binomial noise on 10,000 test images alone is "
        "±0.1 pp at 99 % and ±0.3 pp at 90 %.",
        "",
    ]
    return lines


def write_report(results: Sequence[Path], out_dir: Path, title: str = "report",
                 question: str = "") -> Path:
    """Render README.md, CSVs and plots for the given sweep folders into `out_dir`."""
    from robustmnist import plots

    rows, metas, bundle = load_results(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = list(dict.fromkeys(rows["variant"]))
    if BASELINE in variants:
        variants = [BASELINE] + [v for v in variants if v != BASELINE]
    families = [f for f in FAMILY_TITLES if f in set(rows["family"])]
    acc = accuracy_table(rows)
    mc = mcnemar_table(rows, bundle)
    binned = binned_clean(rows, bundle)
    summary = summary_table(rows, variants)

    artifacts.write_text(out_dir / "results.csv", rows.to_csv(index=False))
    artifacts.write_text(out_dir / "accuracy.csv", acc.to_csv(index=False))
    if not mc.empty:
        artifacts.write_text(out_dir / "mcnemar.csv", mc.to_csv(index=False))
    if not binned.empty:
        artifacts.write_text(out_dir / "clean_by_thickness.csv", binned.to_csv(index=False))
    levels = rows.drop_duplicates(["family", "level"])[
        ["family", "level", "measured_thickness", "ink_ratio", "erased_fraction"]]
    artifacts.write_text(out_dir / "levels.csv", levels.to_csv(index=False))
    summary_flat = summary.copy()
    for col in [c for c in summary.columns if c not in ("variant", "n")]:
        summary_flat[col] = [x[0] for x in summary[col]]
    artifacts.write_text(out_dir / "summary.csv", summary_flat.to_csv(index=False))

    md = [f"# {title}: stroke-thickness robustness", ""]
    if question:
        md += [f"**Question.** {question}", ""]
    md += ["*Generated by `robustmnist report` from result files; do not edit by hand.*", ""]
    md += ["## Findings", "", *[f"- {line}" for line in findings(rows, acc, mc, variants)],
           "- Noise rule: a difference is called outside the noise only when the paired McNemar "
           "test vs the same-seed baseline has p < 0.05 in every seed and the 95 % intervals do "
           "not overlap.", ""]
    md += _setup_section(rows, metas, out_dir)

    md += ["## Summary per variant", "",
           "Clean accuracy and worst-level accuracy over the delta and absolute families (%), "
           "corruption error over the delta family (CE, baseline = 100; relative CE uses error "
           "minus clean error).", ""]
    show = pd.DataFrame({"variant": summary["variant"], "n": summary["n"]})
    for col in [c for c in summary.columns if c not in ("variant", "n")]:
        show[col] = [fmt_ci(*x) for x in summary[col]]
    md += [_md(show, index=False), ""]

    md += ["## Stroke levels (measured)", "",
           "Mean Morpho-MNIST thickness of the perturbed test digits and ink relative to the "
           "originals; `erased` = share of digits left with < 10 % of their ink.", ""]
    lv = levels.copy()
    lv["measured_thickness"] = lv["measured_thickness"].map(lambda x: f"{x:.2f} px")
    lv["ink_ratio"] = lv["ink_ratio"].map(lambda x: f"{x:.2f}")
    lv["erased_fraction"] = lv["erased_fraction"].map(lambda x: f"{100 * x:.1f} %")
    md += [_md(lv.rename(columns={"erased_fraction": "erased"}), index=False), ""]

    for family in families:
        md += [f"## Accuracy (%) by level: {family}", "", FAMILY_TITLES[family], "",
               _md(wide_accuracy(acc, family, variants)), "",
               f"![accuracy vs {family}](accuracy_{family}.png)", ""]
        table = acc[acc["family"].isin([family] + (["clean"] if family == "delta" else []))]
        fig = plots.accuracy_curves(table.assign(level=table["level"].where(
            table["family"] != "clean", 0.0)), "level", FAMILY_TITLES[family],
            f"{title}: accuracy vs {family}",
            reference_x=2.69 if family == "absolute" else None)
        plots.save(fig, out_dir / f"accuracy_{family}.png")
        artifacts.write_text(out_dir / f"accuracy_{family}.csv",
                             wide_accuracy(acc, family, variants).to_csv())

    if not mc.empty:
        show_mc = mc.copy()
        show_mc["delta_pp"] = show_mc["delta_pp"].map(lambda x: f"{x:+.2f}")
        show_mc["p_max"] = show_mc["p_max"].map(lambda x: f"{x:.2g}")
        show_mc["p_min"] = show_mc["p_min"].map(lambda x: f"{x:.2g}")
        md += ["## Paired McNemar tests vs the baseline of the same seed", "",
               "`delta_pp`: mean accuracy difference (variant - baseline); counts summed over "
               "seeds; `significant_seeds`: seeds with p < 0.05 (exact binomial test).", "",
               _md(show_mc, index=False), ""]

    if not binned.empty:
        fig = plots.binned_accuracy(binned, "clean test error by each digit's own thickness")
        plots.save(fig, out_dir / "clean_error_by_thickness.png")
        pivot = binned.pivot_table(index="variant", columns="bin", values="mean", sort=False)
        pivot = (100 * (1 - pivot)).round(2)
        counts = binned.drop_duplicates("bin").set_index("bin")["count"]
        md += ["## Do thin MNIST digits already fail?", "",
               "Clean test error (%) per bin of each digit's own measured thickness "
               "(digits per bin: " + ", ".join(f"{b}: {c}" for b, c in counts.items()) + ").", "",
               _md(pivot.reindex(variants)), "",
               "![clean error by thickness](clean_error_by_thickness.png)", ""]

    if bundle["examples"]:
        keys = list(bundle["examples"])
        grid = np.stack([bundle["examples"][k] for k in keys], axis=1)  # (K, sets, 28, 28)
        fig = plots.digit_grid(grid[:6], [f"digit {i}" for i in range(min(6, len(grid)))],
                               [k.replace("|", "\n") for k in keys], "test digits at every level")
        plots.save(fig, out_dir / "examples.png")
        md += ["## What the levels look like", "", "![examples](examples.png)", ""]

    extremes = []
    for family in families:
        fam_levels = sorted(rows[rows["family"] == family]["level"].unique())
        extremes += [(family, fam_levels[0]), (family, fam_levels[-1])]
    if extremes:
        sel = rows[[(f, lv_) in extremes for f, lv_ in zip(rows["family"], rows["level"], strict=True)]]
        heat = sel.groupby(["variant", "family", "level"], sort=False)[CLASS_COLUMNS].mean()
        heat.index = [f"{v} | {f} {level_label(f, lv_)}" for v, f, lv_ in heat.index]
        heat = heat.sort_index()
        fig = plots.class_heatmap(heat, "per-class accuracy at the thinnest and thickest levels")
        plots.save(fig, out_dir / "class_accuracy.png")
        artifacts.write_text(out_dir / "class_accuracy.csv", heat.to_csv())
        md += ["## Per-class accuracy at the extreme levels", "", "![per-class](class_accuracy.png)", ""]

    md += ["## Files", "", "- `results.csv`: every row (checkpoint x family x level), tidy.",
           "- `accuracy.csv`, `accuracy_<family>.csv`, `summary.csv`, `levels.csv`, "
           "`mcnemar.csv`, `clean_by_thickness.csv`, `class_accuracy.csv`: the tables above.",
           "- Sources: " + ", ".join(f"`{m['folder']}`" for m in metas) + ".", ""]
    artifacts.write_text(out_dir / "README.md", "\n".join(md))
    return out_dir
