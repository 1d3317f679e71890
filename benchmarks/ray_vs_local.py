"""The quickstart through ``--executor ray`` against ``--executor local --jobs 2``, one run each
in the same session: wall time and whether every number is the same.

Each is a fresh `robustmnist run` subprocess into its own output folder (so the Ray figure
includes starting a local Ray instance, as a user pays it), MNIST and the perturbed test sets
already cached (run `robustmnist data fetch` and the quickstart once before). Compared: the
runs' metrics (timing columns aside) and weights, the sweep rows (the checkpoint path aside)
and the per-image predictions.

Writes ``benchmarks/results/ray-vs-local.md``.
Usage: ``python benchmarks/ray_vs_local.py [--experiment quickstart] [--work DIR] [--keep]``.
Run it alone on the machine (``flock /tmp/heavy.lock ...`` on a shared one).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from robustmnist.artifacts import git_revision, machine_info
from robustmnist.checkpoint import load_checkpoint
from robustmnist.experiments import Experiment, load_experiment, resolve_path

RESULTS = Path(__file__).parent / "results"
TIMING = ["epoch_seconds", "images_per_second"]
EXECUTORS = {"local --jobs 2": ["--executor", "local", "--jobs", "2"],
             "ray (local instance, --cpus-per-run 1)": ["--executor", "ray", "--cpus-per-run", "1"]}


def run(experiment: str, out: Path, options: list[str]) -> tuple[float, list[str]]:
    """Wall seconds of one `robustmnist run` subprocess, and its command."""
    cmd = [sys.executable, "-m", "robustmnist.cli", "run", experiment, "--out", str(out), *options]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0, ["robustmnist", *cmd[3:]]


def differences(a: Experiment, b: Experiment) -> list[str]:
    """What differs between two studies' numbers (empty: bit-identical)."""
    found = []
    for ra, rb in zip(a.runs(), b.runs(), strict=True):
        ma = pd.read_csv(ra.folder.metrics).drop(columns=TIMING)
        mb = pd.read_csv(rb.folder.metrics).drop(columns=TIMING)
        if not ma.equals(mb):
            found.append(f"{ra.folder.root.name}: metrics differ (max |diff| "
                         f"{(ma - mb).abs().to_numpy().max():.3g})")
        wa, wb = (load_checkpoint(r.folder.checkpoint).state_dict for r in (ra, rb))
        if any(not torch.equal(wa[k], wb[k]) for k in wa):
            found.append(f"{ra.folder.root.name}: weights differ")
    sa = pd.read_csv(a.layout.sweep.csv).drop(columns="checkpoint")
    sb = pd.read_csv(b.layout.sweep.csv).drop(columns="checkpoint")
    for column in sa.columns:
        if not sa[column].equals(sb[column]):
            numeric = pd.api.types.is_numeric_dtype(sa[column])
            found.append(f"sweep column {column} differs" + (
                f" (max |diff| {(sa[column] - sb[column]).abs().max():.3g})" if numeric else ""))
    with np.load(a.layout.sweep.predictions) as pa, np.load(b.layout.sweep.predictions) as pb:
        found += [f"predictions.npz {k} differs" for k in pa.files
                  if not np.array_equal(pa[k], pb[k])]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="quickstart")
    parser.add_argument("--work", type=Path, default=None, help="Output folders (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="Keep the output folders")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ray-vs-local-"))
    seconds, commands, studies = {}, {}, {}
    for name, options in EXECUTORS.items():
        out = work / name.split()[0]
        seconds[name], commands[name] = run(args.experiment, out, options)
        studies[name] = load_experiment(resolve_path(args.experiment), out)
        print(f"{name}: {seconds[name]:.1f}s", flush=True)
    local, ray = EXECUTORS
    diffs = differences(studies[local], studies[ray])
    ratio = seconds[ray] / seconds[local]
    machine = machine_info("cpu")
    lines = [
        f"# `--executor ray` vs `--executor local --jobs 2`: {args.experiment}",
        "",
        f"{dt.date.today()}, robustmnist {machine['robustmnist']} ({git_revision()}), "
        f"{machine['host_cpu']}, {machine['cpu_count']} CPUs, torch {machine['torch']}, "
        f"Python {machine['python']}; one run each, back to back, MNIST and test sets cached. "
        "Produced by `python benchmarks/ray_vs_local.py`.",
        "",
        "| executor | command | wall s |",
        "| --- | --- | ---: |",
        *(f"| {n} | `{' '.join(commands[n])}` | {seconds[n]:.1f} |" for n in EXECUTORS),
        "",
        f"Ray / local wall time: **{ratio:.3f}** ({100 * (ratio - 1):+.1f} %; the floor is within "
        "+15 %).",
        "",
        "Same results: " + ("**yes**, bit-identical metrics (timings aside), weights, sweep rows "
                            "(checkpoint path aside) and predictions." if not diffs else
                            "**no**: " + "; ".join(diffs)),
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray-vs-local.md").write_text("\n".join(lines))
    print("\n".join(lines))
    if not args.keep and args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
