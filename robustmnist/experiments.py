"""Experiments as data: a TOML file -> variants x seeds -> trained runs -> sweep -> report.

A file looks like ``experiments/quickstart.toml``. `load_experiment` rejects unknown keys,
wrong types and impossible values with the file, key and reason. `run_experiment` trains every
(variant, seed) that is not complete (resuming unfinished ones), refuses to mix runs whose
saved config differs from the file, evaluates all checkpoints on the sweep (skipped when an
up-to-date complete sweep exists), and returns the paths for the report.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from robustmnist import RobustMnistError, artifacts
from robustmnist.augmentation import POLICIES, AugConfig
from robustmnist.perturb import DEFAULT_LEVELS, check_level
from robustmnist.training import TrainConfig, run_state

PRESETS_DIR = Path(__file__).parent / "presets"

_TOP_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "name": (str, "a name of letters, digits, '-' or '_'"),
    "description": (str, "a string"),
    "output": (str, "a folder path"),
    "report": (str, "a folder path"),
    "epochs": (int, "an integer >= 1"),
    "seeds": (list, "a non-empty list of integers"),
    "batch_size": (int, "an integer >= 1"),
    "lr": ((int, float), "a number > 0"),
    "device": (str, "auto, cpu, cuda or cuda:N"),
    "model": (str, "a model name"),
    "sweep": (dict, "a table"),
    "variants": (list, "an array of tables [[variants]]"),
}
_AUG_KEYS = {f.name for f in fields(AugConfig)} - {"policy"}


@dataclass(frozen=True)
class Variant:
    name: str
    aug: AugConfig


@dataclass(frozen=True)
class Experiment:
    name: str
    source: Path
    output: Path          # runs/ and sweep/ go here
    report: Path          # the generated report folder
    train: TrainConfig    # shared settings (aug and seed filled per run)
    seeds: tuple[int, ...]
    variants: tuple[Variant, ...]
    families: dict[str, list[float]]
    description: str = ""

    def run_dir(self, variant: Variant, seed: int) -> Path:
        return self.output / "runs" / f"{variant.name}-seed{seed}"

    def runs(self) -> list[tuple[Variant, int, TrainConfig, Path]]:
        """Every (variant, seed) with its config and folder, seed-major (baselines early)."""
        out = []
        for seed in self.seeds:
            for v in self.variants:
                config = TrainConfig(**{**_shared(self.train), "seed": seed, "aug": v.aug})
                out.append((v, seed, config, self.run_dir(v, seed)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": str(self.source), "output": str(self.output),
                "report": str(self.report), "seeds": list(self.seeds),
                "train": _shared(self.train), "families": self.families,
                "variants": [{"name": v.name, "aug": v.aug.__dict__} for v in self.variants]}


def _shared(config: TrainConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in fields(config) if f.name not in ("aug", "seed")}


def _fail(path: Path, key: str, reason: str) -> RobustMnistError:
    return RobustMnistError(f"{path}: key '{key}': {reason}")


def _check_type(path: Path, key: str, value: Any, expected: type | tuple[type, ...], what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, expected):
        raise _fail(path, key, f"expected {what}, got {value!r}")


def resolve_path(spec: str | None) -> Path:
    """An experiment file path, or the name of a built-in preset (quickstart, thickness)."""
    if spec is None:
        spec = "quickstart"
    path = Path(spec)
    if path.is_file():
        return path
    preset = PRESETS_DIR / f"{spec}.toml"
    if preset.is_file():
        return preset
    names = ", ".join(p.stem for p in sorted(PRESETS_DIR.glob("*.toml")))
    raise RobustMnistError(f"experiment {spec!r} not found; pass a .toml file or one of: {names}")


def load_experiment(path: Path, output: Path | None = None) -> Experiment:
    """Parse and validate an experiment file (see module doc)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as err:
        raise RobustMnistError(f"{path}: cannot read ({err.strerror})") from err
    except tomllib.TOMLDecodeError as err:
        raise RobustMnistError(f"{path}: not valid TOML ({err})") from err
    for key, value in raw.items():
        if key not in _TOP_KEYS:
            raise _fail(path, key, f"unknown key; known keys: {', '.join(_TOP_KEYS)}")
        _check_type(path, key, value, *_TOP_KEYS[key])
    name = raw.get("name", path.stem)
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise _fail(path, "name", f"expected {_TOP_KEYS['name'][1]}, got {name!r}")
    seeds = raw.get("seeds", [0])
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise _fail(path, "seeds", f"expected a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise _fail(path, "seeds", f"duplicate seeds in {seeds!r}")
    for key in ("epochs", "batch_size"):
        if key in raw and raw[key] < 1:
            raise _fail(path, key, f"must be >= 1, got {raw[key]}")
    if "lr" in raw and not raw["lr"] > 0:
        raise _fail(path, "lr", f"must be > 0, got {raw['lr']}")
    shared = {k: raw[k] for k in ("epochs", "batch_size", "lr", "device", "model") if k in raw}
    try:
        train = TrainConfig(**shared).validate()
    except RobustMnistError as err:
        raise RobustMnistError(f"{path}: {err}") from None

    variants = _parse_variants(path, raw.get("variants"))
    families = _parse_sweep(path, raw.get("sweep", {}))
    out_dir = output or Path(raw.get("output", f"results/{name}"))
    # With --out, the report goes with the results (a trial run must not overwrite reports/).
    report = out_dir / "report" if output else Path(raw.get("report", f"reports/{name}"))
    return Experiment(name, path, out_dir, report, train, tuple(seeds), variants, families,
                      raw.get("description", ""))


def _parse_variants(path: Path, raw: Any) -> tuple[Variant, ...]:
    if not raw:
        raise _fail(path, "variants", "need at least one [[variants]] table")
    variants = []
    for i, table in enumerate(raw):
        where = f"variants[{i}]"
        if not isinstance(table, dict):
            raise _fail(path, where, "expected a table")
        unknown = set(table) - {"name", "aug"} - _AUG_KEYS
        if unknown:
            raise _fail(path, f"{where}.{sorted(unknown)[0]}",
                        f"unknown key; known: name, aug, {', '.join(sorted(_AUG_KEYS))}")
        policy = table.get("aug", "none")
        if policy not in POLICIES:
            raise _fail(path, f"{where}.aug", f"unknown policy {policy!r}; choose one of "
                        f"{', '.join(POLICIES)}")
        vname = table.get("name", policy)
        if not isinstance(vname, str) or not vname or "|" in vname or "/" in vname:
            raise _fail(path, f"{where}.name", f"expected a non-empty name, got {vname!r}")
        overrides = {k: v for k, v in table.items() if k in _AUG_KEYS}
        for k, v in overrides.items():
            expected: type | tuple[type, ...] = bool if k == "affine" else (int, float)
            if (k == "affine") != isinstance(v, bool) or not isinstance(v, expected):
                kind = "true/false" if k == "affine" else "a number"
                raise _fail(path, f"{where}.{k}", f"expected {kind}, got {v!r}")
        try:
            aug = AugConfig.from_policy(policy, **overrides)
        except RobustMnistError as err:
            raise _fail(path, where, str(err)) from None
        variants.append(Variant(vname, aug))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise _fail(path, "variants", f"duplicate variant names in {names}")
    return tuple(variants)


def _parse_sweep(path: Path, raw: dict[str, Any]) -> dict[str, list[float]]:
    unknown = set(raw) - {"families", *DEFAULT_LEVELS}
    if unknown:
        raise _fail(path, f"sweep.{sorted(unknown)[0]}", "unknown key; known: families, delta, absolute")
    families = raw.get("families", list(DEFAULT_LEVELS))
    if not isinstance(families, list) or not all(f in DEFAULT_LEVELS for f in families):
        raise _fail(path, "sweep.families", f"expected a list from {list(DEFAULT_LEVELS)}, got {families!r}")
    out = {}
    for family in families:
        levels = raw.get(family, list(DEFAULT_LEVELS[family]))
        if not isinstance(levels, list) or not levels or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in levels):
            raise _fail(path, f"sweep.{family}", f"expected a non-empty list of numbers, got {levels!r}")
        for level in levels:
            try:
                check_level(family, float(level))
            except RobustMnistError as err:
                raise _fail(path, f"sweep.{family}", str(err)) from None
        out[family] = [float(v) for v in levels]
    return out


