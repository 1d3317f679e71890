"""Experiments as data: a TOML file -> variants x seeds -> trained runs -> sweep -> report.

A file (``experiments/quickstart.toml``) mirrors the configuration dataclasses: top-level
``name``, ``description``, ``output``, ``report`` and ``seeds``; a ``[train]`` table holding
`TrainConfig` fields; a ``[sweep]`` table (``families`` and a level list per family); and one
``[[variants]]`` table per variant: a ``name`` plus `AugConfig` fields (``policy`` first) and
any `TrainConfig` field but ``seed`` and ``device`` (``lr_schedule = "cosine"``, say), which
overrides ``[train]`` for that variant's runs.
`load_experiment` rejects unknown keys, wrong types and impossible values with the file, key
and reason; relative paths resolve against the file's folder (``~`` expanded).
`run_experiment` trains every (variant, seed) that is not complete (resuming unfinished
ones), refuses to mix runs whose saved config differs from the file, evaluates all
checkpoints on the sweep (skipped when an up-to-date complete sweep exists) and writes the
report. *What* to run is decided here; *where* is an executor's job (``executors.py``).
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from robustmnist.executors import Executor

from robustmnist import RobustMnistError, artifacts
from robustmnist.config import MAX_SEED, AugConfig, TrainConfig, check_value, from_table
from robustmnist.layout import ExperimentDir, RunDir
from robustmnist.perturb import DEFAULT_LEVELS, check_level

PRESETS_DIR = Path(__file__).parent / "presets"
MAX_SEEDS = 100            # seeds per experiment
MAX_RUNS = 1000            # variants x seeds
MAX_LEVELS = 50            # levels per sweep family
_TOP_KEYS = {"name": str, "description": str, "output": str, "report": str, "seeds": list,
             "train": dict, "sweep": dict, "variants": list, "compare": list}


#: TrainConfig fields a variant may override: all but the seed (from `seeds`), the device (it
#: picks hardware for every run and the sweep, not a result) and aug (the variant's own fields).
VARIANT_TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name not in ("aug", "seed", "device"))


@dataclass(frozen=True)
class Variant:
    name: str
    aug: AugConfig
    train: tuple[tuple[str, Any], ...] = ()   # (TrainConfig field, value) overriding [train]


@dataclass(frozen=True)
class Run:
    """One (variant, seed) of an experiment: its full config and its folder."""

    variant: Variant
    seed: int
    config: TrainConfig
    folder: RunDir


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
    compare: tuple[tuple[str, str], ...] = ()   # variant pairs the report compares level by level

    @property
    def layout(self) -> ExperimentDir:
        return ExperimentDir(self.output)

    def runs(self) -> list[Run]:
        """Every (variant, seed) with its config and folder, seed-major (baselines early)."""
        return [Run(v, seed, TrainConfig(**{**_shared(self.train), **dict(v.train), "seed": seed,
                                            "aug": v.aug}),
                    self.layout.run(v.name, seed))
                for seed in self.seeds for v in self.variants]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "source": str(self.source),
                "output": str(self.output),
                "report": str(self.report), "seeds": list(self.seeds),
                "train": _shared(self.train), "families": self.families,
                "variants": [{"name": v.name, "aug": v.aug.__dict__, "train": dict(v.train)}
                             for v in self.variants],
                "compare": [list(pair) for pair in self.compare]}


def description_in(source: Any) -> str:
    """The description in an experiment file ("" when unreadable): for run records written
    before experiment.json kept it."""
    try:
        with open(str(source), "rb") as f:
            return str(tomllib.load(f).get("description", ""))
    except (OSError, ValueError, TypeError):
        return ""


def _shared(config: TrainConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in fields(config) if f.name not in ("aug", "seed")}


def _fail(path: Path, key: str, reason: str) -> RobustMnistError:
    return RobustMnistError(f"{path}: key '{key}': {reason}")


def _keyed(path: Path, err: RobustMnistError) -> RobustMnistError:
    """'{file}: key '{key}': reason' from a config error 'key: reason'."""
    key, _, reason = str(err).partition(": ")
    return _fail(path, key, reason)


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
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise RobustMnistError(f"{path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise RobustMnistError(f"{path}: not UTF-8 text; save it as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as err:
        raise RobustMnistError(f"{path}: not valid TOML ({err})") from None
    for key, value in raw.items():
        if key not in _TOP_KEYS:
            moved = key in {f.name for f in fields(TrainConfig)}
            raise _fail(path, key, f"unknown key; known keys: {', '.join(_TOP_KEYS)}"
                        + ("; training settings go in [train]" if moved else ""))
        try:
            check_value(key, _TOP_KEYS[key], value, {})
        except RobustMnistError as err:
            raise _keyed(path, err) from None
    name = raw.get("name", path.stem)
    if not name or len(name) > 100 or not all(c.isalnum() or c in "-_" for c in name):
        raise _fail(path, "name", f"expected up to 100 letters, digits, '-' or '_', got {name!r}")
    seeds = _parse_seeds(path, raw.get("seeds", [0]))
    train = raw.get("train", {})
    for key in ("seed", "aug"):
        if key in train:
            raise _fail(path, f"train.{key}", "set seeds at the top level and augmentation per "
                        "[[variants]]")
    try:
        shared = from_table(TrainConfig, train, "train.")
    except RobustMnistError as err:
        raise _keyed(path, err) from None
    variants = _parse_variants(path, raw.get("variants"))
    if len(variants) * len(seeds) > MAX_RUNS:
        raise _fail(path, "variants", f"{len(variants)} variants x {len(seeds)} seeds is more "
                    f"than {MAX_RUNS} runs; split the study")
    families = _parse_sweep(path, raw.get("sweep", {}))
    compare = _parse_compare(path, raw.get("compare", []), [v.name for v in variants])
    here = path.resolve().parent if path.resolve().parent == PRESETS_DIR.resolve() else path.parent
    out_dir = output or _resolve(here, raw.get("output", f"results/{name}"))
    # With --out, the report goes with the results (a trial run must not overwrite reports/).
    report = out_dir / "report" if output else _resolve(here, raw.get("report", f"reports/{name}"))
    return Experiment(name, path, out_dir, report, shared, seeds, variants, families,
                      raw.get("description", ""), compare)


def _resolve(base: Path, spec: str) -> Path:
    """A path from an experiment file: ``~`` expanded, relative to the file's folder (a
    built-in preset's paths are relative to the current folder)."""
    path = Path(spec).expanduser()
    if path.is_absolute() or base.resolve() == PRESETS_DIR.resolve():
        return path
    return Path(os.path.normpath(base / path))


