import itertools
import json

import pandas as pd
import pytest
import torch

from robustmnist import RobustMnistError, training
from robustmnist.augmentation import POLICIES, augment
from robustmnist.checkpoint import Classifier, load_checkpoint, to_unit
from robustmnist.config import AugConfig, TrainConfig
from robustmnist.layout import RunDir
from robustmnist.pen import build_atlas
from robustmnist.photobank import build_bank
from robustmnist.training import METRIC_COLUMNS, Progress, lr_at, run_state, train, training_batches


def _config(**kw):
    base = dict(epochs=2, batch_size=64, device="cpu", seed=3)
    return TrainConfig(**{**base, **kw})


def _train(tmp_path, tiny_splits, name="run", **kw):
    return train(kw.pop("config", _config()), tmp_path / name, train_split=tiny_splits["train"],
                 test_split=tiny_splits["test"], **kw)


def _stop_after_first_epoch(run_dir, epochs):
    """Make a finished 1-epoch run look like an `epochs`-epoch run interrupted after epoch 1."""
    path = RunDir(run_dir).checkpoint
    payload = torch.load(path, weights_only=True)
    payload["config"]["epochs"], payload["complete"] = epochs, False
    torch.save(payload, path)


def test_one_tiny_epoch_writes_a_run(tmp_path, tiny_splits):
    result = _train(tmp_path, tiny_splits, config=_config(epochs=1))
    run = RunDir(tmp_path / "run")
    assert {"config.json", "metrics.csv", "checkpoint.pt", "summary.json"} <= {
        p.name for p in run.root.iterdir()}
    metrics = pd.read_csv(run.metrics)
    assert list(metrics.columns) == METRIC_COLUMNS and list(metrics["epoch"]) == [1]
    row = metrics.iloc[0]
    # images/s is the training split over the epoch's time (not a batch, not the test set)
    assert row["images_per_second"] == pytest.approx(len(tiny_splits["train"]) / row["epoch_seconds"],
                                                     rel=1e-6)
    assert run.read_metrics()[0] == pytest.approx(result.metrics[0])
    saved = json.loads(run.config.read_text())
    assert TrainConfig.from_dict(saved["config"]) == _config(epochs=1)
    assert saved["variant"] == "none" and saved["run_name"] == "run"


def test_metrics_describe_the_saved_weights(tmp_path, tiny_splits):
    """The test accuracy and loss in metrics.csv are those of the checkpoint's weights."""
    result = _train(tmp_path, tiny_splits)
    test = tiny_splits["test"]
    ckpt = load_checkpoint(tmp_path / "run")
    nll, acc, _ = Classifier.from_checkpoint(ckpt).evaluate(test.images, test.labels)
    assert acc == pytest.approx(result.metrics[-1]["test_accuracy"])
    assert nll == pytest.approx(result.metrics[-1]["test_loss"], rel=1e-5)
    assert ckpt.epoch == 2 and ckpt.complete


def test_learns_the_synthetic_digits(tmp_path, tiny_splits):
    result = _train(tmp_path, tiny_splits, config=_config(epochs=6, batch_size=32, lr=2e-3))
    assert result.metrics[-1]["test_accuracy"] > 0.5  # chance is 0.1


def test_deterministic_for_a_seed(tmp_path, tiny_splits):
    a = _train(tmp_path, tiny_splits, "a").metrics
    b = _train(tmp_path, tiny_splits, "b").metrics
    timing = ("epoch_seconds", "images_per_second")
    assert [{k: v for k, v in r.items() if k not in timing} for r in a] == [
        {k: v for k, v in r.items() if k not in timing} for r in b]


@pytest.mark.parametrize("policy", ["none", "thickness+affine"])
def test_resume_equals_uninterrupted(tmp_path, tiny_splits, policy):
    config = _config(epochs=3, aug=AugConfig.from_policy(policy))
    _train(tmp_path, tiny_splits, "full", config=config)
    # "Interrupted" after epoch 1: same config with epochs=1 writes the same first epoch...
    _train(tmp_path, tiny_splits, "part", config=_config(epochs=1, aug=config.aug))
    _stop_after_first_epoch(tmp_path / "part", 3)  # ...as a 3-epoch run stopped there
    _train(tmp_path, tiny_splits, "part", config=config, resume=True)
    full = load_checkpoint(tmp_path / "full")
    part = load_checkpoint(tmp_path / "part")
    for key, value in full.state_dict.items():
        torch.testing.assert_close(part.state_dict[key], value, rtol=0, atol=0)
    cols = ["epoch", "train_loss", "test_loss", "test_accuracy"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "full" / "metrics.csv")[cols],
                                  pd.read_csv(tmp_path / "part" / "metrics.csv")[cols])


class _Stop(Exception):
    pass


class _StopAfterFirstEpoch(Progress):
    def end(self, row):  # called once the epoch's checkpoint is written
        raise _Stop


