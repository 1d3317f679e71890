"""Regression tests for the adversarial audit (issue 11): every case gets a clear one-line error
(exit 1), nothing already written is lost, nothing robustmnist does not own is touched."""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import signal
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from robustmnist import RobustMnistError, artifacts, data
from robustmnist.cli import app
from robustmnist.experiments import load_experiment

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result, *needles):
    """Exit code 1, a single 'error:' line, no traceback, naming every needle."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert str(needle) in result.output.replace("\n", ""), (needle, result.output)


@pytest.fixture
def run_dir(tmp_path, tiny_data_dir):
    result = invoke("train", "--epochs", "1", "--batch-size", "128", "--device", "cpu",
                    "--out", tmp_path / "run", "--quiet", "--threads", "2")
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


# --------------------------------------------------------------------------- data integrity

def test_verified_gz_wins_over_a_corrupt_raw_file(tiny_data_dir, tiny_arrays):
    raw = data.raw_dir(tiny_data_dir) / "t10k-images-idx3-ubyte"
    good = raw.read_bytes()
    raw.with_suffix(".gz").write_bytes(gzip.compress(good))
    corrupt = bytearray(good)
    corrupt[-1] ^= 0xFF  # one pixel of the last digit
    raw.write_bytes(bytes(corrupt))
    loaded = data.load_split("test")
    np.testing.assert_array_equal(loaded.images[:, 0].numpy(), tiny_arrays["test"][0])


def test_only_gz_files_are_enough(tiny_data_dir, tiny_arrays):
    for name in data.MD5:
        path = data.raw_dir(tiny_data_dir) / name
        path.with_name(name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    assert invoke("data", "fetch").exit_code == 0
    np.testing.assert_array_equal(data.load_split("train").labels.numpy(), tiny_arrays["train"][1])


def test_written_files_are_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        artifacts.write_text(tmp_path / "x.txt", "hi")
    finally:
        os.umask(old)
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o644


def test_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.txt"
    target.write_text("old")

    def no_space(*_args, **_kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(RobustMnistError, match="No space left on device"):
        artifacts.write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]  # no temp file left


# --------------------------------------------------------------------------- ownership, locks

def test_a_second_process_on_the_same_run_folder_is_refused(tmp_path, tiny_data_dir):
    folder = artifacts.claim_dir(tmp_path / "run")
    with artifacts.folder_lock(folder):  # as if another `train` held it
        result = invoke("train", "--epochs", "1", "--device", "cpu", "--out", folder, "-q")
    one_error_line(result, "in use by another robustmnist process")
    assert not (folder / "checkpoint.pt").exists()


def test_report_into_a_users_folder_is_refused(tmp_path, run_dir):
    assert invoke("eval", run_dir, "--sweep-width", "--family", "delta", "--levels", "1",
                  "--out", tmp_path / "sweep", "-q").exit_code == 0
    mine = tmp_path / "somewhere"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    one_error_line(invoke("report", tmp_path / "sweep", "--out", mine), mine, "did not create it")
    assert (mine / "README.md").read_text() == "my notes"


def test_experiment_paths_are_relative_to_the_file_and_expand_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = tmp_path / "exps"
    folder.mkdir()
    (folder / "e.toml").write_text('output = "~/results"\nreport = "rep"\n[[variants]]\npolicy = "none"\n')
    exp = load_experiment(folder / "e.toml")
    assert exp.output == tmp_path / "home" / "results" and exp.report == folder / "rep"


def test_export_force_never_empties_a_users_folder(tmp_path, tiny_data_dir):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    one_error_line(invoke("data", "export", mine, "--force"), "did not write")
    assert (mine / "thesis.tex").read_text() == "precious"
    # Its own earlier export is replaced.
    assert invoke("data", "export", tmp_path / "png").exit_code == 0
    again = invoke("data", "export", tmp_path / "png", "--force", "--split", "test")
    assert again.exit_code == 0, again.output
    assert len(list((tmp_path / "png").glob("*.png"))) == 200


def test_export_onto_a_symlink_is_refused(tmp_path, tiny_data_dir):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    one_error_line(invoke("data", "export", tmp_path / "link"), "link")


# --------------------------------------------------------------------------- bad values

@pytest.mark.parametrize(("args", "needle"), [
    (["--seed", str(2**63)], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--threads", "-1"], "--threads"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "inf"], "--lr"),
    (["--batch-size", "1000000000000"], "--batch-size"),
    (["--aug", "thickness", "--aug-p", "nan"], "p_untouched"),
])
def test_train_bad_values(tmp_path, tiny_data_dir, args, needle):
    one_error_line(invoke("train", "--device", "cpu", "--out", tmp_path / "r", *args), needle)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_train_out_is_a_file(tmp_path, tiny_data_dir):
    (tmp_path / "f").write_text("x")
    one_error_line(invoke("train", "--device", "cpu", "--out", tmp_path / "f"), "is a file")


@pytest.mark.parametrize("args", [["--digits", "0"], ["--draws", "0"], ["--digits", "-3"]])
def test_preview_bad_counts(tmp_path, tiny_data_dir, args):
    one_error_line(invoke("augment", "preview", "--out", tmp_path / "p.png", *args), "--digits")


def test_preview_out_is_a_folder(tmp_path, tiny_data_dir):
    one_error_line(invoke("augment", "preview", "--out", tmp_path), "is a folder")


def test_preview_out_must_be_a_png(tmp_path, tiny_data_dir):
    one_error_line(invoke("augment", "preview", "--out", tmp_path / "p.jpg"), "name a .png file")
    assert not (tmp_path / "p.jpg").exists()


def test_resume_with_other_threads_or_model_shape(tmp_path, run_dir):
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    ckpt["config"]["epochs"], ckpt["complete"] = 2, False
    torch.save(ckpt, run_dir / "checkpoint.pt")
    base = ["train", "--epochs", "2", "--batch-size", "128", "--device", "cpu", "--out", run_dir,
            "--resume", "-q"]
    one_error_line(invoke(*base, "--threads", "1"), "--threads 2")
    ckpt["state_dict"]["fc1.weight"] = torch.zeros(3, 3)
    torch.save(ckpt, run_dir / "checkpoint.pt")
    one_error_line(invoke(*base, "--threads", "2"), "checkpoint.pt", "--force")


def test_resume_refuses_another_pen_atlas_before_building_it(tmp_path, tiny_data_dir,
                                                             monkeypatch):
    from robustmnist import pen

    base = ["train", "--aug", "pen", "--batch-size", "128", "--device", "cpu",
            "--out", tmp_path / "pen", "-q", "--threads", "2"]
    assert invoke(*base, "--epochs", "1").exit_code == 0
    ckpt = torch.load(tmp_path / "pen" / "checkpoint.pt", weights_only=True)
    recorded = ckpt["meta"]["pen_atlas"]
    assert recorded.startswith("atlas_") and (tiny_data_dir / "pen" / f"{recorded}.npz").is_file()
    ckpt["config"]["epochs"], ckpt["complete"] = 2, False
    torch.save(ckpt, tmp_path / "pen" / "checkpoint.pt")
    version, build = pen.ATLAS_VERSION, pen.build_atlas
    monkeypatch.setattr(pen, "ATLAS_VERSION", version + 1)  # another algorithm
    built = []
    monkeypatch.setattr(pen, "build_atlas", lambda *a, **k: built.append(1))
    one_error_line(invoke(*base, "--epochs", "2", "--resume"), recorded, "--force")
    assert not built  # refused before the (long) build of the new atlas
    monkeypatch.setattr(pen, "ATLAS_VERSION", version)
    monkeypatch.setattr(pen, "build_atlas", build)
    result = invoke(*base, "--epochs", "2", "--resume")  # the same atlas resumes
    assert result.exit_code == 0, result.output
    del ckpt["meta"]["pen_atlas"]  # a run from before atlases were recorded: resumes, unstamped
    torch.save(ckpt, tmp_path / "pen" / "checkpoint.pt")
    assert invoke(*base, "--epochs", "2", "--resume").exit_code == 0
    after = torch.load(tmp_path / "pen" / "checkpoint.pt", weights_only=True)
    assert after["epoch"] == 2 and "pen_atlas" not in after["meta"]


def _pid(images: np.ndarray) -> list[int]:
    return [os.getpid()]


def test_chunked_work_follows_the_thread_setting():
    from robustmnist.measure import map_chunks

    images = np.zeros((2000, 28, 28), np.uint8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # `--threads 1`: no worker processes
        assert map_chunks(_pid, images) == [[os.getpid()]]
        if (os.cpu_count() or 1) >= 2:  # one core: in-process whatever the threads
            torch.set_num_threads(2)
            pids = {pid for part in map_chunks(_pid, images) for pid in part}
            assert os.getpid() not in pids and 1 <= len(pids) <= 2
        torch.set_num_threads((os.cpu_count() or 1) + 3)  # --threads beyond the cores
        pids = {pid for part in map_chunks(_pid, images) for pid in part}
        assert len(pids) <= (os.cpu_count() or 1)  # at most one process per core
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("damage", ["drop_epoch", "aug_key", "config_type"])
def test_malformed_checkpoints_in_eval_and_predict(tmp_path, run_dir, damage):
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    if damage == "drop_epoch":
        del ckpt["epoch"]
    elif damage == "aug_key":
        ckpt["config"]["aug"]["blur_sigma"] = 1.0
    else:
        ckpt["config"]["epochs"] = "ten"
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    one_error_line(invoke("eval", bad), "bad.pt")
    photo = tmp_path / "x.png"
    photo.write_bytes(b"")
    one_error_line(invoke("predict", bad, photo), "bad.pt")


def test_predict_save_preprocessed_onto_a_file_and_name_clashes(tmp_path, run_dir):
    from robustmnist.synthetic import draw_photo, save_jpeg

    rng = np.random.default_rng(0)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        save_jpeg(tmp_path / sub / "x.jpg", draw_photo(3, 2.5, rng))
    (tmp_path / "file").write_text("x")
    one_error_line(invoke("predict", run_dir, tmp_path / "a", "--save-preprocessed", tmp_path / "file"),
                   "is a file")
    ok = invoke("predict", run_dir, tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg",
                "--save-preprocessed", tmp_path / "seen", "--json")
    assert ok.exit_code == 0, ok.output
    saved = sorted(p.name for p in (tmp_path / "seen").glob("*.mnist.png"))
    assert saved == ["x-2.mnist.png", "x.mnist.png"]


# --------------------------------------------------------------------------- malformed results

@pytest.fixture
def sweep_dir(tmp_path, run_dir):
    assert invoke("eval", run_dir, "--sweep-width", "--family", "delta", "--levels", "1",
                  "--out", tmp_path / "sweep", "-q").exit_code == 0
    return tmp_path / "sweep"


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("sweep.json", "{not json", "sweep.json"),
    ("sweep.csv", "", "sweep.csv"),
    ("predictions.npz", "junk", "predictions.npz"),
])
def test_report_on_malformed_results(tmp_path, sweep_dir, name, content, needle):
    (sweep_dir / name).write_text(content)
    one_error_line(invoke("report", sweep_dir, "--out", tmp_path / "rep"), needle)


def test_report_refuses_two_sweeps_with_the_same_runs(tmp_path, sweep_dir):
    shutil.copytree(sweep_dir, tmp_path / "copy")
    one_error_line(invoke("report", sweep_dir, tmp_path / "copy", "--out", tmp_path / "rep"),
                   "report them separately")


def test_measure_reference_without_thickness_column(tmp_path, tiny_data_dir):
    ref = tmp_path / "ref.csv"
    ref.write_text("index,area\n0,1\n")
    one_error_line(invoke("measure", "--reference", ref, "-q"), "'thickness' column")


def test_unexpected_exception_is_one_line_with_a_saved_traceback(tmp_path, tiny_data_dir, monkeypatch):
    def boom(*_a, **_kw):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(data, "verified_files", boom)
    result = invoke("data", "fetch")
    one_error_line(result, "ZeroDivisionError", "traceback in")
    saved = Path(result.output.split("traceback in ")[1].split(")")[0].strip())
    assert "boom" in saved.read_text()
    saved.unlink()


# --------------------------------------------------------------------------- experiment files

BASE = '[train]\nepochs = 1\n[[variants]]\npolicy = "none"\n'


@pytest.mark.parametrize(("text", "key"), [
    ("seeds = [" + ", ".join(map(str, range(100_000))) + "]\n" + BASE, "seeds"),
    ("seeds = [9223372036854775808]\n" + BASE.replace("epochs = 1", ""), "seeds"),
    ('[sweep]\nfamilies = ["delta"]\ndelta = [' + ", ".join(["1.0"] * 5000) + "]\n" + BASE, "sweep.delta"),
    (BASE.replace("epochs = 1", "epochs = 9223372036854775807"), "train.epochs"),
    (BASE.replace("epochs = 1", "batch_size = 1000000000000"), "train.batch_size"),
    (BASE.replace("epochs = 1", "lr = inf"), "train.lr"),
    (BASE + "affine_degrees = inf\n", "variants[0].affine_degrees"),
    (BASE + 'name = "a\\u0000b"\n', "variants[0].name"),
    ("epochs = 1\n" + BASE, "epochs"),
    (BASE + "pen_min_px = 8.0\npen_max_px = 3.0\n", "variants[0].pen_min_px"),
    (BASE + "delta_min_px = 2.0\ndelta_max_px = -1.0\n", "variants[0].delta_min_px"),
    ('[sweep]\nfamilies = ["delta"]\nladder = [9.0]\n' + BASE, "sweep.ladder"),
])
def test_experiment_limits_name_file_and_key(tmp_path, text, key):
    path = tmp_path / "e.toml"
    path.write_text(text)
    with pytest.raises(RobustMnistError) as info:
        load_experiment(path)
    assert str(info.value).startswith(f"{path}: key '{key}'"), str(info.value)[:300]


_toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
_keys = st.sampled_from(["name", "seeds", "train", "sweep", "variants", "output", "report",
                         "epochs", "policy", "families", "delta"]) | st.text(string.ascii_letters, max_size=6)


def _toml(value, key=None):
    """A TOML rendering of hypothesis' value (None -> omitted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else ("inf" if value == float("inf") else
                                             "-inf" if value == float("-inf") else repr(value))
    if isinstance(value, int | str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value if v is not None) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items() if v is not None) + "}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(_keys, _toml_values, max_size=6))