def _parse_seeds(path: Path, seeds: list[Any]) -> tuple[int, ...]:
    if not seeds or len(seeds) > MAX_SEEDS or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds):
        raise _fail(path, "seeds", f"expected 1 to {MAX_SEEDS} integers in [0, {MAX_SEED}], "
                    f"got {str(seeds)[:200]}")
    if len(set(seeds)) != len(seeds):
        raise _fail(path, "seeds", f"duplicate seeds in {str(seeds)[:200]}")
    return tuple(seeds)


def _parse_variants(path: Path, raw: Any) -> tuple[Variant, ...]:
    if not raw:
        raise _fail(path, "variants", "need at least one [[variants]] table")
    variants = []
    for i, table in enumerate(raw):
        where = f"variants[{i}]"
        if not isinstance(table, dict):
            raise _fail(path, where, "expected a table")
        table = dict(table)
        policy = table.pop("policy", "none")
        if not isinstance(policy, str):  # before the name, which defaults to it
            raise _fail(path, f"{where}.policy", f"expected a policy name (a string), got {policy!r}")
        vname = table.pop("name", policy)
        if (not isinstance(vname, str) or not 0 < len(vname) <= 100 or vname.startswith(".")
                or not all(c.isalnum() or c in "-_+." for c in vname)):
            raise _fail(path, f"{where}.name", "expected up to 100 letters, digits, '-', '_', '+' "
                        f"or '.', got {vname!r}")
        for key, reason in (("seed", "seeds are set at the top level (seeds = [...])"),
                            ("device", "the device is set once, in [train]")):
            if key in table:
                raise _fail(path, f"{where}.{key}", reason)
        train = {k: table.pop(k) for k in VARIANT_TRAIN_KEYS if k in table}
        try:
            checked = from_table(TrainConfig, train)  # each value checked like [train]'s
        except RobustMnistError as err:
            key, _, reason = str(err).partition(": ")
            raise _fail(path, f"{where}.{key}", reason) from None
        train = {k: getattr(checked, k) for k in train}  # converted as [train]'s (1 -> 1.0)
        try:
            aug = AugConfig.from_policy(check_value("policy", str, policy, {}), **table)
        except RobustMnistError as err:
            if str(err).startswith("unknown augmentation"):
                raise _fail(path, f"{where}.policy", str(err)) from None
            key, _, reason = str(err).partition(": ")
            if reason.startswith("unknown key"):
                reason += f" (or a [train] field: {', '.join(VARIANT_TRAIN_KEYS)})"
            raise _fail(path, f"{where}.{key}", reason) from None
        variants.append(Variant(vname, aug, tuple(sorted(train.items()))))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise _fail(path, "variants", f"duplicate variant names in {names}")
    return tuple(variants)


