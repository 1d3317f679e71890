"""The training augmentation of every policy, this tree's code against an earlier revision's,
alternated in one session (A B B A), with the same malloc settings in both: one epoch's batches
(512 digits, the trainer's input path, as bench.py's "augmentation alone") per policy, median
of `--passes` passes per process. Also checks that both revisions draw bit-identical batches
(a hash of the first batches' output per policy): a speed-up must not change what a run trains on.

Each measurement is a fresh subprocess with ``PYTHONPATH`` set to the tree it times (the other
revision is checked out with ``git worktree`` into a temporary folder), 2 torch threads.
Writes ``benchmarks/results/aug-ab-<date>-<HHMM>.{json,md}``. A tree with
``training.training_batches`` is timed through it (``AUG_GROUP`` batches per ``apply`` call,
or ``BENCH_AUG_GROUP``, as its trainer does; with its stroke rung table, built before the
timed passes, where it has ``training.stroke_rungs``), an older one batch by batch, as its
trainer did.
Usage: ``python benchmarks/aug_ab.py [--base REV] [--rounds 1] [--passes 3]``. Run it alone
on the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
from pathlib import Path
from typing import Any

from ab import ROOT, alternate, in_tree

from robustmnist import artifacts
from robustmnist.artifacts import git_revision, machine_info
from robustmnist.config import POLICIES

RESULTS = ROOT / "benchmarks" / "results"

#: Runs in the timed tree (its own `robustmnist` first on the path).
CHILD = r"""
import hashlib, json, os, statistics, sys, time
import torch
import robustmnist
from robustmnist.augmentation import augment
from robustmnist.checkpoint import to_unit
from robustmnist.config import AugConfig
from robustmnist.data import default_data_dir, load_split
from robustmnist.pen import training_atlas
torch.set_num_threads(2)
policies, passes = sys.argv[1].split(","), int(sys.argv[2])
images = load_split("train").images
atlas = training_atlas(images, default_data_dir())
out = {"module": robustmnist.__file__, "seconds": {}, "hash": {}}
try:  # the trainer's path: AUG_GROUP batches per apply call (or BENCH_AUG_GROUP)
    from robustmnist import training
    grouped = training.training_batches
    forced = int(os.environ.get("BENCH_AUG_GROUP") or 0)
    by_policy = getattr(training, "aug_group", lambda config, device="cpu": training.AUG_GROUP)
    out["group"] = forced or ("by policy" if hasattr(training, "aug_group") else training.AUG_GROUP)
except AttributeError:  # a tree from before: one batch per call, as its trainer did
    grouped = None
rungs_of = getattr(training, "stroke_rungs", None) if grouped is not None else None
tables = {}  # the trainer builds its stroke rung table once per run: not timed per pass
def batches(config, g, perm):
    if grouped is not None:
        extra = {}
        if rungs_of is not None:
            key = (config.delta_min_px, config.delta_max_px, config.p_untouched)
            if key not in tables:
                tables[key] = rungs_of(images, config)
            extra["rungs"] = tables[key]
        yield from (x for _, x in grouped(images, perm, 512, config, g,
                                          atlas if config.p_pen else None,
                                          group=forced or by_policy(config), **extra))
        return
    for i in range(0, len(perm), 512):
        idx = perm[i:i + 512]
        yield augment(to_unit(images[idx]), config, g, atlas[idx] if config.p_pen else None)
def one_pass(config, keep=0):
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    digest = hashlib.sha256()
    t0 = time.perf_counter()
    for k, x in enumerate(batches(config, g, perm)):
        if k < keep:
            digest.update(x.contiguous().numpy().tobytes())
    return time.perf_counter() - t0, digest.hexdigest()
for policy in policies:
    config = AugConfig.from_policy(policy)
    out["hash"][policy] = one_pass(config, keep=len(images))[1]  # every batch; and warms up
    times = [one_pass(config)[0] for _ in range(passes)]
    out["seconds"][policy] = statistics.median(times)
    out.setdefault("least_seconds", {})[policy] = min(times)  # the pass least interrupted
