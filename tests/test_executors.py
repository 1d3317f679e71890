"""Executors: where runs execute. The Ray tests start one real local Ray instance (2 CPUs) for
the module, train a tiny study on synthetic digits and compare every number with the local
executor; faults are made by killing real processes (a Ray worker, a `robustmnist run` driver)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_idx_files
from typer.testing import CliRunner

from robustmnist import RobustMnistError, artifacts, data
from robustmnist.checkpoint import load_checkpoint
from robustmnist.cli import app
from robustmnist.executors import LocalExecutor, make_executor
from robustmnist.experiments import Experiment, load_experiment, run_experiment
from robustmnist.layout import RunDir
from robustmnist.ray_executor import check_reachable


def _have_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


HAVE_RAY = _have_ray()
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason='ray is not installed (pip install -e ".[ray]")')

EPOCHS = 6  # long enough (~2 s a run) to kill a worker in the middle of one
STUDY = f"""
name = "tiny"
seeds = [0, 1]
[train]
epochs = {EPOCHS}
batch_size = 128
device = "cpu"
[sweep]
families = ["delta"]
delta = [-1.0, 1.0]
[[variants]]
name = "none"
policy = "none"
[[variants]]
name = "thickness"
policy = "thickness"
"""
TIMING = ["epoch_seconds", "images_per_second"]


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory, tiny_arrays):
    """A module-wide data dir of synthetic IDX files, with the MD5 table pointed at them
    (`tiny_data_dir` for a whole module: the Ray tests share one reference study)."""
    root = tmp_path_factory.mktemp("data")
    md5s = write_idx_files(root, tiny_arrays)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "MD5", md5s)
        mp.setenv(data.DATA_DIR_ENV, str(root))
        mp.setenv(data.SOURCES_ENV, "cache")
        yield root


def study(folder: Path) -> Experiment:
    path = folder / "tiny.toml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(STUDY)
    return load_experiment(path, output=folder / "out")


@pytest.fixture(scope="module")
def one_thread():
    """Local runs use the thread count of the Ray tasks (--cpus-per-run 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_mnist, one_thread) -> Experiment:
    """The study through the local executor, in this process, one thread: what Ray must equal."""
    exp = study(tmp_path_factory.mktemp("local"))
    run_experiment(exp, LocalExecutor(1))
    return exp


@pytest.fixture(scope="module")
def ray_cluster():
    """One real local Ray instance for the module; yields its address for other drivers."""
    if not HAVE_RAY:
        pytest.skip('ray is not installed (pip install -e ".[ray]")')
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def ray_executor(**kw):
    from robustmnist.ray_executor import RayExecutor

    return RayExecutor(**{"cpus_per_run": 1, **kw})


def assert_same_study(a: Experiment, b: Experiment) -> None:
    """Every number of two studies' runs and sweeps is bit-identical (timings aside)."""
    for run_a, run_b in zip(a.runs(), b.runs(), strict=True):
        fa, fb = run_a.folder, run_b.folder
        pd.testing.assert_frame_equal(pd.read_csv(fa.metrics).drop(columns=TIMING),
                                      pd.read_csv(fb.metrics).drop(columns=TIMING), check_exact=True)
        ca, cb = load_checkpoint(fa.checkpoint), load_checkpoint(fb.checkpoint)
        assert ca.complete and cb.complete and ca.epoch == cb.epoch == EPOCHS
        for key, tensor in ca.state_dict.items():
            assert torch.equal(tensor, cb.state_dict[key]), key
        assert json.loads(fa.config.read_text())["config"] == json.loads(fb.config.read_text())["config"]
        assert fb.summary.is_file()
    sa, sb = a.layout.sweep, b.layout.sweep
    pd.testing.assert_frame_equal(pd.read_csv(sa.csv).drop(columns="checkpoint"),
                                  pd.read_csv(sb.csv).drop(columns="checkpoint"), check_exact=True)
    with np.load(sa.predictions) as pa, np.load(sb.predictions) as pb:
        for key in pa.files:
            np.testing.assert_array_equal(pa[key], pb[key])
    assert json.loads(sb.meta.read_text())["complete"] is True