def _parse_compare(path: Path, raw: list[Any], names: list[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for i, pair in enumerate(raw):
        if (not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(v, str) for v in pair)
                or pair[0] == pair[1]):
            raise _fail(path, f"compare[{i}]", f"expected two different variant names, got {pair!r}")
        if missing := [v for v in pair if v not in names]:
            raise _fail(path, f"compare[{i}]", f"no variant named {missing[0]!r}; variants: "
                        f"{', '.join(names)}")
        if (pair[0], pair[1]) in pairs or (pair[1], pair[0]) in pairs:
            raise _fail(path, f"compare[{i}]", f"the pair {pair!r} is listed twice; list it once")
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def _parse_sweep(path: Path, raw: dict[str, Any]) -> dict[str, list[float]]:
    unknown = set(raw) - {"families", *DEFAULT_LEVELS}
    if unknown:
        raise _fail(path, f"sweep.{sorted(unknown)[0]}",
                    f"unknown key; known: families, {', '.join(DEFAULT_LEVELS)}")
    families = raw.get("families", list(DEFAULT_LEVELS))
    if (not isinstance(families, list) or not all(f in DEFAULT_LEVELS for f in families)
            or len(set(families)) != len(families)):
        raise _fail(path, "sweep.families", f"expected distinct names from {list(DEFAULT_LEVELS)}, "
                    f"got {str(families)[:200]}")
    if unused := [f for f in DEFAULT_LEVELS if f in raw and f not in families]:
        raise _fail(path, f"sweep.{unused[0]}", f"levels for a family that sweep.families does not "
                    f"list ({families}); add '{unused[0]}' to families or remove these levels")
    out = {}
    for family in families:
        levels = raw.get(family, list(DEFAULT_LEVELS[family]))
        if not isinstance(levels, list) or not 0 < len(levels) <= MAX_LEVELS or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in levels):
            raise _fail(path, f"sweep.{family}", f"expected 1 to {MAX_LEVELS} numbers, "
                        f"got {str(levels)[:200]}")
        if len(set(levels)) != len(levels):
            raise _fail(path, f"sweep.{family}", f"duplicate levels in {levels!r}")
        for level in levels:
            try:
                check_level(family, float(level))
            except RobustMnistError as err:
                raise _fail(path, f"sweep.{family}", str(err)) from None
        out[family] = [float(v) for v in levels]
    return out


# --------------------------------------------------------------------------- running

def pending_runs(exp: Experiment) -> tuple[list[Run], int]:
    """(runs still to train, number already complete); errors on a changed config."""
    from robustmnist.training import SettingsMismatch, run_state

    todo, done = [], 0
    for run in exp.runs():
        try:
            state = run_state(run.folder.root, run.config)
        except SettingsMismatch as err:
            raise RobustMnistError(f"{exp.source}: variant {run.variant.name!r} changed since "
                                   f"{run.folder.root} was trained ({err.what}); restore it in the "
                                   "file, use a new output folder (--out) or delete that run") from None
        except RobustMnistError as err:
            raise RobustMnistError(f"{exp.source}: the file changed since {run.folder.root} was "
                                   f"trained ({err}); use a new output folder (--out) or delete "
                                   "that run") from None
        if state == "complete":
            done += 1
        else:
            todo.append(run)
    return todo, done