def test_random_experiment_tables_give_an_experiment_or_a_clear_error(tmp_path, table):
    path = tmp_path / "random.toml"
    path.write_text("\n".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in table.items() if v is not None))
    try:
        exp = load_experiment(path)
    except RobustMnistError as err:
        assert "\n" not in str(err).strip() and str(path) in str(err)
    else:
        assert exp.runs() and all(r.config.validate() for r in exp.runs())


def test_pool_workers_stop_when_the_driver_is_killed():
    """A killed `run --jobs N` must not leave its workers training on as orphans."""
    import subprocess
    import sys
    import time

    worker = ("import os, time; from robustmnist.executors import exit_with_parent; "
              "exit_with_parent(os.getppid(), 0.05); time.sleep(30)")
    driver = (f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {worker!r}]); "
              "print(p.pid, flush=True)")  # exits at once: the worker loses its parent
    out = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, check=True)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    raise AssertionError("the orphaned worker kept running")


# --------------------------------------------------------------------------- second audit


def test_cross_field_error_reads_key_then_reason(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text(BASE + "pen_min_px = 8.0\npen_max_px = 3.0\n")
    with pytest.raises(RobustMnistError) as info:
        load_experiment(path)
    assert str(info.value) == (f"{path}: key 'variants[0].pen_min_px': pen range [8, 3] px is "
                               "invalid; need pen_min_px <= pen_max_px")


@pytest.mark.parametrize(("args", "flag"), [
    (["--aug", "thickness", "--aug-p", "1.5"], "--aug-p (p_untouched): must be <= 1"),
    (["--aug", "thickness", "--aug-range", "2,-1"], "--aug-range (delta_min_px)"),
    (["--aug", "thickness", "--aug-range", "-3,1"], "--aug-range (delta_min_px): must be >= -2"),
])
def test_aug_option_errors_name_the_option(tmp_path, tiny_data_dir, args, flag):
    one_error_line(invoke("train", *args, "--out", tmp_path / "r"), flag)
    assert not (tmp_path / "r").exists()


def test_preview_and_measure_never_replace_a_users_file(tmp_path, tiny_data_dir):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    one_error_line(invoke("augment", "preview", "--out", notes, "-q"), "name a .png file")
    disguised = tmp_path / "notes.png"  # a user's file with a PNG's name
    disguised.write_text("my notes")
    one_error_line(invoke("augment", "preview", "--out", disguised, "-q"), "is not a PNG")
    assert disguised.read_text() == "my notes"
    one_error_line(invoke("measure", "--out", notes, "-q"), "is not a thickness CSV")
    assert notes.read_text() == "my notes"
    png, csv = tmp_path / "p.png", tmp_path / "t.csv"
    for _ in range(2):  # its own earlier output is replaced
        assert invoke("augment", "preview", "--out", png, "--digits", "2", "--draws", "2",
                      "-q").exit_code == 0
        assert invoke("measure", "--out", csv, "-q").exit_code == 0
    one_error_line(invoke("augment", "preview", "--seed", str(2**70), "--out", png, "-q"), "--seed")


def test_measure_reference_rows_by_index_and_a_constant_column(tmp_path, tiny_data_dir):
    import pandas as pd

    ours = tmp_path / "ours.csv"
    assert invoke("measure", "--out", ours, "-q").exit_code == 0
    frame = pd.read_csv(ours)[["index", "thickness"]]
    shuffled = tmp_path / "shuffled.csv"
    frame.sample(frac=1.0, random_state=0).to_csv(shuffled, index=False)
    result = invoke("measure", "--reference", shuffled, "-q")
    assert result.exit_code == 0 and "Pearson r 1.0000" in result.output, result.output
    flat = tmp_path / "flat.csv"
    frame.assign(thickness=2.5).to_csv(flat, index=False)
    one_error_line(invoke("measure", "--reference", flat, "-q"), "same thickness for every digit")


def test_eval_refuses_its_out_folder_before_sweeping(tmp_path, run_dir):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    result = invoke("eval", run_dir, "--sweep-width", "--family", "ladder", "--out", foreign)
    one_error_line(result, "not empty")
    assert "test accuracy" not in result.output  # refused before any evaluation
    one_error_line(invoke("eval", run_dir, "--sweep-width", "--levels", ""), "--levels")


def test_resume_removes_temp_files_of_a_killed_write(tmp_path, run_dir):
    stale = run_dir / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    result = invoke("train", "--epochs", "1", "--batch-size", "128", "--device", "cpu",
                    "--out", run_dir, "--resume", "--quiet", "--threads", "2")
    assert result.exit_code == 0, result.output
    assert not stale.exists() and (run_dir / "checkpoint.pt").is_file()


def test_a_valid_cached_atlas_is_read_without_the_lock(tmp_path, tiny_arrays, monkeypatch):
    from robustmnist import artifacts, pen

    images = tiny_arrays["train"][0][:20]
    first, built = pen.load_or_build_atlas(images, tmp_path, workers=1)
    assert built

    class NoLock:  # a read-only data folder: the lock file cannot be created
        def __init__(self, *_a, **_kw):
            raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(artifacts, "FileLock", NoLock)
    again, built = pen.load_or_build_atlas(images, tmp_path, workers=1)
    assert not built and torch.equal(again.distance, first.distance)


def _never_built() -> tuple[str, bytes]:
    raise AssertionError("the build ran although its result could not be kept")


def test_a_folder_in_a_cache_files_place_is_refused_before_the_build(tmp_path):
    target = tmp_path / "photos" / "bank.npz"
    target.mkdir(parents=True)
    with pytest.raises(RobustMnistError, match=r"bank\.npz is a folder .*--data-dir"):
        artifacts.load_or_build(target, lambda _p: None, _never_built)
    assert target.is_dir() and not any(target.iterdir())


def test_a_read_only_cache_folder_is_refused_before_the_build(tmp_path, monkeypatch):
    target = tmp_path / "photos" / "bank.npz"
    target.parent.mkdir()
    target.write_bytes(b"a corrupt bank")  # so it would be rebuilt
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == target.parent
                        else real_access(p, mode))  # as a read-only mount answers (root too)
    with pytest.raises(RobustMnistError, match=r"bank\.npz \(its folder is read-only\).*--data-dir"):
        artifacts.load_or_build(target, lambda _p: None, _never_built)
    assert target.read_bytes() == b"a corrupt bank"


