"""The cold and warm quickstart sweep of one checkpoint, this tree's code against an earlier
revision's, alternated in one session (A B B A): machines differ from day to day (the same
2-core "AMD EPYC" ran the unchanged standard epoch in 11.5 s on 2026-11-28 and 28.6 s on
2026-12-01), so a speed-up is shown by a ratio measured side by side, not across days.

Each measurement is a fresh subprocess with ``PYTHONPATH`` set to the tree it times (the other
revision is checked out with ``git worktree`` into a temporary folder), a fresh set cache
(cold) and the same cache again (warm), plus the thickness measurement of the 10,000 test
digits. Also checks that both revisions give the same accuracies.

Writes ``benchmarks/results/sweep-ab-<date>.{json,md}``.
Usage: ``python benchmarks/sweep_ab.py CHECKPOINT [--base REV] [--rounds 1]``.
Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
from pathlib import Path

from ab import ROOT, alternate, in_tree

from robustmnist.artifacts import git_revision, machine_info

RESULTS = ROOT / "benchmarks" / "results"

#: Runs in the timed tree (its own `robustmnist` first on the path).
CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
import torch
import robustmnist
from robustmnist.data import load_split
from robustmnist.evaluation import sweep
from robustmnist.measure import measure_thickness
from robustmnist.perturb import DEFAULT_LEVELS
torch.set_num_threads(2)
families = {f: list(DEFAULT_LEVELS[f]) for f in ("delta", "absolute", "ladder")}
test = load_split("test").images[:, 0].numpy()
t0 = time.perf_counter(); measure_thickness(test); measure_s = time.perf_counter() - t0
out = {"module": robustmnist.__file__, "measure_10k_s": measure_s}
with tempfile.TemporaryDirectory() as cache:
    for name in ("cold", "warm"):
        t0 = time.perf_counter()
        result = sweep([Path(sys.argv[1])], families, device=torch.device("cpu"), cache_dir=Path(cache))
        out[f"sweep_{name}_s"] = time.perf_counter() - t0
out["accuracy"] = [round(r["accuracy"], 6) for r in result.rows]
print(json.dumps(out))
"""


def timed(tree: Path, checkpoint: Path) -> dict:
    return in_tree(tree, CHILD, [str(checkpoint)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--base", default="6545ad7", help="earlier revision to compare with")
    parser.add_argument("--rounds", type=int, default=1, help="A B B A rounds")
    args = parser.parse_args()
    runs = alternate(args.base, args.rounds, lambda tree: timed(tree, args.checkpoint.resolve()),
                     lambda r: {k: round(v, 1) for k, v in r.items() if k.endswith("_s")})
    med = {w: {k: statistics.median(r[k] for r in rs) for k in ("measure_10k_s", "sweep_cold_s",
                                                                 "sweep_warm_s")}
           for w, rs in runs.items()}
    same = all(r["accuracy"] == runs["base"][0]["accuracy"] for rs in runs.values() for r in rs)
    when = dt.datetime.now(dt.UTC)
    record = {"date": when.isoformat(timespec="seconds"), "machine": machine_info("cpu"),
              "base": args.base, "this": git_revision(ROOT), "runs": runs, "median": med,
              "same_accuracies": same}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"sweep-ab-{when.date()}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"Measured {record['date']} on {record['machine'].get('device_name')} (2 torch threads), "
             f"{2 * args.rounds} runs each, alternated (A B B A); medians.", "",
             f"| measurement | {args.base} | this tree ({record['this']}) | ratio |", "|---|---|---|---|"]
    for key, label in (("measure_10k_s", "measure 10,000 test digits"),
                       ("sweep_cold_s", "quickstart sweep (24 sets), cold"),
                       ("sweep_warm_s", "quickstart sweep (24 sets), warm")):
        b, t = med["base"][key], med["this"][key]
        lines.append(f"| {label} | {b:.1f} s | {t:.1f} s | {b / t:.2f}x |")
    lines += ["", f"Same accuracy on every set from both revisions: {'yes' if same else 'NO'}."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
