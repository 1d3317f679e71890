import pandas as pd
import pytest
import torch

from robustmnist import RobustMnistError
from robustmnist.augmentation import AugConfig
from robustmnist.training import (
    TrainConfig,
    load_checkpoint,
    model_from_checkpoint,
    train,
)


def _config(**kw):
    base = dict(epochs=2, batch_size=64, device="cpu", seed=3)
    return TrainConfig(**{**base, **kw})


def _train(tmp_path, tiny_splits, name="run", **kw):
    return train(kw.pop("config", _config()), tmp_path / name, train_split=tiny_splits["train"],
                 test_split=tiny_splits["test"], **kw)


def test_one_tiny_epoch_writes_a_run(tmp_path, tiny_splits):
    result = _train(tmp_path, tiny_splits, config=_config(epochs=1))
    run = tmp_path / "run"
    assert {"config.json", "metrics.csv", "checkpoint.pt", "summary.json"} <= {p.name for p in run.iterdir()}
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1]
    assert metrics["images_per_second"].iloc[0] > 0
    assert result.metrics[0]["test_accuracy"] == pytest.approx(metrics["test_accuracy"].iloc[0])


def test_learns_the_synthetic_digits(tmp_path, tiny_splits):
    result = _train(tmp_path, tiny_splits, config=_config(epochs=6, batch_size=32, lr=2e-3))
    assert result.metrics[-1]["test_accuracy"] > 0.5  # chance is 0.1


def test_deterministic_for_a_seed(tmp_path, tiny_splits):
    a = _train(tmp_path, tiny_splits, "a").metrics
    b = _train(tmp_path, tiny_splits, "b").metrics
    strip = [{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_second")} for r in a]
    assert strip == [{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_second")}
                     for r in b]


@pytest.mark.parametrize("policy", ["none", "thickness+affine"])
def test_resume_equals_uninterrupted(tmp_path, tiny_splits, policy):
    config = _config(epochs=3, aug=AugConfig.from_policy(policy))
    _train(tmp_path, tiny_splits, "full", config=config)
    # "Interrupted" after epoch 1: same config with epochs=1 writes the same first epoch...
    _train(tmp_path, tiny_splits, "part", config=_config(epochs=1, aug=config.aug))
    ckpt = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    ckpt["config"]["epochs"], ckpt["complete"] = 3, False  # ...as a 3-epoch run stopped there
    torch.save(ckpt, tmp_path / "part" / "checkpoint.pt")
    _train(tmp_path, tiny_splits, "part", config=config, resume=True)
    full = load_checkpoint(tmp_path / "full")
    part = load_checkpoint(tmp_path / "part")
    for key, value in full["state_dict"].items():
        torch.testing.assert_close(part["state_dict"][key], value, rtol=0, atol=0)
    cols = ["epoch", "train_loss", "test_loss", "test_accuracy"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "full" / "metrics.csv")[cols],
                                  pd.read_csv(tmp_path / "part" / "metrics.csv")[cols])


def test_finished_run_is_not_retrained(tmp_path, tiny_splits):
    _train(tmp_path, tiny_splits, config=_config(epochs=1))
    before = (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns
    result = _train(tmp_path, tiny_splits, config=_config(epochs=1))
    assert result.seconds == 0.0
    assert (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns == before


def test_unfinished_run_needs_resume_and_other_settings_refused(tmp_path, tiny_splits):
    _train(tmp_path, tiny_splits, config=_config(epochs=1))
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    ckpt["config"]["epochs"], ckpt["complete"] = 2, False
    torch.save(ckpt, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(RobustMnistError, match="--resume"):
        _train(tmp_path, tiny_splits, config=_config(epochs=2))
    with pytest.raises(RobustMnistError, match="other settings"):
        _train(tmp_path, tiny_splits, config=_config(epochs=2, lr=0.5))


def test_checkpoint_round_trip(tmp_path, tiny_splits):
    _train(tmp_path, tiny_splits, config=_config(epochs=1))
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["model"] == "baseline" and ckpt["complete"] and ckpt["epoch"] == 1
    assert ckpt["meta"]["data_md5"] == {} and "git_revision" in ckpt["meta"]
    model = model_from_checkpoint(ckpt)
    x = torch.randn(2, 1, 28, 28)
    assert model(x).shape == (2, 10)


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(RobustMnistError, match="corrupt"):
        load_checkpoint(bad)
    with pytest.raises(RobustMnistError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_with_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("side effect",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "robustmnist-checkpoint-v1", "x": Payload()}, path)
    with pytest.raises(RobustMnistError, match="other than weights"):
        load_checkpoint(path)


def test_checkpoint_of_other_architecture(tmp_path, tiny_splits):
    _train(tmp_path, tiny_splits, config=_config(epochs=1))
    ckpt = load_checkpoint(tmp_path / "run")
    ckpt["state_dict"]["fc1.weight"] = torch.zeros(10, 10)
    with pytest.raises(RobustMnistError, match="do not fit"):
        model_from_checkpoint(ckpt)
    ckpt["model"] = "vit"
    torch.save(ckpt, tmp_path / "vit.pt")
    with pytest.raises(RobustMnistError, match="unknown model"):
        load_checkpoint(tmp_path / "vit.pt")


@pytest.mark.parametrize(("kw", "match"), [({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"),
                                           ({"device": "tpu"}, "device")])
def test_bad_config(kw, match):
    with pytest.raises(RobustMnistError, match=match):
        _config(**kw).validate()


@pytest.mark.gpu
def test_cuda_epoch_with_augmentation(tmp_path, tiny_splits):
    result = _train(tmp_path, tiny_splits, config=_config(epochs=1, device="cuda",
                                                          aug=AugConfig.from_policy("thickness")))
    assert result.metrics[0]["test_accuracy"] > 0.1