def test_a_cache_file_that_cannot_be_written_after_its_build_keeps_the_value(tmp_path, monkeypatch):
    target = tmp_path / "pen" / "atlas.npz"
    lines: list[str] = []
    real_write = Path.write_bytes

    def full_disk(self, data):  # the temporary file's write fails, as on a full disk
        if self.name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    value, built = artifacts.load_or_build(target, lambda _p: None, lambda: ("built", b"bytes"),
                                           log=lines.append)
    assert (value, built) == ("built", True) and not target.exists()
    assert len(lines) == 1 and "free some disk space" in lines[0] and "not cached" in lines[0]
    assert not list(target.parent.glob("*.tmp"))


def test_a_killed_write_s_temporary_file_goes_at_the_next_build(tmp_path):
    target = tmp_path / "photos" / "bank.npz"
    target.parent.mkdir()
    killed = artifacts.atomic_path(target).__enter__()  # a write that never finished
    killed.write_bytes(b"half a bank")
    users = [target.parent / ".bank.npz.tmp", target.parent / "notes.tmp",
             target.parent / ".other.npz.k2j4x9ab.tmp",      # another file's temporary file
             target.parent / ".bank.npz.v2.abcdefgh.tmp"]    # that of a file named bank.npz.v2
    for f in users:
        f.write_text("keep")
    lookalike = target.parent / ".bank.npz.abcdefgh.tmp"
    lookalike.mkdir()                                          # a folder: not a write of robustmnist's
    value, built = artifacts.load_or_build(target, lambda p: p.read_bytes() if p.exists() else None,
                                           lambda: ("built", b"bytes"))
    assert (value, built) == ("built", True) and target.read_bytes() == b"bytes"
    assert not killed.exists() and all(f.read_text() == "keep" for f in users) and lookalike.is_dir()