# --------------------------------------------------------------------------- running

def _train_one(job: tuple[TrainConfig, str, str, str | None, int]) -> tuple[str, float]:
    """Worker: train one run quietly (in its own process when --jobs > 1)."""
    import torch

    from robustmnist.training import train

    config, run_dir, variant, data_dir, threads = job
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    train(config, Path(run_dir), resume=True, data_dir=Path(data_dir) if data_dir else None,
          variant=variant)
    return run_dir, time.perf_counter() - t0


def pending_runs(exp: Experiment) -> tuple[list[tuple[Variant, int, TrainConfig, Path]], int]:
    """(runs still to train, number already complete); errors on a changed config."""
    todo, done = [], 0
    for variant, seed, config, run_dir in exp.runs():
        try:
            state = run_state(run_dir, config)
        except RobustMnistError as err:
            raise RobustMnistError(f"{exp.source}: the file changed since {run_dir} was trained "
                                   f"({err}); use a new output folder (--out) or delete that run") from None
        if state == "complete":
            done += 1
        else:
            todo.append((variant, seed, config, run_dir))
    return todo, done


def train_all(exp: Experiment, jobs: int = 1, data_dir: Path | None = None,
              on_done: Callable[[str, float, int, int], None] = lambda *_: None) -> float:
    """Train what is missing; `on_done(run_dir, seconds, done, total)` after each run."""
    todo, done = pending_runs(exp)
    total = done + len(todo)
    if not todo:
        return 0.0
    t0 = time.perf_counter()
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs)) if jobs > 1 else 0
    work = [(config, str(run_dir), v.name, str(data_dir) if data_dir else None, threads)
            for v, _, config, run_dir in todo]
    if jobs <= 1:
        for job in work:
            run_dir, seconds = _train_one(job)
            done += 1
            on_done(run_dir, seconds, done, total)
    else:
        ctx = multiprocessing.get_context("spawn")  # fork + OpenMP threads can deadlock
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_train_one, job) for job in work}
            while futures:
                finished, futures = wait(futures, return_when=FIRST_COMPLETED)
                for f in finished:
                    run_dir, seconds = f.result()
                    done += 1
                    on_done(run_dir, seconds, done, total)
    return time.perf_counter() - t0


def sweep_is_current(exp: Experiment, sweep_dir: Path) -> bool:
    """True when sweep_dir holds a complete sweep of exactly these checkpoints and levels."""
    meta_path = sweep_dir / "sweep.json"
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    wanted = [str(run_dir / "checkpoint.pt") for *_, run_dir in exp.runs()]
    stamps = {p: os.path.getmtime(p) for p in wanted if os.path.exists(p)}
    return (meta.get("complete") is True and meta.get("checkpoints") == wanted
            and meta.get("families") == exp.families
            and meta.get("checkpoint_mtimes") == stamps)


def record_invocation(exp: Experiment, entry: dict[str, Any]) -> None:
    """Append this `robustmnist run` invocation (what it did, how long) to experiment.json."""
    path = exp.output / "experiment.json"
    history: list[dict[str, Any]] = []
    if path.is_file():
        try:
            history = json.loads(path.read_text()).get("invocations", [])
        except (OSError, json.JSONDecodeError):
            history = []
    artifacts.write_json(path, {"experiment": exp.to_dict(), "invocations": [*history, entry]})
