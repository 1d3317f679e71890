"""The benchmark scripts' docstring examples run with the fast suite too (the package's run
through ``--doctest-modules``; ``benchmarks/`` is not a package, so each script is loaded here)."""

from __future__ import annotations

import doctest
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
WITH_EXAMPLES = sorted(p for p in BENCHMARKS.glob("*.py") if ">>>" in p.read_text(encoding="utf-8"))


def test_the_scripts_with_examples_are_found():
    assert {p.name for p in WITH_EXAMPLES} >= {"photo_mix.py", "photo_normalise.py"}


@pytest.mark.parametrize("script", WITH_EXAMPLES, ids=lambda p: p.name)
def test_benchmark_docstring_examples(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as when run: a script imports its siblings
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