def test_a_folder_in_a_cache_locks_place_is_named(tmp_path):
    target = tmp_path / "pen" / "atlas.npz"
    (tmp_path / "pen" / "atlas.npz.lock").mkdir(parents=True)
    with pytest.raises(RobustMnistError, match=r"atlas\.npz\.lock is a folder .*move it away.*--data-dir"):
        artifacts.load_or_build(target, lambda _p: None, _never_built)


def test_a_pipe_in_a_cache_files_place_is_refused_not_read(tmp_path, tiny_arrays):
    # Reading a FIFO waits for a writer that never comes: it must be refused, not opened.
    from robustmnist.perturb import cache_path
    from robustmnist.perturb import load_or_build as load_or_build_set

    target = tmp_path / "photos" / "bank.npz"
    target.parent.mkdir()
    os.mkfifo(target)
    signal.alarm(20)  # a regression would block in open(): fail, not hang
    with pytest.raises(RobustMnistError, match=r"bank\.npz is not a regular file .*--data-dir"):
        artifacts.load_or_build(target, lambda p: p.read_bytes(), _never_built)
    sets = tmp_path / "perturbed"
    pipe = cache_path(sets, "delta", 1.0, "md5x")
    pipe.parent.mkdir(parents=True)
    os.mkfifo(pipe)
    with pytest.raises(RobustMnistError, match="is not a regular file where robustmnist keeps"):
        load_or_build_set(tiny_arrays["test"][0][:4], "delta", 1.0, "md5x", sets)
    signal.alarm(0)