def worker_pids(title: str) -> list[int]:
    """Processes whose title (set by Ray while a task runs) starts with `title`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(title.encode()):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


# --------------------------------------------------------------------------- choosing an executor

@pytest.mark.parametrize(("kind", "kw", "match"), [
    ("local", {"address": "auto"}, "apply to --executor ray"),
    ("local", {"gpus_per_run": 0.5}, "apply to --executor ray"),
    ("ray", {"jobs": 2}, "--jobs applies to --executor local"),
    ("dask", {}, "choose one of local, ray"),
])
def test_misplaced_options_are_one_line(kind, kw, match):
    with pytest.raises(RobustMnistError, match=match):
        make_executor(kind, **kw)


def test_local_is_the_default_with_its_jobs():
    assert make_executor("local", jobs=2).describe() == "local --jobs 2"


def test_ray_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(RobustMnistError, match=r'pip install -e "\.\[ray\]"'):
        make_executor("ray")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("address", "match"), [
    (f"127.0.0.1:{_closed_port()}", "cannot reach the Ray cluster"),
    ("127.0.0.1:notaport", "not HOST:PORT"),
])
def test_unreachable_address_fails_in_seconds(address, match):
    t0 = time.perf_counter()
    with pytest.raises(RobustMnistError, match=match):
        check_reachable(address, timeout_s=2)
    assert time.perf_counter() - t0 < 5


@needs_ray
def test_cli_unreachable_address_is_one_line(tmp_path, monkeypatch, tiny_mnist):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process
    (tmp_path / "tiny.toml").write_text(STUDY)
    result = CliRunner().invoke(app, ["run", str(tmp_path / "tiny.toml"), "--executor", "ray",
                                      "--address", f"127.0.0.1:{_closed_port()}",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "cannot reach the Ray cluster" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # refused before any work


# --------------------------------------------------------------------------- Ray: same files

@needs_ray
def test_ray_study_is_bit_identical_to_local(tmp_path, reference, ray_cluster):
    exp = study(tmp_path)
    progress: list[str] = []
    executor = ray_executor()
    outcome = run_experiment(exp, executor, log=progress.append)
    assert outcome.trained == 4 and outcome.swept and (outcome.report / "README.md").is_file()
    assert_same_study(reference, exp)
    assert any(line.startswith("[4/4]") and "ETA" in line for line in progress)
    # The driver wrote every file; the workers (other processes) only returned bytes.
    assert all(int(w.rsplit(":", 1)[1]) != os.getpid() for w in executor.workers.values())
    assert json.loads(exp.layout.record.read_text())["invocations"][0]["executor"].startswith("ray")


@needs_ray
def test_unfinished_run_is_shipped_and_resumed(tmp_path, reference, ray_cluster):
    from robustmnist.training import Progress, train

    class StopAfter(Progress):
        def end(self, row):
            if row["epoch"] == 2:
                raise KeyboardInterrupt

    exp = study(tmp_path)
    artifacts.claim_dir(exp.output)  # as an interrupted `robustmnist run` leaves it
    run = exp.runs()[1]
    with pytest.raises(KeyboardInterrupt):
        train(run.config, run.folder.root, progress=StopAfter(), variant=run.variant.name)
    partial = pd.read_csv(run.folder.metrics)
    assert len(partial) == 2
    run_experiment(exp, ray_executor())
    assert_same_study(reference, exp)
    # Resumed, not retrained: the two shipped epochs keep their own timings.
    resumed = pd.read_csv(run.folder.metrics)
    pd.testing.assert_frame_equal(resumed.iloc[:2], partial, check_exact=True)


@needs_ray
def test_resume_with_another_thread_count_is_refused_in_rays_terms(tmp_path, tiny_mnist,
                                                                   one_thread, ray_cluster):
    from robustmnist.training import Progress, train

    class StopAfter(Progress):
        def end(self, row):
            raise KeyboardInterrupt

    exp = study(tmp_path)
    run = exp.runs()[0]
    with pytest.raises(KeyboardInterrupt):
        train(run.config, run.folder.root, progress=StopAfter())
    with pytest.raises(RobustMnistError, match="resume it with --cpus-per-run 1"):
        ray_executor(cpus_per_run=2).train([run], None, lambda *_: None)


# --------------------------------------------------------------------------- Ray: faults

@needs_ray
def test_worker_killed_mid_run_is_retried(tmp_path, reference, ray_cluster):
    """SIGKILL the real worker process of a training task while it trains: Ray re-runs the task
    (max_retries) and the study completes with the same numbers."""
    exp = study(tmp_path)
    target = exp.runs()[0].folder
    killed: list[int] = []

    def kill_first_worker() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            if pids := worker_pids(f"ray::train:{target.root.name}"):
                time.sleep(0.3)  # into its epochs
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.02)

    killer = threading.Thread(target=kill_first_worker)
    killer.start()
    executor = ray_executor()
    try:
        run_experiment(exp, executor)
    finally:
        killer.join()
    assert killed, "the training task was never seen running"
    # Killed mid-run: the run's result came from another worker process.
    assert executor.workers[target.root].rsplit(":", 1)[1] != str(killed[0])
    assert_same_study(reference, exp)


def metrics_rows(folder: RunDir) -> int:
    try:
        return len(folder.metrics.read_text().splitlines()) - 1
    except OSError:
        return 0


@needs_ray
def test_driver_killed_mid_study_then_rerun_continues(tmp_path, reference, ray_cluster, tiny_mnist):
    """SIGKILL a `robustmnist run --executor ray` driver once one run is complete and another
    has saved some epochs; running it again keeps the first, resumes the second from its saved
    epochs and ends with the same numbers."""
    exp = study(tmp_path)
    folders = [r.folder for r in exp.runs()]
    driver = ("import json, sys; from robustmnist import data; data.MD5 = json.loads(sys.argv[1]); "
              "from robustmnist.cli import app; app(sys.argv[2:])")
    cmd = [sys.executable, "-c", driver, json.dumps(data.MD5), "run", str(exp.source),
           "--out", str(exp.output), "--executor", "ray", "--address", ray_cluster]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read_progress() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read_progress, daemon=True)
    reader.start()
    deadline = time.monotonic() + 300  # generous: a busy 2-core machine is slow, not wrong
    while time.monotonic() < deadline and proc.poll() is None:
        # "[k/4]" is logged once a run's last files are written; a run 1..EPOCHS-2 epochs in
        # (metrics and a checkpoint saved) cannot finish in the moment it takes to kill.
        if (any(line.startswith("[") for line in lines) and any(
                0 < metrics_rows(f) <= EPOCHS - 2 and f.checkpoint.is_file() for f in folders)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    else:
        proc.kill()
        proc.wait(timeout=30)
        pytest.fail("the driver never reached the moment to kill it:\n" + "".join(lines))
    proc.wait(timeout=30)
    reader.join(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "".join(lines)
    saved = {f.root: load_checkpoint(f.checkpoint) for f in folders if f.checkpoint.is_file()}
    finished = {root: root.joinpath("checkpoint.pt").stat().st_mtime_ns
                for root, ckpt in saved.items() if ckpt.complete}
    partial = {root: RunDir(root).metrics.read_text().splitlines()[:ckpt.epoch + 1]
               for root, ckpt in saved.items() if not ckpt.complete}
    assert finished and partial, "".join(lines)

    outcome = run_experiment(exp, ray_executor())
    assert outcome.trained == 4 - len(finished)
    assert {root: root.joinpath("checkpoint.pt").stat().st_mtime_ns for root in finished} == finished
    for root, rows in partial.items():  # resumed: the saved epochs keep their own timings
        assert RunDir(root).metrics.read_text().splitlines()[:len(rows)] == rows
    assert_same_study(reference, exp)


@needs_ray
def test_worker_without_robustmnist_is_named(tmp_path, tiny_mnist, ray_cluster):
    """A worker whose Python cannot import robustmnist (a startup hook hides it, as on a node
    where it is not installed) gives one line that says what to install."""
    hook = tmp_path / "hide"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'robustmnist':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n")
    exp = study(tmp_path)
    executor = ray_executor(runtime_env={"env_vars": {"PYTHONPATH": str(hook)}}, max_retries=0)
    with pytest.raises(RobustMnistError, match=r"cannot import robustmnist.*pip install") as info:
        executor.train(exp.runs()[:1], None, lambda *_: None)
    assert "\n" not in str(info.value)
    assert not RunDir(exp.runs()[0].folder.root).checkpoint.exists()


def _local_jobs_driver(tmp_path: Path) -> tuple[subprocess.Popen, Experiment, list[RunDir]]:
    """A `robustmnist run --jobs 2` driver of the tiny study, started and waited for until a
    run is mid-way. The spawned workers import robustmnist afresh: a sitecustomize points them
    (and the driver) at the tiny files' MD5s."""
    exp = study(tmp_path)
    folders = [r.folder for r in exp.runs()]
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import json, os\nif 'TINY_MD5' in os.environ:\n    from robustmnist import data\n"
        "    data.MD5 = json.loads(os.environ['TINY_MD5'])\n")
    paths = [str(site), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "TINY_MD5": json.dumps(data.MD5), "PYTHONPATH": os.pathsep.join(paths)}
    cmd = [sys.executable, "-m", "robustmnist", "run", str(exp.source),
           "--out", str(exp.output), "--jobs", "2", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if any(0 < metrics_rows(f) <= EPOCHS - 2 for f in folders):
            return proc, exp, folders
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no run was seen mid-way: " + (proc.communicate()[1] or ""))


def _rerun_like_the_workers(exp: Experiment):
    """The study again, in this process, with a `--jobs 2` worker's thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        return run_experiment(exp, LocalExecutor(1))
    finally:
        torch.set_num_threads(before)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


needs_proc = pytest.mark.skipif(not Path("/proc/self/task").is_dir(),
                                reason="reads child processes from /proc (Linux)")


@needs_proc
def test_sigterm_stops_a_local_jobs_run_and_its_workers(tmp_path, tiny_mnist):
    """SIGTERM to a `run --jobs 2` driver alone (a scheduler's stop, or `kill PID`): it exits
    130 at once with its workers gone, the runs in flight stopped and the queued ones not
    started (it used to wait for the whole study first); a rerun finishes them."""
    proc, exp, folders = _local_jobs_driver(tmp_path)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    complete = [f for f in folders if f.checkpoint.is_file() and load_checkpoint(f.checkpoint).complete]
    assert len(complete) < len(folders), "the driver waited for the whole study"
    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    # every child (pool workers, resource tracker) is gone or a zombie within seconds
    gone_by = time.monotonic() + 15
    while time.monotonic() < gone_by and any(running(pid) for pid in workers):
        time.sleep(0.1)
    assert not [pid for pid in workers if running(pid)], workers
    outcome = _rerun_like_the_workers(exp)
    assert outcome.trained == len(folders) - len(complete)
    assert all(load_checkpoint(f.checkpoint).complete for f in folders)


@needs_proc
def test_a_killed_worker_is_one_error_line_and_the_rerun_resumes(tmp_path, tiny_mnist):
    proc, exp, folders = _local_jobs_driver(tmp_path)
    workers = [pid for pid in _children(proc.pid)
               if "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_text()]
    os.kill(workers[0], signal.SIGKILL)  # the OOM killer, or a user
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "worker process died" in lines[0] and "Traceback" not in err, err
    outcome = _rerun_like_the_workers(exp)
    assert all(load_checkpoint(f.checkpoint).complete for f in folders)
    assert outcome.trained >= 1
