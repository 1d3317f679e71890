"""What the A/B benchmarks share: this tree against an earlier revision, each measurement a
fresh subprocess importing the tree it times, alternated A B B A (machines differ from day to
day; a speed-up is a ratio measured side by side)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: The first lines of every child: an editable install's finder would win over PYTHONPATH;
#: dropped, so the timed tree is the one imported.
CHILD_PREAMBLE = """
import sys
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
"""


def in_tree(tree: Path, child: str, args: Sequence[str], env: dict[str, str] | None = None) -> dict:
    """Run `child` (Python source printing one JSON line with the imported ``module`` path)
    in `tree`; its JSON, after checking that it imported that tree."""
    done = subprocess.run([sys.executable, "-c", CHILD_PREAMBLE + child, *args], capture_output=True,
                          text=True, check=True, cwd=tree,  # `-c` puts the working folder first
                          env={**os.environ, **(env or {}), "PYTHONPATH": str(tree)})
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["module"].startswith(str(tree)):
        raise SystemExit(f"timed the wrong tree: {result['module']} is not under {tree}")
    return result


def alternate(base: str, rounds: int, measure: Callable[[Path], dict],
              show: Callable[[dict], Any] = lambda r: r) -> dict[str, list[dict]]:
    """``{"base": [...], "this": [...]}``: `measure(tree)` of `base` (checked out with ``git
    worktree`` into a temporary folder, removed after) and of this tree, A B B A per round."""
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base_tree),
                        base], check=True)
        try:
            runs: dict[str, list[dict]] = {"base": [], "this": []}
            for _ in range(rounds):
                for which in ("base", "this", "this", "base"):
                    runs[which].append(measure(base_tree if which == "base" else ROOT))
                    print(which, show(runs[which][-1]), flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)],
                           check=False)
    return runs
