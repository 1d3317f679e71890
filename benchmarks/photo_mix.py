"""Does the ``photo`` mix help? Its runs read against the recommendation's, seed by seed.

The ``photo+fine-pen+thickness+affine`` policy replaces 40 % of the training digits by their
photographs (``photobank.py``). This script reads trained runs of it on the clean test set, the
``photo`` family and the 5x5 dilation (``ladder`` +4), and sets them beside the same seeds of
the recommended variant as the capacity study's generated ``results.csv`` records them (the
same net, schedule and sweep; runs replay to the bit on the same kind of CPU, so retraining
the reference here would give those numbers). Train the runs first, per seed S::

    robustmnist train --aug photo+fine-pen+thickness+affine --aug-range -2,4 --aug-refit 0.8 \\
        --model wide --epochs 20 --seed S --out results/photo-mix/photo40-seedS
    python benchmarks/photo_mix.py results/photo-mix/photo40-seed*

Writes ``benchmarks/results/photo-mix.{json,md}`` (``--out`` another folder). Mean ± the 95 %
t-interval over seeds, as in the reports; no McNemar test (the reference's predictions are not
committed). The policy's photos take 40 % of the digits from the recommendation's mix: its pens
then redraw 42 % of them (not 70 %) and its stroke change reaches ~14 % (not ~24 %), so the
comparison is "photos instead of some pens and stroke changes", not photos added on top.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from robustmnist import RobustMnistError, artifacts
from robustmnist.analysis import mean_ci
from robustmnist.checkpoint import Classifier, load_checkpoint
from robustmnist.data import default_data_dir, load_split
from robustmnist.evaluation import test_set

ROOT = Path(__file__).resolve().parent
REFERENCE = "fine-pen+erode2+dilate4+refit80+affine+wide"
SETS = [("clean", 0.0), ("photo", 0.03), ("photo", 0.12), ("photo", 0.2), ("photo", 0.25),
        ("ladder", 4.0)]


def label(family: str, level: float) -> str:
    return "clean" if family == "clean" else f"{family} {level:g}"


def cell(ci: tuple[float, float, float, int], sign: str = "") -> str:
    """A `mean_ci` as ``mean ± half-width`` (the mean alone for one seed).

    >>> cell((98.5, 98.2, 98.8, 3)), cell((-0.1, -0.1, -0.1, 1), "+")
    ('98.50 ± 0.30', '-0.10')
    """
    mean, lo, hi, n = ci
    return f"{mean:{sign}.2f}" + (f" ± {(hi - lo) / 2:.2f}" if n > 1 else "")


def out_folder(out: Path) -> None:
    """Make the results folder before any work, or stop with one line (a file in its place or
    on its path, a folder that cannot be made)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SystemExit(f"error: --out {out}: {err.strerror or err}; name a folder") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of the photo mix")
    parser.add_argument("--reference", type=Path, default=ROOT.parent / "reports/capacity/results.csv")
    parser.add_argument("--out", type=Path, default=ROOT / "results",
                        help="folder of photo-mix.{json,md} (default: benchmarks/results)")
    args = parser.parse_args()
    out_folder(args.out)
    try:
        ref = pd.read_csv(args.reference)
        ref = ref[ref.variant == REFERENCE]
        checkpoints = [load_checkpoint(run / "checkpoint.pt") for run in args.runs]
    except (OSError, AttributeError, RobustMnistError, pd.errors.ParserError) as err:
        raise SystemExit(f"error: {err}; name finished run folders and the capacity study's "
                         "results.csv (--reference)") from None
    for run, ckpt in zip(args.runs, checkpoints, strict=True):
        if not ckpt.complete:
            raise SystemExit(f"error: {run} is not finished; finish it with robustmnist train ... --resume")
        c = ckpt.config
        asked = (c.aug.policy, c.aug.delta_min_px, c.aug.delta_max_px, c.aug.pen_refit, c.model, c.epochs)
        if asked != ("photo+fine-pen+thickness+affine", -2.0, 4.0, 0.8, "wide", 20):
            raise SystemExit(f"error: {run}: trained with {asked}; this table compares the command above")
        if not (ref.seed == c.seed).any():
            raise SystemExit(f"error: {run}: seed {c.seed} has no {REFERENCE} run in {args.reference}")
    data = default_data_dir()
    test = load_split("test", data)
    sets = {}
    for family, level in SETS:
        if family == "clean":
            sets[label(family, level)] = (test.images, test.labels)
        else:
            pset, y = test_set(family, level, data, test=test)
            sets[label(family, level)] = (torch.from_numpy(pset.images).unsqueeze(1), torch.from_numpy(y))
    rows, meta = [], {}
    for run, ckpt in zip(args.runs, checkpoints, strict=True):
        model = Classifier.from_checkpoint(ckpt)
        seed = ckpt.config.seed
        meta[str(run)] = {"seed": seed, "policy": ckpt.config.aug.policy,
                          "git": ckpt.meta.get("git_revision"), "photo_bank": ckpt.meta.get("photo_bank")}
        for name, (x, y) in sets.items():
            family, _, lvl = name.partition(" ")
            base = ref[(ref.seed == seed) & (ref.family == family)
                       & np.isclose(ref.level, float(lvl or 0))].accuracy
            rows.append({"seed": seed, "set": name, "photo mix": model.evaluate(x, y)[1],
                         "reference": float(base.iloc[0]) if len(base) else float("nan")})
    frame = pd.DataFrame(rows)
    machine = artifacts.machine_info("cpu")
    table = ["| test set | photo mix | reference | difference (pp) | per seed (mix / reference) |",
             "|---|---|---|---|---|"]
    summary = {}
    for name in sets:
        part = frame[frame.set == name].sort_values("seed")
        mix, ref_ci = mean_ci(100 * part["photo mix"]), mean_ci(100 * part["reference"])
        diff = mean_ci(100 * (part["photo mix"] - part["reference"]))
        summary[name] = {"mix": mix, "reference": ref_ci, "difference": diff}
        seeds = ", ".join(f"{100 * a:.2f} / {100 * b:.2f}" for a, b in
                          zip(part["photo mix"], part["reference"], strict=True))
        table.append(f"| {name} | {cell(mix)} | {cell(ref_ci)} | {cell(diff, '+')} | {seeds} |")
    where = args.reference.resolve()
    shown = where.relative_to(ROOT.parent) if where.is_relative_to(ROOT.parent) else where
    record = {"runs": meta, "rows": rows, "summary": summary, "reference": str(shown),
              "machine": f"{machine['host_cpu']}, {machine['cpu_count']} cores, torch {machine['torch']}",
              "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    artifacts.write_json(args.out / "photo-mix.json", record)
    text = (f"`python benchmarks/photo_mix.py {' '.join(str(r) for r in args.runs)}` "
            f"({record['measured']}, {record['machine']}): `photo+fine-pen+thickness+affine` "
            f"(`--aug-range -2,4 --aug-refit 0.8 --model wide`, 20 epochs) against the same seeds "
            f"of `{REFERENCE}` from `{shown}`. Accuracy %, mean ± "
            "half-width of the 95 % t-interval over seeds.\n\n" + "\n".join(table) + "\n")
    artifacts.write_text(args.out / "photo-mix.md", text)
    print(text)
    print(json.dumps({k: cell(v["difference"], "+") for k, v in summary.items()}))


if __name__ == "__main__":
    main()
