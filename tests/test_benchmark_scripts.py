"""The benchmark scripts: their docstring examples (the package's run through
``--doctest-modules``; ``benchmarks/`` is not a package, so each script is loaded here) and the
argument checks that must stop them before minutes of work."""

from __future__ import annotations

import doctest
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
WITH_EXAMPLES = sorted(p for p in BENCHMARKS.glob("*.py") if ">>>" in p.read_text(encoding="utf-8"))


def _script(path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as when run: a script imports its siblings
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_scripts_with_examples_are_found():
    assert {p.name for p in WITH_EXAMPLES} >= {"photo_mix.py", "photo_normalise.py"}


@pytest.mark.parametrize("script", WITH_EXAMPLES, ids=lambda p: p.name)
def test_benchmark_docstring_examples(script, monkeypatch):
    result = doctest.testmod(_script(script, monkeypatch), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result


def _no_work(*_a, **_k):
    raise AssertionError("the script started its work before refusing its arguments")


def _refusal(module: ModuleType, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(module, "load_split", _no_work)  # the first expensive step of each
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *argv])
    with pytest.raises(SystemExit) as info:
        module.main()
    return str(info.value.code)


@pytest.mark.parametrize(("argv", "message"), [
    (["--levels", "abc"], "--levels 'abc': expected numbers"),
    (["--levels", "0.12,0.7"], "photo level 0.7 is outside"),
    (["--fraction", "nan"], "photo level nan is outside"),
    (["--model", "nope"], "model: unknown value 'nope'"),
    (["--epochs", "0"], "epochs: must be >= 1"),
    (["--seed", "-1"], "seed: must be >= 0"),
    (["--limit", "-5"], "--limit -5: at least 1"),
    (["--limit", "0"], "--limit 0: at least 1"),
])
def test_photo_oracle_refuses_bad_arguments_before_any_work(argv, message, tmp_path, monkeypatch):
    oracle = _script(BENCHMARKS / "photo_oracle.py", monkeypatch)
    assert message in _refusal(oracle, ["--work", str(tmp_path / "work"), *argv], monkeypatch)


def test_photo_oracle_refuses_a_work_folder_that_is_a_file(tmp_path, monkeypatch):
    oracle = _script(BENCHMARKS / "photo_oracle.py", monkeypatch)
    (tmp_path / "file").write_text("mine")
    assert "name a folder" in _refusal(oracle, ["--work", str(tmp_path / "file")], monkeypatch)
    assert (tmp_path / "file").read_text() == "mine"


def test_photo_oracle_rebuilds_a_corrupt_photo_cache(tmp_path, monkeypatch):
    import numpy as np

    oracle = _script(BENCHMARKS / "photo_oracle.py", monkeypatch)
    images = np.zeros((3, 28, 28), np.uint8)
    cache = tmp_path / f"train-photo-0.25-3-{oracle.photo_key()}.npz"
    cache.write_bytes(b"not an npz")

    class Built:
        images = np.full((3, 28, 28), 7, np.uint8)

    monkeypatch.setattr(oracle, "build_sets", lambda *_a: [Built])
    photos, _ = oracle.training_photos(images, 0.25, tmp_path)
    assert (photos == 7).all()
    again, seconds = oracle.training_photos(images, 0.25, tmp_path)  # now served from the cache
    assert (again == 7).all() and seconds == 0.0


def test_photo_normalise_refuses_a_smoke_run_into_the_committed_results(tmp_path, monkeypatch):
    script = _script(BENCHMARKS / "photo_normalise.py", monkeypatch)
    assert "--limit: name an --out folder" in _refusal(script, ["run", "--limit", "5"], monkeypatch)


def test_photo_normalise_refuses_an_unfinished_run(tmp_path, monkeypatch):
    from robustmnist.checkpoint import save_checkpoint
    from robustmnist.config import TrainConfig
    from robustmnist.models import build_model

    save_checkpoint(tmp_path / "run" / "checkpoint.pt", build_model("baseline"), None,
                    TrainConfig(epochs=2), 1, {})
    script = _script(BENCHMARKS / "photo_normalise.py", monkeypatch)
    message = _refusal(script, [str(tmp_path / "run"), "--out", str(tmp_path / "out")], monkeypatch)
    assert "is not finished" in message