def test_a_file_on_a_cache_files_path_is_named_before_the_build(tmp_path):
    (tmp_path / "pen").write_text("not a folder")
    target = tmp_path / "pen" / "atlas.npz"
    with pytest.raises(RobustMnistError) as caught:
        artifacts.load_or_build(target, lambda _p: None, _never_built)
    assert str(caught.value).startswith(f"{tmp_path / 'pen'} is a file where robustmnist needs a "
                                        f"folder for {target}; move it away, or --data-dir")
    assert (tmp_path / "pen").read_text() == "not a folder"


def test_a_link_at_a_cache_path_is_replaced_never_its_target(tmp_path):
    # The target may be a user's file: robustmnist replaces its own path, not what it names.
    theirs = tmp_path / "mine.npz"
    theirs.write_bytes(b"the user's")
    target = tmp_path / "pen" / "atlas.npz"
    target.parent.mkdir()
    target.symlink_to(theirs)
    value, built = artifacts.load_or_build(target, lambda p: None, lambda: ("built", b"good"))
    assert (value, built) == ("built", True)
    assert not target.is_symlink() and target.read_bytes() == b"good"
    assert theirs.read_bytes() == b"the user's"


def test_a_second_builder_says_it_waits(tmp_path):
    from filelock import FileLock

    target = tmp_path / "photos" / "bank.npz"
    target.parent.mkdir()
    lines: list[str] = []
    holder = FileLock(f"{target}.lock")
    holder.acquire()

    def built_meanwhile(msg: str) -> None:  # the holder finishes while this one waits
        lines.append(msg)
        target.write_bytes(b"good")
        holder.release()

    value, built = artifacts.load_or_build(target, lambda p: p.read_bytes() if p.exists() else None,
                                           _never_built, log=built_meanwhile)
    assert (value, built) == (b"good", False)
    assert lines == [f"waiting for another robustmnist process to finish building {target}"]


