"""Does keeping freed memory for reuse (`robustmnist.allocator`) speed training up here?

Alternates child processes with glibc's default malloc (``ROBUSTMNIST_MALLOC=system``) and
with robustmnist's setting, `--rounds` of each, same seed: each child times one training epoch
(``--aug none``) and one epoch's batches through the augmentation of a few policies (bench.py's
`augmentation_pass`), and counts its minor page faults. Medians per arm, one run, one machine.

Usage: ``python benchmarks/allocator_ab.py [--rounds 3] [--policies a,b]``; writes
``benchmarks/results/allocator-ab-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ARMS = {"system": {"ROBUSTMNIST_MALLOC": "system"}, "kept": {"ROBUSTMNIST_MALLOC": "keep"}}
RESULTS = Path(__file__).parent / "results"


def child(policies: list[str]) -> dict[str, Any]:
    import torch
    from bench import augmentation_pass, robustmnist_epoch

    from robustmnist.allocator import keep_freed_memory
    from robustmnist.data import default_data_dir, load_split
    from robustmnist.pen import training_atlas

    kept = keep_freed_memory()
    device = torch.device("cpu")
    splits = (load_split("train"), load_split("test"))
    atlas = training_atlas(splits[0].images, default_data_dir())
    out: dict[str, Any] = {"kept": kept, "max_rss_mb": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        out["epoch_s"] = robustmnist_epoch("none", device, Path(tmp), splits)[0]
        out["epoch_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    for policy in policies:
        augmentation_pass(policy, device, splits, atlas)  # warm
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        out[policy] = augmentation_pass(policy, device, splits, atlas)
        out[f"{policy} faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--policies", default="none,thickness+affine,fine-pen+thickness+affine")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    policies = [p for p in args.policies.split(",") if p]
    if args.child:
        print(json.dumps(child(policies)))
        return
    import torch

    from robustmnist import artifacts

    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for r in range(args.rounds):
        for arm in (list(ARMS) if r % 2 == 0 else list(ARMS)[::-1]):  # neither arm always first
            done = subprocess.run([sys.executable, __file__, "--child", "--policies", args.policies],
                                  env={**os.environ, **ARMS[arm]}, check=True, text=True,
                                  capture_output=True, cwd=Path(__file__).parent)
            runs[arm].append(json.loads(done.stdout.strip().splitlines()[-1]))
            if runs[arm][-1]["kept"] != (arm == "kept"):
                raise SystemExit(f"the {arm} arm ran with kept={runs[arm][-1]['kept']}: malloc "
                                 "refused the setting here, so there is nothing to compare")
            print(arm, runs[arm][-1], flush=True)
    keys = ["epoch_s", "epoch_faults", *[k for p in policies for k in (p, f"{p} faults")],
            "max_rss_mb"]
    med = {arm: {k: statistics.median(run[k] for run in rs) for k in keys} for arm, rs in runs.items()}
    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    machine = artifacts.provenance(torch.device("cpu"))["machine"]
    lines = [f"Measured {date} on {machine['device_name']} ({machine['torch_threads']} torch threads, "
             f"torch {machine['torch']}), {args.rounds} alternating rounds, medians; "
             f"`python benchmarks/allocator_ab.py`.", "",
             "| measurement | malloc's defaults | freed memory kept | kept / defaults |", "|---|---|---|---|"]
    for k in keys:
        a, b = med["system"][k], med["kept"][k]
        label = ("training epoch, --aug none" if k == "epoch_s" else
                 "peak resident memory of the process" if k == "max_rss_mb" else
                 "minor page faults in that epoch" if k == "epoch_faults" else
                 "minor page faults in those batches (after a warm pass)" if k.endswith(" faults")
                 else f"one epoch's batches through `{k}` (after the training epoch)")
        fmt = ((lambda v: f"{v:,.0f}") if "faults" in k else (lambda v: f"{v:,.0f} MB")
               if k == "max_rss_mb" else (lambda v: f"{v:.2f} s"))
        lines.append(f"| {label} | {fmt(a)} | {fmt(b)} | {b / a:.2f} |" if a else
                     f"| {label} | {fmt(a)} | {fmt(b)} | - |")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"allocator-ab-{date[:10]}.json"
    artifacts.write_json(path, {"date": date, "machine": machine, "runs": runs, "medians": med})
    artifacts.write_text(path.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
