"""`--executor ray`: an experiment's trainings and sweeps as tasks on a Ray cluster.

Workers share nothing with the driver but Ray's object store. MNIST goes there once (the
uint8 arrays the driver loaded and verified); each training task gets its run (config and
name) plus, for an unfinished run, its checkpoint and metrics as bytes, trains in a
temporary folder of its own and streams the run folder's files back as bytes after every
epoch (a Ray generator task); the driver writes them with the same atomic writes and layout
as `LocalExecutor`, so a driver that dies loses at most an epoch per run in flight. A sweep
is one task per checkpoint returning its numbers; the driver builds the perturbed sets (its
own cache), assembles the rows and writes the sweep folder (`evaluation.sweep`, Ray `scores`).

Tasks declare ``num_cpus`` (also their torch threads) and ``num_gpus`` (fractions share a GPU).
Ray re-runs a task whose worker died (``max_retries``); an error of robustmnist itself is not
retried but reported, after the other runs have been saved. Ray is an optional extra: this
module imports it only when a `RayExecutor` is made.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from robustmnist import RobustMnistError, artifacts
from robustmnist.allocator import keep_freed_memory
from robustmnist.executors import OnRunDone
from robustmnist.layout import RunDir

if TYPE_CHECKING:
    from robustmnist.checkpoint import Checkpoint
    from robustmnist.data import MnistSplit
    from robustmnist.evaluation import Scores
    from robustmnist.experiments import Run
    from robustmnist.perturb import PerturbedSet

INSTALL_HINT = 'pip install -e ".[ray]" (or pip install "ray>=2.9")'
DEFAULT_PORT = 6379          # `ray start --head` listens here
CONNECT_TIMEOUT_S = 5.0      # to reach a cluster's head before handing over to ray.init
MnistArrays = tuple[np.ndarray, np.ndarray, dict[str, str]]  # images (N,1,28,28) u8, labels, md5


def require_ray() -> ModuleType:
    """The `ray` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RobustMnistError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}"
                               ) from None
    return ray


def run_files(folder: RunDir) -> tuple[Path, ...]:
    """A run's files in the order the driver writes them: the checkpoint last, since its epoch
    (and ``complete``) says which metrics rows count and whether the run is done."""
    return folder.config, folder.metrics, folder.summary, folder.checkpoint


# --------------------------------------------------------------------------- worker side

@dataclass(frozen=True)
class RunFiles:
    """What a training task streams back: the run folder's files after each epoch, then once
    more when the run is complete (with summary.json)."""

    files: dict[str, bytes]      # file name -> content (config.json, metrics.csv, ...)
    final: bool                  # the run is complete
    seconds: float               # wall seconds of this attempt so far
    worker: str                  # host:pid


def _split(arrays: MnistArrays) -> MnistSplit:
    from robustmnist.data import MnistSplit

    images, labels, md5 = arrays  # read-only views of the object store: copy once
    return MnistSplit(torch.from_numpy(images.copy()), torch.from_numpy(labels.copy()), md5)


def train_task(run: Run, files: dict[str, bytes], mnist: dict[str, MnistArrays],
               threads: int) -> Iterator[RunFiles]:
    """Train (or resume) `run` in a temporary folder of this worker, yielding its files after
    every epoch (a Ray generator task: the driver saves each epoch as it comes)."""
    from robustmnist.training import Progress, train

    snapshots: queue.Queue[RunFiles | BaseException] = queue.Queue()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="robustmnist-") as tmp:
        folder = RunDir(Path(tmp) / run.folder.root.name)  # the same name: it is in the checkpoint
        artifacts.claim_dir(folder.root, "run folder")
        for name, data in files.items():
            (folder.root / name).write_bytes(data)
        t0 = time.perf_counter()

        def snapshot(final: bool) -> RunFiles:
            return RunFiles({p.name: p.read_bytes() for p in run_files(folder) if p.is_file()},
                            final, time.perf_counter() - t0, worker)

        class Ship(Progress):
            def end(self, row: dict[str, float]) -> None:  # the epoch's files are written
                if row["epoch"] < run.config.epochs:  # the last one goes with summary.json
                    snapshots.put(snapshot(final=False))

        def work() -> None:  # the trainer calls back; a thread lets this generator yield
            try:
                keep_freed_memory()  # Ray's worker processes start with malloc's defaults
                torch.set_num_threads(threads)
                train(run.config, folder.root, resume=True, train_split=_split(mnist["train"]),
                      test_split=_split(mnist["test"]), progress=Ship(), variant=run.variant.name)
                snapshots.put(snapshot(final=True))
            except BaseException as err:
                snapshots.put(err)

        trainer = threading.Thread(target=work, name="train", daemon=True)
        trainer.start()
        while not isinstance(item := snapshots.get(), BaseException):
            yield item
            if item.final:
                break
        trainer.join()
        if isinstance(item, BaseException):
            raise item


