"""Statistics over sweep results: intervals over seeds, McNemar, CE, binned accuracies, findings.

Everything here reads `Results` (sweep folders loaded by `load_results`) and returns
DataFrames or sentences; nothing renders or writes (that is ``reports.py``). The noise rule
used by the findings: a difference counts when its paired McNemar test vs the same-seed
baseline is significant (p < 0.05) in every seed and the 95 % intervals do not overlap.

>>> mean, lo, hi, n = mean_ci([0.90, 0.92, 0.94])
>>> round(mean, 4), round(hi - mean, 4), n
(0.92, 0.0497, 3)
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from robustmnist import RobustMnistError
from robustmnist.evaluation import SavedSweep, load_sweep
from robustmnist.layout import SweepDir

BASELINE = "none"
#: family -> axis title; also the order families appear in reports.
FAMILY_TITLES = {
    "delta": "stroke change (px of width at 28x28; <0 thinner)",
    "absolute": "every digit redrawn at one thickness (px)",
    "ladder": ("28x28 OpenCV rungs (-1 = 2x2 erosion, +2 = 3x3 dilation; +3 = 4x4, +4 = 5x5, "
               "beyond the default thickness range)"),
    "photo": "photographed handwriting: pen width as a fraction of the digit's height",
}
#: Families whose levels are unsigned (an absolute width or fraction, not a change).
UNSIGNED_FAMILIES = ("absolute", "photo")
WORST_FAMILIES = ("delta", "absolute")
THICKNESS_BINS = [0.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, np.inf]


@dataclass(frozen=True)
class Results:
    """One or more sweeps, combined: rows, and predictions aligned with them."""

    rows: pd.DataFrame            # tidy rows of every sweep, in order
    predictions: np.ndarray       # (rows, N)
    labels: np.ndarray            # (N,)
    clean_thickness: np.ndarray   # (N,)
    example_sets: list[tuple[str, float]]
    examples: np.ndarray          # (sets, K, 28, 28)
    sweeps: list[SavedSweep]

    @property
    def variants(self) -> list[str]:
        """Variants in order of appearance, the baseline first."""
        variants = list(dict.fromkeys(self.rows["variant"]))
        return [BASELINE] + [v for v in variants if v != BASELINE] if BASELINE in variants else variants

    @property
    def families(self) -> list[str]:
        present = set(self.rows["family"])
        return [f for f in FAMILY_TITLES if f in present]

    def correct(self, run: str, family: str, level: float) -> np.ndarray | None:
        """(N,) bool: which test images `run` got right at (family, level), if evaluated."""
        hit = self.rows.index[(self.rows["run"] == run) & (self.rows["family"] == family)
                              & (self.rows["level"] == level)]
        return self.predictions[hit[0]] == self.labels if len(hit) else None


def load_results(paths: Sequence[Path]) -> Results:
    """Combine sweep folders; refuse results that would mix (same run in two sweeps, other
    test labels)."""
    if not paths:
        raise RobustMnistError("no sweep folders given; pass at least one")
    sweeps = [load_sweep(p) for p in paths]
    first = sweeps[0]
    seen: dict[tuple[str, str, float], Path] = {}
    for s in sweeps:
        if not np.array_equal(s.labels, first.labels):
            raise RobustMnistError(f"{s.folder.root} was evaluated on other test labels than "
                                   f"{first.folder.root}; report them separately")
        for key in zip(s.rows["run"], s.rows["family"], s.rows["level"], strict=True):
            if key in seen:
                raise RobustMnistError(
                    f"run {key[0]!r} ({key[1]} {key[2]:g}) is in both {seen[key]} and "
                    f"{s.folder.root}; report them separately or rename one run folder")
            seen[key] = s.folder.root
    rows = pd.concat([s.rows for s in sweeps], ignore_index=True)
    sets = list(dict.fromkeys(k for s in sweeps for k in s.example_sets))
    examples = {k: e for s in sweeps for k, e in zip(s.example_sets, s.examples, strict=True)}
    return Results(rows, np.concatenate([s.predictions for s in sweeps]), first.labels,
                   first.clean_thickness, sets,
                   np.stack([examples[k] for k in sets]) if sets else np.zeros((0, 0, 28, 28)),
                   sweeps)


def experiment_of(paths: Sequence[Path]) -> tuple[str, str]:
    """(name, question) of the experiment the first result folder belongs to, if recorded."""
    name, question, _ = experiment_record(paths)
    return name, question


def experiment_record(paths: Sequence[Path]) -> tuple[str, str, list[tuple[str, str]]]:
    """(name, question, compared variant pairs) of the experiment the first result folder
    belongs to, as recorded in its experiment.json (defaults where absent)."""
    folder = SweepDir.of(paths[0]).root if paths else Path(".")
    exp_file = folder.parent / "experiment.json"
    try:
        exp = json.loads(exp_file.read_text()).get("experiment", {}) if exp_file.is_file() else None
    except (OSError, ValueError, AttributeError):
        exp = None
    if isinstance(exp, dict):
        from robustmnist.experiments import description_in

        pairs = exp.get("compare") or []
        compare = [(str(p[0]), str(p[1])) for p in pairs if isinstance(p, list) and len(p) == 2]
        return (str(exp.get("name", folder.parent.name)),
                str(exp.get("description") or description_in(exp.get("source"))), compare)
    return folder.resolve().parent.name or "report", "", []


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


def mcnemar(base_correct: np.ndarray, other_correct: np.ndarray) -> tuple[int, int, float]:
    """(b, c, p): b = only the baseline right, c = only the other right; exact two-sided p."""
    b = int(np.sum(base_correct & ~other_correct))
    c = int(np.sum(~base_correct & other_correct))
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return b, c, p


def corruption_errors(frame: pd.DataFrame, family: str = "delta") -> pd.DataFrame:
    """CE and relative CE per run vs the unaugmented baseline of the same seed (= 100).

    CE = sum over levels of error / the baseline's sum; relative CE uses error - clean error.
    Runs whose seed has no baseline get NaN.
    """
    out = []
    fam = frame[frame["family"] == family]
    clean = frame[frame["family"] == "clean"].set_index("run")["error"]
    for run, group in fam.groupby("run", sort=False):
        ident = group.iloc[0]
        base = fam[(fam["variant"] == BASELINE) & (fam["seed"] == ident["seed"])]
        ce = rce = np.nan
        if not base.empty:
            base_run = base["run"].iloc[0]
            merged = group.merge(base[["level", "error"]], on="level", suffixes=("", "_base"))
            if len(merged) == len(group) and merged["error_base"].sum() > 0:
                ce = 100 * merged["error"].sum() / merged["error_base"].sum()
                rel = (merged["error"] - clean[run]).sum()
                rel_base = (merged["error_base"] - clean[base_run]).sum()
                rce = 100 * rel / rel_base if rel_base > 0 else np.nan
        out.append({"run": run, "variant": ident["variant"], "seed": ident["seed"],
                    "family": family, "ce": ce, "relative_ce": rce})
    return pd.DataFrame(out)


def accuracy_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Long table: variant x family x level -> mean, lo, hi, n (accuracy over seeds)."""
    out = []
    for (variant, family, level), g in rows.groupby(["variant", "family", "level"], sort=False):
        m, lo, hi, n = mean_ci(g["accuracy"])
        out.append({"variant": variant, "family": family, "level": level, "mean": m, "lo": lo,
                    "hi": hi, "n": n, "measured_thickness": g["measured_thickness"].iloc[0]})
    return pd.DataFrame(out)


