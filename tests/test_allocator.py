"""`keep_freed_memory`: glibc reuses a freed batch-sized tensor instead of mapping (and
page-faulting) a fresh one; ``ROBUSTMNIST_MALLOC=system`` leaves malloc alone."""

import os
import platform
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from robustmnist import allocator
from robustmnist.cli import app

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="mallopt is glibc's")

# A training step's pattern: 64 MB tensors (above glibc's largest dynamic mmap threshold,
# 32 MiB, as a batch's conv activations are), made and freed again at every step.
CHILD = """
import resource, torch
from robustmnist.allocator import keep_freed_memory
kept = keep_freed_memory()
def step():
    a = torch.ones(16 << 20)
    b = a * 2
    del a, b
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(setting: str) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                          env={**os.environ, allocator.ENV: setting, "OMP_NUM_THREADS": "1"})
    kept, faults = done.stdout.split()
    return kept, int(faults)


@glibc
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    kept, reused = _faults("keep")
    if kept != "True":
        pytest.skip("this glibc refuses the setting")
    system, fresh = _faults("system")
    assert system == "False"
    # Every tensor faults in afresh: at least one fault per 2 MiB (a huge page, where
    # transparent huge pages are always on; 512 per 2 MiB with 4-KiB pages).
    assert fresh >= 8 * 2 * (64 << 20) // (2 << 20)
    # Most steps reuse the freed memory (a step now and then still maps afresh, where a small
    # allocation came to lie at the heap's top): seen 0-31 % of the default's faults.
    assert reused < fresh / 2


def test_a_misspelt_setting_is_one_clear_error(monkeypatch, tiny_data_dir):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv(allocator.ENV, "off")
    result = CliRunner().invoke(app, ["data", "fetch"])  # the tiny data: offline, instant
    assert result.exit_code == 1
    assert "ROBUSTMNIST_MALLOC='off': use keep (the default) or system" in result.output
    assert allocator._applied is None  # nothing applied
    monkeypatch.setenv(allocator.ENV, "")  # empty is unset: the default
    monkeypatch.setattr(allocator, "_mallopt", lambda: True)
    assert CliRunner().invoke(app, ["data", "fetch"]).exit_code == 0 and allocator._applied is True


@pytest.mark.parametrize("args", [["train", "--help"], ["data", "fetch", "--help"], ["--help"]])
def test_help_is_shown_whatever_the_setting(monkeypatch, args):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv(allocator.ENV, "off")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "Usage" in result.output and "MALLOC" not in result.output


def _commands(typer_app):
    for info in typer_app.registered_commands:
        yield info.callback
    for group in typer_app.registered_groups:
        yield from _commands(group.typer_instance)


def test_every_cli_command_applies_it(monkeypatch, tiny_data_dir):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator, "_mallopt", lambda: True)
    result = CliRunner().invoke(app, ["data", "fetch"])
    assert result.exit_code == 0 and allocator._applied is True
    # ... and every command is wrapped the same way (console.handles_errors applies it)
    commands = list(_commands(app))
    assert len(commands) >= 9
    assert all(getattr(c, "__wrapped__", None) is not None for c in commands), commands