def score_task(ckpt: Checkpoint, sets: tuple[list[PerturbedSet], np.ndarray], threads: int,
               device: str) -> Scores:
    """One checkpoint on every perturbed set (`evaluation.score`) on this worker."""
    from robustmnist.evaluation import score

    keep_freed_memory()
    torch.set_num_threads(threads)
    psets, labels = sets
    with warnings.catch_warnings():  # the sets are read-only object-store views; never written
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return score(ckpt, psets, labels, torch.device(device))


# --------------------------------------------------------------------------- driver side

def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in seconds, with one line, when nothing listens at `address` (``ray.init`` would
    retry an unreachable head for minutes). ``auto``/``local`` are Ray's to resolve."""
    if address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    default = 10001 if address.startswith("ray://") else DEFAULT_PORT
    try:
        with socket.create_connection((host.strip("[]"), int(port or default)), timeout=timeout_s):
            return
    except ValueError:
        reason = "not HOST:PORT"
    except OSError as err:
        reason = err.strerror or type(err).__name__
    raise RobustMnistError(f"cannot reach the Ray cluster at --address {address} ({reason}); start "
                           "it with `ray start --head` on that machine and pass its HOST:PORT "
                           f"(default port {DEFAULT_PORT}), or --address auto on a cluster node")


class RayExecutor:
    """Trainings and sweeps as Ray tasks; the driver (this process) writes every file."""

    def __init__(self, address: str | None = None, cpus_per_run: float = 1.0,
                 gpus_per_run: float = 0.0, max_retries: int = 3,
                 runtime_env: dict[str, Any] | None = None,
                 log: Callable[[str], None] = lambda _m: None) -> None:
        if not 0 < cpus_per_run <= 1024:
            raise RobustMnistError(f"--cpus-per-run must be in (0, 1024], got {cpus_per_run:g}")
        if not 0 <= gpus_per_run <= 64:
            raise RobustMnistError(f"--gpus-per-run must be in [0, 64], got {gpus_per_run:g}")
        if gpus_per_run > 1 and gpus_per_run % 1:
            raise RobustMnistError(f"--gpus-per-run {gpus_per_run:g}: above 1, Ray needs a whole "
                                   "number of GPUs")
        self.ray = require_ray()
        self.address = address          # None: a Ray instance of our own on this machine
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = gpus_per_run
        self.max_retries = max_retries  # re-runs of a task whose worker died
        self.threads = max(1, int(cpus_per_run))  # torch threads in each task
        self.runtime_env = runtime_env  # Ray's per-task environment (env_vars, pip, ...), if any
        self.log = log
        self.workers: dict[Path, str] = {}  # run folder -> host:pid that trained it
        self._checked = False

    def describe(self) -> str:
        return (f"ray --address {self.address or 'local'} --cpus-per-run {self.cpus_per_run:g} "
                f"--gpus-per-run {self.gpus_per_run:g}")

    # ----------------------------------------------------------------- cluster

    def connect(self) -> Any:
        """Join (or start) the cluster now, so that a wrong address fails before any work. A
        process already connected to Ray (``ray.init`` done) keeps its connection."""
        ray = self.ray
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS") or "local"
            check_reachable(address)
            own = address == "local"
            try:
                ray.init(address=address, logging_level=logging.WARNING,
                         **({"include_dashboard": False} if own else {}))
            except ConnectionError as err:
                raise RobustMnistError(f"cannot connect to a Ray cluster at --address {address} "
                                       f"({str(err).splitlines()[0]}); start one with `ray start "
                                       "--head` or leave out --address to use this machine") from None
        if not self._checked:
            self._check_fits(ray)
            self._checked = True
        return ray

    def _check_fits(self, ray: Any) -> None:
        """A task no node can hold would wait forever: refuse it now, in one line."""
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if any(r.get("CPU", 0) >= self.cpus_per_run and r.get("GPU", 0) >= self.gpus_per_run
               for r in nodes):
            cpus, gpus = (sum(r.get(k, 0) for r in nodes) for k in ("CPU", "GPU"))
            self.log(f"ray: {len(nodes)} node(s), {cpus:g} CPUs, {gpus:g} GPUs; each task takes "
                     f"{self.cpus_per_run:g} CPUs and {self.gpus_per_run:g} GPUs")
            return
        largest = ", ".join(f"{r.get('CPU', 0):g} CPUs/{r.get('GPU', 0):g} GPUs" for r in nodes)
        raise RobustMnistError(f"no node of the Ray cluster has {self.cpus_per_run:g} CPUs and "
                               f"{self.gpus_per_run:g} GPUs free for a task (nodes: {largest}); "
                               "lower --cpus-per-run/--gpus-per-run")

    def _options(self, name: str) -> dict[str, Any]:
        options = {"num_cpus": self.cpus_per_run, "num_gpus": self.gpus_per_run,
                   "max_retries": self.max_retries, "retry_exceptions": False, "name": name}
        return {**options, "runtime_env": self.runtime_env} if self.runtime_env else options

    def _explain(self, err: Exception, what: str) -> RobustMnistError:
        """One line for a failed task: robustmnist's own message, or what Ray says and why."""
        ray = self.ray
        text = str(err)
        if missing := re.search(r"No module named '(robustmnist[\w.]*)'", text):
            return RobustMnistError(f"{what}: a Ray worker cannot import {missing[1]}; install "
                                    "robustmnist, the version of this machine, on every node of "
                                    'the cluster: pip install -e ".[ray]" in a copy of this source')
        cause = getattr(err, "cause", None)
        if isinstance(cause, RobustMnistError):
            return RobustMnistError(f"{what}: {cause}")
        if isinstance(err, ray.exceptions.WorkerCrashedError | ray.exceptions.NodeDiedError):
            tries = self.max_retries + 1
            return RobustMnistError(f"{what}: its Ray worker died ({type(err).__name__}), "
                                    f"{tries} attempt{'s' if tries > 1 else ''} in all; see `ray "
                                    "logs` on the node (out of memory?)")
        first = next((ln for ln in text.splitlines() if ln.strip()), type(err).__name__)
        return RobustMnistError(f"{what} failed on a Ray worker: {type(cause or err).__name__}: "
                                f"{first[:300]}")

    # ----------------------------------------------------------------- the Executor protocol

    def train(self, runs: Sequence[Run], data_dir: Path | None, on_done: OnRunDone) -> float:
        """Every run as one task; its files written here after each epoch, `on_done` at its end."""
        from robustmnist.data import load_split

        t0 = time.perf_counter()
        for run in runs:
            self._check_run(run)
        ray = self.connect()
        splits = {s: load_split(s, data_dir) for s in ("train", "test")}  # verified here, once
        mnist = ray.put({s: (m.images.numpy(), m.labels.numpy(), m.md5) for s, m in splits.items()})
        remote = ray.remote(train_task)
        streams = {remote.options(**self._options(f"train:{run.folder.root.name}")).remote(
            run, _unfinished(run.folder), mnist, self.threads): run for run in runs}
        errors: list[RobustMnistError] = []
        try:
            while streams:
                ready, _ = ray.wait(list(streams), num_returns=1)
                run = streams[ready[0]]
                try:
                    part: RunFiles = ray.get(next(ready[0]))
                except StopIteration:
                    del streams[ready[0]]
                    continue
                except Exception as err:  # the others go on; the first error is raised at the end
                    del streams[ready[0]]
                    errors.append(self._explain(err, f"training {run.folder.root}"))
                    continue
                _write_run(run.folder, part.files)  # every epoch: a driver crash loses little
                if part.final:
                    self.workers[run.folder.root] = part.worker
                    on_done(run.folder.root, part.seconds)
        except BaseException:  # Ctrl-C: stop the cluster's work for this study too
            for stream in streams:
                ray.cancel(stream, force=True)
            raise
        if errors:
            more = f" (and {len(errors) - 1} more failed runs)" if len(errors) > 1 else ""
            raise RobustMnistError(f"{errors[0]}{more}")
        return time.perf_counter() - t0

    def _check_run(self, run: Run) -> None:
        """Refuse here, in Ray's terms, what the worker would refuse after its start."""
        from robustmnist.checkpoint import load_checkpoint

        if run.config.device.startswith("cuda") and not self.gpus_per_run:
            raise RobustMnistError(f"{run.folder.root}: device {run.config.device!r} needs a GPU "
                                   "per task; pass --gpus-per-run (e.g. 0.25 to share one)")
        if self.gpus_per_run or not run.folder.checkpoint.is_file():
            return
        threads = load_checkpoint(run.folder.checkpoint).meta.get("machine", {}).get("torch_threads")
        if threads and threads != self.threads:
            raise RobustMnistError(f"{run.folder.root} was trained with {threads} CPU threads; "
                                   f"resume it with --cpus-per-run {threads} (another thread "
                                   "count changes float sums, so the result would differ from "
                                   "an uninterrupted run)")

    def sweep(self, checkpoints: Sequence[Path], families: dict[str, list[float]],
              device: torch.device, data_dir: Path | None, out_dir: Path,
              log: Callable[[str], None]) -> None:
        """One task per checkpoint on the sets this driver built; the driver writes the folder.
        The tasks run on CUDA when they hold a GPU (--gpus-per-run), else on the CPU."""
        from robustmnist.evaluation import save_sweep, sweep

        ray = self.connect()
        task_device = "cuda" if self.gpus_per_run else "cpu"

        def scores(loaded: Sequence[Checkpoint], sets: Sequence[PerturbedSet],
                   labels: np.ndarray, _device: torch.device) -> list[Scores]:
            shared = ray.put((list(sets), labels))  # once for every task
            remote = ray.remote(score_task)
            refs = [remote.options(**self._options(f"sweep:{c.run}")).remote(
                replace(c, optimizer=None), shared, self.threads, task_device) for c in loaded]
            out = []
            for ckpt, ref in zip(loaded, refs, strict=True):
                try:
                    out.append(ray.get(ref))
                except Exception as err:
                    for other in refs:
                        ray.cancel(other, force=True)
                    raise self._explain(err, f"sweep of {ckpt.path}") from None
            return out

        result = sweep(checkpoints, families, device=torch.device(task_device), data_dir=data_dir,
                       log=log, scores=scores)
        save_sweep(result, out_dir)


def _unfinished(folder: RunDir) -> dict[str, bytes]:
    """An unfinished run's checkpoint and metrics, shipped so that the worker resumes it."""
    if not folder.checkpoint.is_file():
        return {}
    return {p.name: p.read_bytes() for p in (folder.checkpoint, folder.metrics) if p.is_file()}


def _write_run(folder: RunDir, files: dict[str, bytes]) -> None:
    """A worker's run files into `folder`, atomically, the checkpoint last (`run_files`)."""
    artifacts.claim_dir(folder.root, "run folder")
    with artifacts.folder_lock(folder.root, "run folder"):
        for path in run_files(folder):
            if path.name in files:
                artifacts.write_bytes(path, files[path.name])