def _same_run(a, b):
    for key, value in load_checkpoint(a).state_dict.items():
        torch.testing.assert_close(load_checkpoint(b).state_dict[key], value, rtol=0, atol=0)
    cols = ["epoch", "train_loss", "test_loss", "test_accuracy"]
    pd.testing.assert_frame_equal(pd.read_csv(a / "metrics.csv")[cols], pd.read_csv(b / "metrics.csv")[cols])


def test_cosine_schedule_runs_and_resumes_exactly(tmp_path, tiny_splits):
    config = _config(epochs=3, lr=2e-3, lr_schedule="cosine")
    _train(tmp_path, tiny_splits, "full", config=config)
    with pytest.raises(_Stop):  # a real interruption: the schedule spans all 3 epochs
        _train(tmp_path, tiny_splits, "part", config=config, progress=_StopAfterFirstEpoch())
    assert not load_checkpoint(tmp_path / "part").complete
    _train(tmp_path, tiny_splits, "part", config=config, resume=True)
    _same_run(tmp_path / "full", tmp_path / "part")
    steps = 3 * -(-len(tiny_splits["train"]) // 64)
    last_lr = load_checkpoint(tmp_path / "full").optimizer["param_groups"][0]["lr"]
    assert last_lr == pytest.approx(lr_at(config, steps - 1, steps)) and last_lr < 2e-3 / 100
    # ...and it is not the constant recipe under another name
    _train(tmp_path, tiny_splits, "constant", config=_config(epochs=3, lr=2e-3))
    assert load_checkpoint(tmp_path / "constant").optimizer["param_groups"][0]["lr"] == 2e-3
    with pytest.raises(AssertionError):
        _same_run(tmp_path / "full", tmp_path / "constant")


def test_a_run_stopped_before_its_first_epoch_keeps_its_settings(tmp_path, tiny_splits):
    # config.json is written before the first epoch; a folder with no checkpoint yet is not
    # free for other settings (its name may say what it was asked to train)
    with pytest.raises(_Stop):
        _train(tmp_path, tiny_splits, config=_config(epochs=2, lr_schedule="cosine"),
               progress=_StopAfterFirstEpoch())
    RunDir(tmp_path / "run").checkpoint.unlink()  # as if stopped during epoch 1
    with pytest.raises(RobustMnistError, match=r"lr_schedule: saved 'cosine', asked 'constant'"):
        _train(tmp_path, tiny_splits, config=_config(epochs=2))
    assert run_state(tmp_path / "run", _config(epochs=2, lr_schedule="cosine")) == "new"
    _train(tmp_path, tiny_splits, config=_config(epochs=2), force=True)  # --force still may


def test_a_run_saved_before_schedules_existed_is_the_constant_recipe(tmp_path, tiny_splits):
    _train(tmp_path, tiny_splits, config=_config(epochs=1))
    path = RunDir(tmp_path / "run").checkpoint
    payload = torch.load(path, weights_only=True)
    del payload["config"]["lr_schedule"]
    torch.save(payload, path)
    assert run_state(tmp_path / "run", _config(epochs=1)) == "complete"
    with pytest.raises(RobustMnistError, match=r"other settings \(lr_schedule: saved 'constant', "
                                               r"asked 'cosine'\); to resume it, pass its settings"):
        run_state(tmp_path / "run", _config(epochs=1, lr_schedule="cosine"))


def test_lr_at_decays_from_lr_to_zero_on_a_half_cosine():
    config = TrainConfig(lr=0.004, lr_schedule="cosine")
    lrs = [lr_at(config, s, 100) for s in range(100)]
    assert lrs[0] == 0.004 and lrs[50] == pytest.approx(0.002)
    assert all(a > b for a, b in itertools.pairwise(lrs)) and 0 < lrs[-1] < 0.004 / 1000
    assert {lr_at(TrainConfig(lr=0.004), s, 100) for s in range(100)} == {0.004}


def test_finished_run_is_not_retrained(tmp_path, tiny_splits):
    _train(tmp_path, tiny_splits, config=_config(epochs=1))
    before = (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns
    result = _train(tmp_path, tiny_splits, config=_config(epochs=1))
    assert result.seconds == 0.0 and result.complete and len(result.metrics) == 1
    assert (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns == before


def test_unfinished_run_needs_resume_and_other_settings_refused(tmp_path, tiny_splits):
    _train(tmp_path, tiny_splits, config=_config(epochs=1))
    _stop_after_first_epoch(tmp_path / "run", 2)
    assert run_state(tmp_path / "run", _config(epochs=2)) == "partial"
    assert run_state(tmp_path / "run", _config(epochs=2, device="auto")) == "partial"  # hardware only
    with pytest.raises(RobustMnistError, match="--resume"):
        _train(tmp_path, tiny_splits, config=_config(epochs=2))
    with pytest.raises(RobustMnistError, match=r"other settings \(lr: saved 0.001, asked 0.5\)"):
        _train(tmp_path, tiny_splits, config=_config(epochs=2, lr=0.5))
    with pytest.raises(RobustMnistError, match=r"other settings \(aug.policy: saved 'none', asked "
                                               r"'thick', aug.delta_max_px: saved 0.0, asked 2.0\)"):
        _train(tmp_path, tiny_splits, config=_config(epochs=2, aug=AugConfig.from_policy("thick")))


def test_force_starts_over_only_in_a_folder_robustmnist_made(tmp_path, tiny_splits):
    _train(tmp_path, tiny_splits, config=_config(epochs=1))
    result = _train(tmp_path, tiny_splits, config=_config(epochs=1, lr=0.5), force=True)
    assert result.seconds > 0 and load_checkpoint(tmp_path / "run").config.lr == 0.5
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own file")
    with pytest.raises(RobustMnistError, match="robustmnist did not create it"):
        _train(tmp_path, tiny_splits, "mine", config=_config(epochs=1), force=True)
    assert (mine / "notes.txt").read_text() == "my own file"


def test_metrics_out_of_step_with_the_checkpoint_are_refused(tmp_path, tiny_splits):
    _train(tmp_path, tiny_splits, config=_config(epochs=1))
    _stop_after_first_epoch(tmp_path / "run", 2)
    (tmp_path / "run" / "metrics.csv").write_text(",".join(METRIC_COLUMNS) + "\n")
    with pytest.raises(RobustMnistError, match="0 rows for 1 finished epochs"):
        _train(tmp_path, tiny_splits, config=_config(epochs=2), resume=True)


def test_unreadable_metrics_are_one_clear_error(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_metrics() == []  # no metrics.csv yet
    run.metrics.write_text("epoch,train_loss\n1,abc\n")
    with pytest.raises(RobustMnistError, match=r"metrics\.csv: unreadable metrics"):
        run.read_metrics()


@pytest.mark.parametrize(("kw", "match"), [({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"),
                                           ({"device": "tpu"}, "device"),
                                           ({"lr_schedule": "linear"}, "lr_schedule")])
def test_bad_config(tmp_path, tiny_splits, kw, match):
    with pytest.raises(RobustMnistError, match=match):
        _train(tmp_path, tiny_splits, config=_config(**kw))
    assert not (tmp_path / "run").exists()  # refused before the folder is made


@pytest.mark.gpu
def test_cuda_epoch_with_augmentation(tmp_path, tiny_splits):
    result = _train(tmp_path, tiny_splits, config=_config(epochs=1, device="cuda",
                                                          aug=AugConfig.from_policy("thickness")))
    assert result.metrics[0]["test_accuracy"] > 0.1


@pytest.mark.parametrize("policy", list(POLICIES))
def test_grouped_batches_are_the_batches_augmented_one_by_one_to_the_bit(tiny_splits, policy):
    """Several batches per `apply` call (the trainer's path) give every batch the floats that
    augmenting it alone gives, a short last batch and a ragged last group included."""
    images = tiny_splits["train"].images[:230]
    config = AugConfig.from_policy(policy)
    atlas = build_atlas(images.numpy(), workers=1) if config.p_pen > 0 else None
    photos = build_bank(images.numpy(), workers=1) if config.p_photo > 0 else None
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    alone, g = [], torch.Generator().manual_seed(5)
    for part in order.split(32):
        alone.append(augment(to_unit(images[part]), config, g, None if atlas is None else atlas[part],
                             None if photos is None else photos[part]))
    rungs = training.stroke_rungs(images, config)  # the trainer's stroke rungs (CPU)
    assert (rungs is None) == (policy in ("none", "pen"))
    for group, table in ((1, None), (3, None), (8, None), (1, rungs), (3, rungs)):
        g = torch.Generator().manual_seed(5)
        got = list(training_batches(images, order, 32, config, g, atlas, group=group, rungs=table,
                                    photos=photos))
        assert [len(i) for i, _ in got] == [32] * 7 + [6]
        for (idx, x), part, expected in zip(got, order.split(32), alone, strict=True):
            assert torch.equal(idx, part) and torch.equal(x, expected), (group, table is None, len(idx))


def test_a_grouped_epoch_trains_the_same_weights(tmp_path, tiny_splits, monkeypatch):
    config = _config(epochs=1, aug=AugConfig.from_policy("thickness+affine"))
    monkeypatch.setattr(training, "AUG_GROUP", 4)
    a = _train(tmp_path, tiny_splits, "grouped", config=config)
    monkeypatch.setattr(training, "AUG_GROUP", 1)
    b = _train(tmp_path, tiny_splits, "one-by-one", config=config)
    wa = load_checkpoint(a.run_dir).state_dict
    wb = load_checkpoint(b.run_dir).state_dict
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_grouped_batches_refuse_a_group_below_one(tiny_splits):
    images = tiny_splits["train"].images[:10]
    with pytest.raises(ValueError, match="at least 1 batch per call, got 0"):
        next(training_batches(images, torch.arange(10), 4, AugConfig(), torch.Generator(), group=0))


def test_resume_and_force_together_are_refused_before_anything_is_touched(tmp_path, tiny_splits):
    with pytest.raises(RobustMnistError, match="--resume and --force contradict"):
        _train(tmp_path, tiny_splits, "both", resume=True, force=True)
    assert not (tmp_path / "both").exists()