def summary_table(rows: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    """Per variant: (mean, lo, hi, n) of clean accuracy, worst perturbed accuracy over the
    delta and absolute families, and CE / relative CE (delta) as fractions of the baseline."""
    ce = corruption_errors(rows) if (rows["family"] == "delta").any() else pd.DataFrame()
    out = []
    for v in variants:
        g = rows[rows["variant"] == v]
        clean = g[g["family"] == "clean"]["accuracy"]
        # The ladder's -2 rung erases a third of the digits; worst-case is over the sweep families.
        worst = g[g["family"].isin(WORST_FAMILIES)].groupby("run")["accuracy"].min()
        entry: dict[str, Any] = {"variant": v, "n": int(clean.size), "clean": mean_ci(clean),
                                 "worst level": mean_ci(worst)}
        if not ce.empty:
            cev = ce[ce["variant"] == v]
            entry["CE"] = mean_ci(cev["ce"] / 100)
            entry["relative CE"] = mean_ci(cev["relative_ce"] / 100)
        out.append(entry)
    return pd.DataFrame(out)


def _runs_by_seed(rows: pd.DataFrame, variant: str) -> pd.Series:
    return rows[rows["variant"] == variant].drop_duplicates("run").set_index("seed")["run"]


def mcnemar_table(results: Results) -> pd.DataFrame:
    """Per variant x family x level: paired McNemar vs the baseline of the same seed."""
    rows = results.rows
    out = []
    base_runs = _runs_by_seed(rows, BASELINE)
    for (variant, family, level), g in rows.groupby(["variant", "family", "level"], sort=False):
        if variant == BASELINE:
            continue
        bs, cs, ps, deltas = [], [], [], []
        for _, r in g.iterrows():
            if r["seed"] not in base_runs.index:
                continue
            base = results.correct(base_runs[r["seed"]], family, level)
            other = results.correct(r["run"], family, level)
            if base is None or other is None:
                continue
            b, c, p = mcnemar(base, other)
            bs.append(b)
            cs.append(c)
            ps.append(p)
            deltas.append((c - b) / len(results.labels))
        if not ps:
            continue
        out.append({"variant": variant, "family": family, "level": level, "seeds": len(ps),
                    "delta_pp": 100 * float(np.mean(deltas)), "only_baseline_right": sum(bs),
                    "only_variant_right": sum(cs), "p_max": max(ps), "p_min": min(ps),
                    "significant_seeds": int(sum(p < 0.05 for p in ps))})
    return pd.DataFrame(out)


def binned_clean(results: Results) -> pd.DataFrame:
    """Clean accuracy per bin of each test digit's own measured thickness, per variant."""
    thickness = results.clean_thickness
    if thickness is None or len(thickness) != len(results.labels):
        return pd.DataFrame()
    names = [f"<{THICKNESS_BINS[1]:g}"] + [
        f"{a:g}-{b:g}" for a, b in itertools.pairwise(THICKNESS_BINS[1:-1])
    ] + [f">={THICKNESS_BINS[-2]:g}"]
    which = np.digitize(np.nan_to_num(thickness, nan=0.0), THICKNESS_BINS[1:-1])
    out = []
    runs = results.rows[results.rows["family"] == "clean"].drop_duplicates("run")
    for variant, g in runs.groupby("variant", sort=False):
        correct = [results.correct(r, "clean", 0.0) for r in g["run"]]
        for i, name in enumerate(names):
            mask = which == i
            accs = [float(np.mean(c[mask])) for c in correct if mask.any() and c is not None]
            m, lo, hi, n = mean_ci(accs)
            out.append({"variant": variant, "bin": name, "count": int(mask.sum()),
                        "mean": m, "lo": lo, "hi": hi, "n": n})
    return pd.DataFrame(out)


def level_label(family: str, level: float) -> str:
    """'+1.5' for signed families (delta, ladder), '1.5' for absolute thickness and photo.

    >>> level_label("delta", 1.5), level_label("absolute", 1.5)
    ('+1.5', '1.5')
    """
    return f"{level:g}" if family in UNSIGNED_FAMILIES else f"{level:+g}"


# --------------------------------------------------------------------------- findings

def findings(rows: pd.DataFrame, acc: pd.DataFrame, mc: pd.DataFrame, variants: list[str]) -> list[str]:
    """Sentences computed from the numbers, with the noise rule of the module doc."""
    lines: list[str] = []
    if BASELINE not in variants:
        return ["No unaugmented baseline (variant `none`) among the results: no comparisons."]
    clean = acc[acc["family"] == "clean"].set_index("variant")
    base_clean = clean.loc[BASELINE]
    n = int(base_clean["n"])
    lines.append(f"The baseline reaches {100 * base_clean['mean']:.2f} % clean test accuracy "
                 f"(n = {n} seed{'s' if n != 1 else ''}).")
    for family in [f for f in FAMILY_TITLES if f in set(rows["family"])]:
        fam = acc[acc["family"] == family]
        levels = sorted(fam["level"].unique())
        for level in (levels[0], levels[-1]):
            lines += _extreme_level_finding(fam, mc, family, level)
    for v in [v for v in variants if v != BASELINE and v in clean.index]:
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


def _extreme_level_finding(fam: pd.DataFrame, mc: pd.DataFrame, family: str, level: float) -> list[str]:
    at = fam[fam["level"] == level].set_index("variant")
    if BASELINE not in at.index:
        return []
    best = at["mean"].idxmax()
    base = at.loc[BASELINE]
    measured = at["measured_thickness"].iloc[0]
    text = (f"{family} {level_label(family, level)} (measured {measured:.2f} px): "
            f"baseline {100 * base['mean']:.2f} %")
    if best == BASELINE:
        return [text + "; no variant beats it."]
    gain = 100 * (at.loc[best, "mean"] - base["mean"])
    sig = _is_clear(mc, best, family, level, at.loc[best], base)
    return [text + (f", best `{best}` {100 * at.loc[best, 'mean']:.2f} % "
                    f"({gain:+.2f} pp, {'outside' if sig else 'not clearly outside'} the noise).")]


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


# --------------------------------------------------------------------------- head to head

#: (challenger, rival, which end of each family): the study's question whether redrawing with
#: a pen beats erosion on thin pens and dilation on thick ones.
DUELS = (("pen", "thin", "thinnest"), ("pen", "thick", "thickest"))


def duel(results: Results, acc: pd.DataFrame, a: str, b: str, family: str,
         level: float) -> dict[str, Any] | None:
    """Variant `a` against `b` at one (family, level) with the noise rule: paired McNemar
    between the two, seed by seed (p < 0.05 in every seed), and disjoint 95 % intervals."""
    at = acc[(acc["family"] == family) & (acc["level"] == level)].set_index("variant")
    if a not in at.index or b not in at.index:
        return None
    runs_a, runs_b = _runs_by_seed(results.rows, a), _runs_by_seed(results.rows, b)
    ps = []
    for seed in runs_a.index.intersection(runs_b.index):
        ca = results.correct(runs_a[seed], family, level)
        cb = results.correct(runs_b[seed], family, level)
        if ca is not None and cb is not None:
            ps.append(mcnemar(cb, ca)[2])
    x, y = at.loc[a], at.loc[b]
    # One seed a side has no interval: McNemar decides alone (as `_is_clear` does).
    disjoint = (x["lo"] > y["hi"] or y["lo"] > x["hi"]) if min(x["n"], y["n"]) > 1 else True
    measured = min(x["n"], y["n"]) >= 1 and bool(ps)
    return {"family": family, "level": level, "a": a, "b": b,
            "a_mean": float(x["mean"]), "b_mean": float(y["mean"]),
            "diff_pp": 100 * float(x["mean"] - y["mean"]), "seeds": len(ps),
            "clear": measured and all(p < 0.05 for p in ps) and bool(disjoint)}


def best_per_level(results: Results, acc: pd.DataFrame) -> pd.DataFrame:
    """Per (family, level): the best variant, the runner-up, the gap and whether the gap is
    outside the noise (`duel`)."""
    out = []
    for (family, level), g in acc.groupby(["family", "level"], sort=False):
        if len(g) < 2:
            continue
        ranked = g.sort_values("mean", ascending=False)
        best, second = ranked["variant"].iloc[0], ranked["variant"].iloc[1]
        d = duel(results, acc, best, second, family, level)
        out.append({"family": family, "level": level, "best": best,
                    "best_accuracy": 100 * float(ranked["mean"].iloc[0]), "runner_up": second,
                    "gap_pp": d["diff_pp"] if d else math.nan,
                    "clear": bool(d and d["clear"])})
    return pd.DataFrame(out)


def compare_table(results: Results, acc: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Variant `a` against `b` at every (family, level) both were swept on (`duel`'s rule):
    columns family, level, a, b (mean accuracy, %), diff_pp, seeds, clear."""
    sets = acc[["family", "level"]].drop_duplicates().itertuples(index=False)
    rows = []
    for family, level in sets:
        d = duel(results, acc, a, b, family, level)
        if d is not None:
            rows.append({"family": family, "level": level, a: 100 * d["a_mean"],
                         b: 100 * d["b_mean"], "diff_pp": d["diff_pp"], "seeds": d["seeds"],
                         "clear": d["clear"]})
    return pd.DataFrame(rows, columns=["family", "level", a, b, "diff_pp", "seeds", "clear"])


def compare_finding(table: pd.DataFrame, a: str, b: str) -> str:
    """One sentence: where `a` is clearly ahead of `b`, clearly behind, and how many levels
    are within the noise.

    >>> t = pd.DataFrame({"family": ["photo", "photo", "delta"], "level": [0.3, 0.03, -1.5],
    ...                   "diff_pp": [1.25, -0.1, -2.0], "clear": [True, False, True]})
    >>> for part in compare_finding(t, "x", "y").split("; "):
    ...     print(part)
    `x` vs `y`: clearly ahead at photo 0.3 (+1.25 pp)
    clearly behind at delta -1.5 (-2.00 pp)
    within the noise at 1 of 3 levels.
    """
    def listed(part: pd.DataFrame) -> str:
        return ", ".join(("clean" if r.family == "clean" else
                          f"{r.family} {level_label(r.family, r.level)}") + f" ({r.diff_pp:+.2f} pp)"
                         for r in part.itertuples())

    clear = table["clear"].astype(bool)
    ahead, behind = table[clear & (table["diff_pp"] > 0)], table[clear & (table["diff_pp"] < 0)]
    parts = [f"clearly ahead at {listed(ahead) if len(ahead) else 'no level'}"]
    if len(behind):
        parts.append(f"clearly behind at {listed(behind)}")
    parts.append(f"within the noise at {int((~clear).sum())} of {len(table)} levels")
    return f"`{a}` vs `{b}`: {'; '.join(parts)}."


def duel_findings(results: Results, acc: pd.DataFrame, best: pd.DataFrame) -> list[str]:
    """Sentences: who reads photos best at each pen width, and the `DUELS`."""
    lines = []
    photo = best[best["family"] == "photo"] if not best.empty else best
    if len(photo):
        winners = photo["best"].value_counts()
        parts = [f"{level_label('photo', r.level)} `{r.best}` {r.best_accuracy:.2f} % "
                 f"({r.gap_pp:+.2f} pp vs `{r.runner_up}`{', clear' if r.clear else ''})"
                 for r in photo.itertuples()]
        lines.append(f"Photos, best variant at each pen width: {'; '.join(parts)}. "
                     f"`{winners.index[0]}` is best at {winners.iloc[0]} of {len(photo)} widths, "
                     f"clearly ahead of the runner-up at {int(photo['clear'].sum())}.")
    for a, b, end in DUELS:
        parts = []
        for family in ("delta", "absolute", "photo"):
            levels = sorted(acc[acc["family"] == family]["level"].unique())
            if not levels:
                continue
            level = levels[0] if end == "thinnest" else levels[-1]
            d = duel(results, acc, a, b, family, level)
            if d is not None:
                parts.append(f"{family} {level_label(family, level)} {d['diff_pp']:+.2f} pp "
                             f"({'outside' if d['clear'] else 'within'} the noise)")
        if parts:
            lines.append(f"`{a}` vs `{b}` on the {end} strokes: {'; '.join(parts)}.")
    return lines