print(json.dumps(out))
"""

#: The same malloc in both trees (robustmnist.allocator's settings, which the base may lack).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
              "ROBUSTMNIST_MALLOC": "system"}


def timed(tree: Path, policies: list[str], passes: int, group: int | None = None) -> dict:
    env = {**MALLOC_ENV, "BENCH_AUG_GROUP": "" if group is None else str(group)}
    return in_tree(tree, CHILD, [",".join(policies), str(passes)], env)


def policy_options(parser: argparse.ArgumentParser) -> None:
    """The options both augmentation benchmarks take: --passes and --policies."""
    parser.add_argument("--passes", type=int, default=3, help="timed passes per process")
    parser.add_argument("--policies", default=",".join(p for p in POLICIES if p != "none"
                                                    and not POLICIES[p].get("p_photo")))


def policy_list(text: str) -> list[str]:
    """``none`` (the baseline pass) first, then the --policies asked for (photo policies are
    not timed here: their bank is a gather, and the old tree has none)."""
    asked = [p for p in text.split(",") if p and p != "none"]
    if photos := [p for p in asked if POLICIES.get(p, {}).get("p_photo")]:
        raise SystemExit(f"--policies: {', '.join(photos)} draw photos, which this A/B does not "
                         "load; time them with benchmarks/bench.py")
    return ["none", *asked]


def alone_tables(runs: dict[Any, list[dict]], policies: list[str]) -> tuple[dict, dict, dict]:
    """Per key of `runs` (a tree, a group size) and policy: the median of its processes' median
    passes, the augmentation alone from them (minus ``none``), and the augmentation alone
    from the least pass of all its processes (on a VM whose passes vary 2x, the cost without
    the interruptions: medians can rank two configurations by chance)."""
    def alone(passes: dict[Any, dict[str, float]]) -> dict[Any, dict[str, float]]:
        return {w: {p: max(m[p] - m["none"], 0.0) for p in policies if p != "none"}
                for w, m in passes.items()}

    med = {w: {p: statistics.median(r["seconds"][p] for r in rs) for p in policies}
           for w, rs in runs.items()}
    least = {w: {p: min(r["least_seconds"][p] for r in rs) for p in policies} for w, rs in runs.items()}
    return med, alone(med), alone(least)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", default="9068f3b", help="earlier revision to compare with")
    parser.add_argument("--rounds", type=int, default=1, help="A B B A rounds")
    policy_options(parser)
    args = parser.parse_args()
    policies = policy_list(args.policies)
    runs = alternate(args.base, args.rounds, lambda tree: timed(tree, policies, args.passes),
                     lambda r: {k: round(v, 3) for k, v in r["seconds"].items()})
    med, alone, least_alone = alone_tables(runs, policies)
    same = {p: len({r["hash"][p] for rs in runs.values() for r in rs}) == 1 for p in policies}
    when = dt.datetime.now(dt.UTC)
    record = {"date": when.isoformat(timespec="seconds"), "machine": machine_info("cpu"),
              "base": args.base, "this": git_revision(ROOT), "runs": runs, "median": med,
              "augmentation_alone_s": alone, "least_augmentation_alone_s": least_alone,
              "bit_identical": same}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"aug-ab-{when:%Y-%m-%d-%H%M}"
    artifacts.write_json(stem.with_suffix(".json"), record)
    machine = record["machine"]
    lines = [f"Measured {record['date']} on {machine['device_name']} (2 torch threads, torch "
             f"{machine['torch']}), {args.rounds} A B B A round(s), {args.passes} passes per process; "
             f"`python benchmarks/aug_ab.py --base {args.base} --rounds {args.rounds}` (this tree: "
             f"{record['this']}).", "",
             "Augmentation alone over one epoch's 118 batches of 512 digits (the policy's pass minus "
             "the `none` pass), medians:", "",
             f"| policy | {args.base} | this tree | this / base | same batches |", "|---|---|---|---|---|"]
    for table in (alone, least_alone):
        if table is least_alone:
            lines += ["", "The same from each tree's least pass (of all its processes: the cost "
                      "without the VM's interruptions):", "", lines[4], lines[5]]
        for p in policies[1:]:
            a, b = table["base"][p], table["this"][p]
            ratio = f"{b / a:.2f}" if a else "-"
            lines.append(f"| {p} | {a:.3f} s | {b:.3f} s | {ratio} | {'yes' if same[p] else '**no**'} |")
    artifacts.write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
