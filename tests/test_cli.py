"""One CliRunner smoke test per command, on the tiny synthetic data set."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from robustmnist.cli import app
from robustmnist.synthetic import draw_photo, save_jpeg

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def trained(tmp_path, tiny_data_dir):
    result = invoke("train", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--aug",
                    "thickness", "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


def test_version_and_help():
    assert "robustmnist" in invoke("--version").output
    result = invoke("train", "--help")
    assert result.exit_code == 0
    for option in ("--aug", "--aug-range", "--aug-p", "--resume", "--epochs", "--device"):
        assert option in result.output


def test_data_fetch_and_export(tmp_path, tiny_data_dir):
    assert invoke("data", "fetch").exit_code == 0
    result = invoke("data", "export", tmp_path / "png", "--split", "test")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "png").glob("*.png"))) == 200
    again = invoke("data", "export", tmp_path / "png")
    assert again.exit_code == 1 and "--force" in again.output
    perturbed = invoke("data", "export", tmp_path / "thick", "--family", "delta", "--level", "2")
    assert perturbed.exit_code == 0, perturbed.output


def test_train_twice_does_not_retrain(trained):
    result = invoke("train", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--aug",
                    "thickness", "--out", trained, "--quiet")
    assert result.exit_code == 0 and "already complete" in result.output


def test_train_bad_input_is_one_clear_line(tmp_path, tiny_data_dir):
    result = invoke("train", "--aug", "blur", "--out", tmp_path / "x")
    assert result.exit_code == 1
    assert "unknown augmentation 'blur'" in result.output and "Traceback" not in result.output
    result = invoke("train", "--aug-range", "1;2", "--out", tmp_path / "x")
    assert result.exit_code == 1 and "MIN,MAX" in result.output


def test_eval_clean_and_sweep(tmp_path, trained):
    result = invoke("eval", trained)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
    result = invoke("eval", trained, "--sweep-width", "--family", "delta", "--levels", "-1,2",
                    "--out", tmp_path / "sweep", "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sweep" / "sweep.json").is_file()
    missing = invoke("eval", tmp_path / "nope.pt")
    assert missing.exit_code == 1 and "not found" in missing.output
    bad_level = invoke("eval", trained, "--sweep-width", "--family", "delta", "--levels", "9")
    assert bad_level.exit_code == 1 and "outside" in bad_level.output


def test_report_from_sweep(tmp_path, trained):
    assert invoke("eval", trained, "--sweep-width", "--family", "delta", "--levels", "1",
                  "--out", tmp_path / "sweep", "-q").exit_code == 0
    result = invoke("report", tmp_path / "sweep", "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "README.md").is_file()


def test_measure(tiny_data_dir, tmp_path):
    result = invoke("measure", "--out", tmp_path / "t.csv", "--quiet")
    assert result.exit_code == 0, result.output
    assert "thickness" in result.output and (tmp_path / "t.csv").is_file()


def test_augment_preview(tiny_data_dir, tmp_path):
    result = invoke("augment", "preview", "--out", tmp_path / "p.png", "--digits", "3", "--draws", "4")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_run_experiment_then_rerun_does_nothing(tmp_path, tiny_data_dir):
    exp = tmp_path / "e.toml"
    exp.write_text(f'''name = "cli"
output = "{tmp_path / 'out'}"
report = "{tmp_path / 'report'}"
epochs = 1
seeds = [0]
batch_size = 128
device = "cpu"
[sweep]
families = ["delta"]
delta = [1.0]
[[variants]]
aug = "none"
[[variants]]
aug = "thickness"
''')
    first = invoke("run", exp, "--quiet")
    assert first.exit_code == 0, first.output
    assert (tmp_path / "report" / "README.md").is_file()
    second = invoke("run", exp)
    assert second.exit_code == 0, second.output
    assert "0 to train" in second.output and "up to date" in second.output


def test_predict_table_json_and_failures(tmp_path, trained):
    rng = np.random.default_rng(0)
    photo = save_jpeg(tmp_path / "seven.jpg", draw_photo(7, 2.5, rng))
    (tmp_path / "bad.png").write_text("not an image")
    result = invoke("predict", trained / "checkpoint.pt", trained, photo, "--json",
                    "--save-preprocessed", tmp_path / "seen")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert len(record["predictions"]) == 2 and 0 <= record["predictions"][0]["digit"] <= 9
    assert (tmp_path / "seen" / "seven.mnist.png").is_file()
    mixed = invoke("predict", trained, photo, tmp_path / "bad.png")
    assert mixed.exit_code == 1
    assert "bad.png" in mixed.output and "seven.jpg" in mixed.output
