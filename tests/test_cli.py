"""One CliRunner smoke test per command, on the tiny synthetic data set; what a command
prints is checked against the same numbers computed without the CLI."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import robustmnist
from robustmnist.checkpoint import Classifier, build_network, load_checkpoint
from robustmnist.cli import app
from robustmnist.evaluation import load_sweep
from robustmnist.measure import measure_thickness
from robustmnist.synthetic import draw_photo, save_jpeg

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def flat(text):
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture
def trained(tmp_path, tiny_data_dir):
    result = invoke("train", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--aug",
                    "thickness", "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


def test_version_and_help():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"robustmnist {robustmnist.__version__}"
    result = invoke("train", "--help")
    assert result.exit_code == 0
    for option in ("--aug", "--aug-range", "--aug-p", "--resume", "--epochs", "--device"):
        assert option in result.output
    from robustmnist.config import POLICIES

    for policy in POLICIES:  # the list is built from the registry: a new policy shows up
        assert f" {policy} " in result.output.replace("|", " ").replace(".", " ")


def test_data_fetch_and_export(tmp_path, tiny_data_dir, tiny_arrays):
    assert invoke("data", "fetch").exit_code == 0
    result = invoke("data", "export", tmp_path / "png", "--split", "test")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "png").glob("*.png"))) == 200
    again = invoke("data", "export", tmp_path / "png")
    assert again.exit_code == 1 and "--force" in again.output
    perturbed = invoke("data", "export", tmp_path / "thick", "--family", "delta", "--level", "2")
    assert perturbed.exit_code == 0, perturbed.output


def test_train_writes_the_asked_config(trained):
    ckpt = load_checkpoint(trained)
    assert (ckpt.config.epochs, ckpt.config.batch_size, ckpt.config.aug.policy) == (1, 64, "thickness")
    assert (ckpt.config.aug.delta_min_px, ckpt.config.aug.delta_max_px) == (-1.0, 2.0)


def test_train_twice_does_not_retrain(trained):
    before = (trained / "checkpoint.pt").stat().st_mtime_ns
    result = invoke("train", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--aug",
                    "thickness", "--out", trained, "--quiet")
    assert result.exit_code == 0 and "already complete" in result.output
    assert (trained / "checkpoint.pt").stat().st_mtime_ns == before


def test_train_lr_schedule_reaches_the_run_and_names_its_folder(tmp_path, tiny_data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("train", "--epochs", "1", "--batch-size", "64", "--device", "cpu",
                    "--lr-schedule", "cosine", "--quiet")
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(tmp_path / "runs" / "none+cosine-seed0")  # not none-seed0's recipe
    assert ckpt.config.lr_schedule == "cosine" and ckpt.meta["variant"] == "none+cosine"
    bad = invoke("train", "--lr-schedule", "step", "--out", tmp_path / "x")
    assert bad.exit_code == 1 and "--lr-schedule" in bad.output and "cosine" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "x").exists()


def test_train_bad_input_is_one_clear_line(tmp_path, tiny_data_dir):
    result = invoke("train", "--aug", "blur", "--out", tmp_path / "x")
    assert result.exit_code == 1
    assert "unknown augmentation 'blur'" in result.output and "Traceback" not in result.output
    result = invoke("train", "--aug-range", "1;2", "--out", tmp_path / "x")
    assert result.exit_code == 1 and "MIN,MAX" in result.output
    result = invoke("train", "--aug", "thickness", "--aug-refit", "0.5", "--out", tmp_path / "x")
    assert result.exit_code == 1 and "redraws no digit with a pen; choose a pen policy" in result.output
    result = invoke("train", "--aug", "none", "--aug-range", "-1,2", "--aug-p", "0.5",
                    "--out", tmp_path / "x")
    assert result.exit_code == 1 and "--aug-range, --aug-p with --aug none" in result.output
    assert not (tmp_path / "x").exists()
    result = invoke("train", "--aug", "thickness", "--aug-range", "-2,5", "--out", tmp_path / "x")
    assert result.exit_code == 1 and "must be <= 4, got 5.0" in result.output
    assert not (tmp_path / "x").exists()


def test_run_refuses_an_empty_experiment_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("run", "")
    assert result.exit_code == 1 and "experiment '': empty" in result.output
    assert list(tmp_path.iterdir()) == []  # no quickstart started


def test_train_aug_refit_and_the_thickest_rungs_reach_the_run(tmp_path, tiny_data_dir):
    result = invoke("train", "--aug", "fine-pen+thickness+affine", "--aug-range", "-2,4",
                    "--aug-refit", "0.8", "--epochs", "1", "--batch-size", "64", "--device", "cpu",
                    "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    aug = load_checkpoint(tmp_path / "r").config.aug
    assert (aug.delta_min_px, aug.delta_max_px, aug.pen_refit) == (-2.0, 4.0, 0.8)


def test_eval_prints_the_checkpoints_accuracy(tmp_path, trained, tiny_arrays):
    images, labels = tiny_arrays["test"]
    ckpt = load_checkpoint(trained)
    net = build_network(ckpt)
    x = (torch.from_numpy(images).float().unsqueeze(1) / 255 - ckpt.config.mean) / ckpt.config.std
    with torch.no_grad():
        logp = net(x)
    accuracy = (logp.argmax(1).numpy() == labels).mean()
    nll = torch.nn.functional.nll_loss(logp, torch.from_numpy(labels).long()).item()
    result = invoke("eval", trained)
    assert result.exit_code == 0, result.output
    assert f"run: accuracy {100 * accuracy:.2f}% nll {nll:.4f}" in flat(result.output)


def test_eval_sweep_writes_its_rows(tmp_path, trained):
    result = invoke("eval", trained, "--sweep-width", "--family", "delta", "--levels", "-1,2",
                    "--out", tmp_path / "sweep", "--quiet")
    assert result.exit_code == 0, result.output
    saved = load_sweep(tmp_path / "sweep")
    assert list(zip(saved.rows["family"], saved.rows["level"], strict=True)) == [
        ("clean", 0.0), ("delta", -1.0), ("delta", 2.0)]
    assert f"wrote {tmp_path / 'sweep' / 'sweep.csv'} (3 rows)" in flat(result.output)
    missing = invoke("eval", tmp_path / "nope.pt")
    assert missing.exit_code == 1 and "not found" in missing.output
    bad_level = invoke("eval", trained, "--sweep-width", "--family", "delta", "--levels", "9")
    assert bad_level.exit_code == 1 and "outside" in bad_level.output
    no_sweep = invoke("eval", trained, "--levels", "1")
    assert no_sweep.exit_code == 1 and "--sweep-width" in no_sweep.output


def test_report_from_sweep(tmp_path, trained):
    assert invoke("eval", trained, "--sweep-width", "--family", "delta", "--levels", "1",
                  "--out", tmp_path / "sweep", "-q").exit_code == 0
    result = invoke("report", tmp_path / "sweep", "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(tmp_path / "report" / "results.csv")
    pd.testing.assert_frame_equal(rows, pd.read_csv(tmp_path / "sweep" / "sweep.csv"))
    assert (tmp_path / "report" / "README.md").read_text().startswith("# ")


def test_report_compare_option(tmp_path, synthetic_sweep):
    sweep = synthetic_sweep(tmp_path / "sweep")
    good = invoke("report", sweep, "--out", tmp_path / "r", "--compare", "thickness,none")
    assert good.exit_code == 0, good.output
    assert "## `thickness` vs `none`" in (tmp_path / "r" / "README.md").read_text()
    for spec, match in (("thickness", "expected two different variant names"),
                        ("thickness,thickness", "expected two different variant names"),
                        ("thickness,pen", "compare 'thickness,pen': no variant 'pen'")):
        bad = invoke("report", sweep, "--out", tmp_path / "r2", "--compare", spec)
        assert bad.exit_code == 1 and match in flat(bad.output), bad.output
    twice = invoke("report", sweep, "--out", tmp_path / "r3", "--compare", "thickness,none",
                   "--compare", "none,thickness")
    assert twice.exit_code == 1 and "given twice" in flat(twice.output)


def test_measure_prints_the_sets_thickness(tiny_data_dir, tiny_arrays, tmp_path):
    result = invoke("measure", "--out", tmp_path / "t.csv", "--quiet")
    assert result.exit_code == 0, result.output
    thickness = measure_thickness(tiny_arrays["test"][0])
    assert (f"test clean 0: 200 digits, thickness {np.nanmean(thickness):.2f} +/- "
            f"{np.nanstd(thickness):.2f} px") in flat(result.output)
    written = pd.read_csv(tmp_path / "t.csv")
    np.testing.assert_allclose(written["thickness"], thickness)
    np.testing.assert_array_equal(written["label"], tiny_arrays["test"][1])


def test_augment_preview(tiny_data_dir, tmp_path):
    result = invoke("augment", "preview", "--out", tmp_path / "p.png", "--digits", "3", "--draws", "4")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.png").stat().st_size > 1000
    again = invoke("augment", "preview", "--out", tmp_path / "p.png", "--digits", "1", "--draws", "1")
    assert again.exit_code == 0, again.output  # its own preview is replaced
    assert "(1 digit x 1 draw;" in again.output


def test_augment_preview_keeps_a_png_it_did_not_write(tiny_data_dir, tmp_path):
    import matplotlib.pyplot as plt

    photo = tmp_path / "photo.png"
    fig = plt.figure(figsize=(1, 1))
    fig.savefig(photo, format="png")  # a PNG, but not robustmnist's
    plt.close(fig)
    before = photo.read_bytes()
    result = invoke("augment", "preview", "--out", photo, "--digits", "1", "--draws", "1")
    assert result.exit_code != 0 and "is not a PNG robustmnist wrote" in result.output
    assert photo.read_bytes() == before


def test_run_experiment_then_rerun_does_nothing(tmp_path, tiny_data_dir):
    exp = tmp_path / "e.toml"
    exp.write_text('''name = "cli"
output = "out"
report = "report"
seeds = [0]
[train]
epochs = 1
batch_size = 128
device = "cpu"
[sweep]
families = ["delta"]
delta = [1.0]
[[variants]]
policy = "none"
[[variants]]
policy = "thickness"
''')
    first = invoke("run", exp, "--quiet")
    assert first.exit_code == 0, first.output
    assert (tmp_path / "report" / "README.md").is_file()
    second = invoke("run", exp)
    assert second.exit_code == 0, second.output
    assert "0 to train" in second.output and "up to date" in second.output


def test_predict_json_is_the_models_own_answer(tmp_path, trained):
    rng = np.random.default_rng(0)
    photo = save_jpeg(tmp_path / "seven.jpg", draw_photo(7, 2.5, rng))
    result = invoke("predict", trained / "checkpoint.pt", trained, photo, "--json",
                    "--save-preprocessed", tmp_path / "seen")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["image"] == str(photo) and record["inverted"] is True
    # What the model saw, asked again without the CLI:
    seen = cv2.imread(str(tmp_path / "seen" / "seven.mnist.png"), cv2.IMREAD_GRAYSCALE)
    probs = Classifier.from_checkpoint(load_checkpoint(trained)).log_proba(
        torch.from_numpy(seen)[None, None]).exp()[0].numpy()
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    order = np.argsort(-probs)
    expected = {"model": "run", "digit": int(order[0]), "probability": pytest.approx(float(probs[order[0]])),
                "top3": [[int(d), pytest.approx(float(probs[d]), abs=1e-4)] for d in order[:3]]}
    assert record["predictions"] == [expected, expected]  # the file and the run folder: one model
    assert [p for _, p in record["predictions"][0]["top3"]] == sorted(
        (p for _, p in record["predictions"][0]["top3"]), reverse=True)


def test_predict_table_and_failures(tmp_path, trained):
    photo = save_jpeg(tmp_path / "seven.jpg", draw_photo(7, 2.5, np.random.default_rng(0)))
    (tmp_path / "bad.png").write_text("not an image")
    mixed = invoke("predict", trained, photo, tmp_path / "bad.png")
    assert mixed.exit_code == 1
    assert "bad.png" in mixed.output and "seven.jpg" in mixed.output
    assert "1 of 2 images failed" in mixed.output
    no_images = invoke("predict", trained)
    assert no_images.exit_code == 1 and "no images given" in no_images.output


def test_messages_print_user_text_as_it_is(tmp_path):
    """Square brackets in a path are not Rich markup: the error names the path exactly."""
    missing = tmp_path / "nope[blue]"
    result = invoke("report", missing)
    assert result.exit_code == 1
    assert "nope[blue]" in result.output and result.output.startswith("error:")


def test_measure_refuses_bad_paths_before_the_work(tiny_data_dir, tmp_path, monkeypatch):
    from robustmnist import evaluation

    monkeypatch.setattr(evaluation, "measure_set", lambda *a, **k: pytest.fail("measured first"))
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    bad_out = invoke("measure", "--out", blocker / "m.csv")
    assert bad_out.exit_code != 0 and "is a file where a folder is needed" in bad_out.output
    bad_ref = invoke("measure", "--reference", tmp_path / "missing.csv")
    assert bad_ref.exit_code != 0 and "no such file" in bad_ref.output