def sweep_is_current(exp: Experiment) -> bool:
    """True when the experiment's sweep folder holds a complete sweep of exactly these
    checkpoints and levels."""
    meta_path = exp.layout.sweep.meta
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict):
        return False
    wanted = [str(run.folder.checkpoint) for run in exp.runs()]
    stamps = {p: os.path.getmtime(p) for p in wanted if os.path.exists(p)}
    return (meta.get("complete") is True and meta.get("checkpoints") == wanted
            and meta.get("families") == exp.families
            and meta.get("checkpoint_mtimes") == stamps)


def record_invocation(exp: Experiment, entry: dict[str, Any]) -> None:
    """Append this `robustmnist run` invocation (what it did, how long) to experiment.json."""
    path = exp.layout.record
    history: list[dict[str, Any]] = []
    try:
        if path.is_file():
            history = json.loads(path.read_text()).get("invocations", [])
    except (OSError, ValueError, AttributeError):
        history = []
    artifacts.write_json(path, {"experiment": exp.to_dict(), "invocations": [*history, entry]})


@dataclass(frozen=True)
class StudyOutcome:
    total: int             # runs in the experiment
    trained: int           # runs trained (or resumed) by this call
    swept: bool            # the sweep was (re)computed
    report: Path
    seconds: float


def run_experiment(exp: Experiment, executor: Executor | None = None,
                   data_dir: Path | None = None, log: Callable[[str], None] = lambda _m: None,
                   ) -> StudyOutcome:
    """Train what is missing, sweep if stale, write the report (see module doc)."""
    from robustmnist.data import fetch
    from robustmnist.executors import LocalExecutor
    from robustmnist.models import resolve_device
    from robustmnist.reports import write_report

    executor = executor or LocalExecutor()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    artifacts.claim_dir(exp.output, "experiment output")
    artifacts.claim_dir(exp.report, "report folder")  # refused now, not after hours of training
    with artifacts.folder_lock(exp.output, "experiment output"):
        todo, done = pending_runs(exp)
        fetch(data_dir, log=log)  # once, visibly, before any training
        log(f"experiment {exp.name}: {done + len(todo)} runs ({done} complete, {len(todo)} to "
            f"train) -> {exp.output}")
        progress = _StudyProgress(done, done + len(todo), log)
        train_seconds = executor.train(todo, data_dir, progress.run_done) if todo else 0.0
        sweep_seconds, swept = 0.0, not sweep_is_current(exp)
        if swept:
            t1 = time.perf_counter()
            executor.sweep([run.folder.checkpoint for run in exp.runs()], exp.families,
                           resolve_device(exp.train.device), data_dir, exp.layout.sweep.root, log)
            sweep_seconds = time.perf_counter() - t1
        else:
            log(f"sweep in {exp.layout.sweep.root} is up to date")
        record_invocation(exp, {"started": started, "trained_runs": len(todo),
                                "executor": executor.describe(), "train_seconds": train_seconds,
                                "sweep_seconds": sweep_seconds,
                                "wall_seconds": time.perf_counter() - t0})
        report = write_report([exp.layout.sweep.root], exp.report, title=exp.name,
                              question=exp.description, compare=exp.compare)
    return StudyOutcome(done + len(todo), len(todo), swept, report, time.perf_counter() - t0)


class _StudyProgress:
    """Runs done / total and an ETA, logged after each finished training."""

    def __init__(self, done: int, total: int, log: Callable[[str], None]) -> None:
        self.start_done, self.done, self.total, self.log = done, done, total, log
        self.t0 = time.perf_counter()

    def run_done(self, run_dir: Path, seconds: float) -> None:
        self.done += 1
        trained = self.done - self.start_done
        eta = (time.perf_counter() - self.t0) / trained * (self.total - self.done)
        self.log(f"[{self.done}/{self.total}] {run_dir} done in {seconds:.0f}s; "
                 f"ETA {eta / 60:.1f} min")
