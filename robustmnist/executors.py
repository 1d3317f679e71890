"""Where an experiment's work runs. `experiments.run_experiment` decides *what* to run (the
pending trainings, a stale sweep); an executor only decides *where*.

`LocalExecutor` trains in this process (``jobs=1``) or in a pool of spawned processes, CPU
threads split between them; `ray_executor.RayExecutor` runs tasks on a Ray cluster (an
optional extra, imported only when asked for). Every executor writes the same files (run
folders, sweep folder).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from robustmnist import RobustMnistError
from robustmnist.allocator import keep_freed_memory

if TYPE_CHECKING:
    from robustmnist.experiments import Run

OnRunDone = Callable[[Path, float], None]


class Executor(Protocol):
    def describe(self) -> str: ...

    def train(self, runs: Sequence[Run], data_dir: Path | None, on_done: OnRunDone) -> float:
        """Train `runs` (resuming unfinished ones); `on_done(run_dir, seconds)` after each."""
        ...

    def sweep(self, checkpoints: Sequence[Path], families: dict[str, list[float]],
              device: torch.device, data_dir: Path | None, out_dir: Path,
              log: Callable[[str], None]) -> None:
        """Evaluate `checkpoints` on every level and write the sweep folder `out_dir`."""
        ...


def train_one(run: Run, data_dir: Path | None, threads: int = 0) -> float:
    """Train one run quietly (resuming it); its wall seconds. Used by every executor."""
    from robustmnist.training import train

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    train(run.config, run.folder.root, resume=True, data_dir=data_dir, variant=run.variant.name)
    return time.perf_counter() - t0


EXECUTORS = ("local", "ray")


def make_executor(kind: str, jobs: int = 1, address: str | None = None,
                  cpus_per_run: float | None = None, gpus_per_run: float | None = None,
                  log: Callable[[str], None] = lambda _m: None) -> Executor:
    """The executor the command line asks for; options that do not apply to it are refused.
    A Ray executor connects at once, so that a wrong address fails before any work."""
    if kind == "local":
        if address is not None or cpus_per_run is not None or gpus_per_run is not None:
            raise RobustMnistError("--address, --cpus-per-run and --gpus-per-run apply to "
                                   "--executor ray; locally, --jobs sets the parallel trainings")
        return LocalExecutor(jobs)
    if kind == "ray":
        if jobs != 1:
            raise RobustMnistError("--jobs applies to --executor local; on Ray, tasks run as "
                                   "the cluster's CPUs and GPUs allow (--cpus-per-run, --gpus-per-run)")
        from robustmnist.ray_executor import RayExecutor

        ray_executor = RayExecutor(address, 1.0 if cpus_per_run is None else cpus_per_run,
                                   gpus_per_run or 0.0, log=log)
        ray_executor.connect()
        return ray_executor
    raise RobustMnistError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells, else the count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def terminate_workers(pool: ProcessPoolExecutor) -> None:
    """Stop a pool's worker processes now (Ctrl-C, SIGTERM, a failure), not after their tasks."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


def exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    """Pool-worker initializer: stop when the driver is gone (killed with SIGKILL/SIGTERM, it
    cannot tell its workers), instead of training on as an orphan."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def pool_worker_init(parent: int) -> None:
    """A spawned training worker's initializer: stop with the driver; malloc as the CLI sets it
    (a spawned process starts with glibc's defaults)."""
    exit_with_parent(parent)
    # A bad ROBUSTMNIST_MALLOC: the CLI refuses it; a library caller's workers then keep
    # malloc's defaults rather than die.
    with contextlib.suppress(RobustMnistError):
        keep_freed_memory()


class LocalExecutor:
    """This machine: one training at a time in-process, or `jobs` spawned processes."""

    def __init__(self, jobs: int = 1) -> None:
        if not 1 <= jobs <= 256:
            raise RobustMnistError(f"--jobs must be between 1 and 256, got {jobs}")
        self.jobs = jobs

    def describe(self) -> str:
        return f"local --jobs {self.jobs}"

    def train(self, runs: Sequence[Run], data_dir: Path | None, on_done: OnRunDone) -> float:
        t0 = time.perf_counter()
        if self.jobs <= 1:
            for run in runs:
                on_done(run.folder.root, train_one(run, data_dir))
            return time.perf_counter() - t0
        threads = max(1, available_cores() // self.jobs)
        ctx = multiprocessing.get_context("spawn")  # fork + OpenMP threads can deadlock
        pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=ctx,
                                   initializer=pool_worker_init, initargs=(os.getpid(),))
        try:
            futures = {pool.submit(train_one, run, data_dir, threads): run for run in runs}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    on_done(futures[f].folder.root, f.result())
        except BrokenProcessPool as err:
            raise RobustMnistError(
                f"a training worker process died ({err}; killed, or out of memory?); finished "
                "epochs are saved: run the same command again to resume") from None
        except BaseException:
            # Ctrl-C, SIGTERM (a scheduler's stop reaches this process only) or a failed run:
            # stop the workers now instead of waiting for their runs to finish. Their finished
            # epochs are saved; a write cut short leaves a temporary file --resume removes.
            terminate_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return time.perf_counter() - t0

    def sweep(self, checkpoints: Sequence[Path], families: dict[str, list[float]],
              device: torch.device, data_dir: Path | None, out_dir: Path,
              log: Callable[[str], None]) -> None:
        from robustmnist.evaluation import save_sweep, sweep

        save_sweep(sweep(checkpoints, families, device=device, data_dir=data_dir, log=log), out_dir)