def test_sigterm_is_handled_like_ctrl_c():
    import signal

    import typer

    from robustmnist.console import handles_errors

    @handles_errors
    def long_job():
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt the command")

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(typer.Exit) as info:
        long_job()
    assert info.value.exit_code == 130
    assert signal.getsignal(signal.SIGTERM) is before  # restored for the rest of the process


def test_set_building_workers_stop_when_their_process_is_killed(tmp_path):
    """A killed `eval`/`train` must not leave its building workers running on as orphans."""
    import subprocess
    import sys
    import time

    (tmp_path / "slow.py").write_text(
        "import os, time\n"
        "def work(chunk):\n"
        f"    open(os.path.join({str(tmp_path)!r}, f'{{os.getpid()}}.pid'), 'w').close()\n"
        "    time.sleep(60)\n"
        "    return chunk\n")
    driver = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import numpy as np, slow; "
              "from robustmnist.measure import map_chunks; "
              "map_chunks(slow.work, np.zeros((8, 28, 28), np.uint8), workers=2)")
    proc = subprocess.Popen([sys.executable, "-c", driver])
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("*.pid"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = [int(p.stem) for p in tmp_path.glob("*.pid")]
    proc.kill()
    proc.wait()
    assert len(pids) == 2, "the workers never started"
    deadline = time.monotonic() + 15
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in pids if _running(pid)]
    for pid in alive:
        os.kill(pid, 9)
    assert not alive, "orphaned workers kept running"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("depth", [1, 2])
