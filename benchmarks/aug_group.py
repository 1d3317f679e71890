"""How many training batches one ``apply`` call should augment (``training.AUG_GROUP``): the
augmentation of every policy over one epoch through ``training.training_batches`` at each
group size, this tree only, each measurement a fresh subprocess, the sizes in a rotated order
per round; also checks that every size draws bit-identical batches.

Writes ``benchmarks/results/aug-group-<date>-<HHMM>.{json,md}``.
Usage: ``python benchmarks/aug_group.py [--groups 1,2,4,8] [--rounds 2] [--passes 3]``. Run it
alone on the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from ab import ROOT
from aug_ab import RESULTS, alone_tables, policy_list, policy_options, timed

from robustmnist import artifacts
from robustmnist.artifacts import git_revision, machine_info


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--groups", default="1,2,4,8", help="group sizes to compare")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (each size once per round)")
    policy_options(parser)
    args = parser.parse_args()
    groups = [int(g) for g in args.groups.split(",")]
    policies = policy_list(args.policies)
    runs: dict[int, list[dict]] = {g: [] for g in groups}
    for r in range(args.rounds):
        for g in groups[r % len(groups):] + groups[:r % len(groups)]:
            runs[g].append(timed(ROOT, policies, args.passes, group=g))
            print(g, {k: round(v, 3) for k, v in runs[g][-1]["seconds"].items()}, flush=True)
    med, alone, least_alone = alone_tables(runs, policies)
    same = {p: len({x["hash"][p] for rs in runs.values() for x in rs}) == 1 for p in policies}
    when = dt.datetime.now(dt.UTC)
    machine = machine_info("cpu")
    record: dict[str, Any] = {"date": when.isoformat(timespec="seconds"), "machine": machine,
              "this": git_revision(ROOT), "groups": groups, "runs": {str(g): v for g, v in runs.items()},
              "median": {str(g): v for g, v in med.items()},
              "augmentation_alone_s": {str(g): v for g, v in alone.items()},
              "least_augmentation_alone_s": {str(g): v for g, v in least_alone.items()},
              "bit_identical": same}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"aug-group-{when:%Y-%m-%d-%H%M}"
    artifacts.write_json(stem.with_suffix(".json"), record)
    first = groups[0]
    lines = [f"Measured {record['date']} on {machine['device_name']} (2 torch threads, torch "
             f"{machine['torch']}), {args.rounds} round(s), {args.passes} passes per process; "
             f"`python benchmarks/aug_group.py --groups {args.groups} --rounds {args.rounds} "
             f"--passes {args.passes}` (tree {record['this']}).", "",
             "Augmentation alone over one epoch's 118 batches of 512 digits (the policy's pass minus "
             f"the `none` pass at the same group size), medians; in brackets the ratio to {first}:", "",
             "| policy | " + " | ".join(f"{g} per call" for g in groups) + " | same batches |",
             "|---|" + "---|" * len(groups) + "---|"]
    for table in (alone, least_alone):
        if table is least_alone:
            lines += ["", "The same from each size's least pass (of all its processes):", "",
                      lines[4], lines[5]]
        for p in policies[1:]:
            base = table[first][p]
            cells = [f"{table[g][p]:.3f} s" + (f" ({table[g][p] / base:.2f})" if base and g != first else "")
                     for g in groups]
            lines.append(f"| {p} | " + " | ".join(cells) + f" | {'yes' if same[p] else '**no**'} |")
    lines += ["", "`none` (the gather and scaling every policy pays): "
              + ", ".join(f"{med[g]['none']:.3f} s at {g}" for g in groups) + "."]
    artifacts.write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