def test_a_file_on_the_output_path_is_named_as_the_cause(tmp_path, depth):
    # Directly under the file (mkdir: EEXIST) or deeper (ENOTDIR): the file itself is named.
    from robustmnist import artifacts

    blocker = tmp_path / "file"
    blocker.write_text("x")
    target = blocker / "a" / "x.json" if depth == 2 else blocker / "x.json"
    with pytest.raises(RobustMnistError) as caught:
        artifacts.write_text(target, "y")
    assert str(caught.value) == (f"cannot write {target}: {blocker} is a file where a folder is "
                                 "needed; move it away, or choose another path")
    assert blocker.read_text() == "x"


# --------------------------------------------------------------------------- paths and start-up

def test_resume_of_a_folder_that_does_not_exist_is_refused(tmp_path, tiny_data_dir):
    """A mistyped --out with --resume must not start a fresh run somewhere else."""
    one_error_line(invoke("train", "--device", "cpu", "--resume", "--out", tmp_path / "typo"),
                   "--resume", "typo", "does not exist", "drop --resume")
    assert not (tmp_path / "typo").exists()


def test_a_home_path_the_shell_left_alone_is_expanded(tmp_path, tiny_data_dir, monkeypatch):
    """``--out=~/x`` reaches the program as a literal '~': it means the home folder."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    result = invoke("measure", "--out=~/m.csv", "--quiet")
    assert result.exit_code == 0, result.output
    assert (home / "m.csv").is_file() and not (tmp_path / "~").exists()
    one_error_line(invoke("measure", "--out=~no-such-user-here/m.csv"), "~no-such-user-here",
                   "is no user's home folder", "write the path out")


def test_a_long_file_name_is_written_and_a_too_long_one_is_one_line(tmp_path):
    longest = tmp_path / ("a" * 251 + ".csv")  # 255 bytes: the most a name may have
    artifacts.write_text(longest, "x")
    assert longest.read_text() == "x" and os.listdir(tmp_path) == [longest.name]  # no temp left
    for name in ("é" * 125 + ".json", "a" + "é" * 127, os.fsdecode(b"\xff-run.json")):
        wide = tmp_path / name  # 255 bytes of UTF-8 (cut by bytes, mid-character), not UTF-8
        artifacts.write_text(wide, "y")
        assert wide.read_text() == "y"
    with pytest.raises(RobustMnistError, match="too long: choose a shorter one"):
        artifacts.write_text(tmp_path / ("a" * 252 + ".csv"), "x")


def test_ctrl_c_while_the_cli_loads_is_one_line(monkeypatch, capsys):
    """Ctrl-C during the seconds `import torch` takes: exit 130 and a line, not a traceback."""
    import sys

    from robustmnist.__main__ import main

    class Interrupting:  # an import finder that behaves as Ctrl-C arriving mid-import
        def find_spec(self, name, path=None, target=None):
            if name == "robustmnist.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "robustmnist.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 130
    assert capsys.readouterr().err == "interrupted while starting: nothing was run or written\n"


def test_measure_refuses_a_level_of_clean_on_the_training_split_too(tiny_data_dir):
    # the training split was measured whatever --level said: now refused as on the test split
    one_error_line(invoke("measure", "--split", "train", "--family", "clean", "--level", "1"),
                   "drop --level")
    assert invoke("measure", "--split", "train", "--family", "clean", "-q").exit_code == 0
