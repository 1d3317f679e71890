import shutil

import pytest
import torch
import torch.nn.functional as F

from robustmnist import RobustMnistError
from robustmnist.checkpoint import (
    FORMAT,
    Classifier,
    build_network,
    load_checkpoint,
    save_checkpoint,
)
from robustmnist.config import AugConfig, TrainConfig
from robustmnist.models import build_model

REQUIRED_KEYS = ["model", "state_dict", "epoch", "complete", "config", "meta"]


def _saved(tmp_path, name="checkpoint.pt", **config):
    """A fresh (untrained) baseline saved as a checkpoint; (path, model, config)."""
    torch.manual_seed(0)
    model = build_model("baseline").eval()
    cfg = TrainConfig(epochs=2, device="cpu", **config)
    path = tmp_path / name
    save_checkpoint(path, model, torch.optim.Adam(model.parameters()), cfg, 1, {"note": "x"})
    return path, model, cfg


def _payload(path):
    return torch.load(path, weights_only=True)


def _digits(n=50, seed=0):
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def test_round_trip_keeps_every_field(tmp_path):
    path, model, config = _saved(tmp_path, aug=AugConfig.from_policy("thick", p_untouched=0.5))
    ckpt = load_checkpoint(path)
    assert ckpt.path == path and ckpt.model == "baseline"
    assert ckpt.config == config  # nested AugConfig included
    assert (ckpt.epoch, ckpt.complete) == (1, False)  # 1 of 2 epochs
    assert ckpt.meta == {"note": "x"} and ckpt.optimizer is not None
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ckpt.state_dict[key], value, rtol=0, atol=0)
    assert ckpt.variant == "thick"  # no variant in meta: the policy
    assert ckpt.run == tmp_path.name  # <run>/checkpoint.pt: named by its folder


def test_run_name_and_variant_come_from_meta(tiny_run):
    ckpt = load_checkpoint(tiny_run)  # a run folder works as well as its checkpoint.pt
    assert ckpt.path == tiny_run / "checkpoint.pt"
    assert ckpt.identity() == {"run": "tiny-seed3", "model": "baseline", "variant": "none",
                               "seed": 3, "epochs": 2}
    assert ckpt.complete and ckpt.meta["data_md5"] == {} and "git_revision" in ckpt.meta


def test_file_not_named_checkpoint_is_named_by_its_stem(tmp_path):
    path, _, _ = _saved(tmp_path, "best.pt")
    assert load_checkpoint(path).run == "best"


def test_network_reproduces_the_saved_model(tmp_path):
    path, model, _ = _saved(tmp_path)
    net = build_network(load_checkpoint(path))
    assert not net.training
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(net(x), model(x))


def test_classifier_uses_the_checkpoints_normalisation(tmp_path):
    path, model, _ = _saved(tmp_path, mean=0.5, std=0.2)
    clf = Classifier.from_checkpoint(load_checkpoint(path))
    images = _digits()
    by_hand = model((images.float() / 255 - 0.5) / 0.2)
    torch.testing.assert_close(clf.log_proba(images), by_hand, rtol=1e-4, atol=1e-5)
    # ...not MNIST's default statistics
    assert not torch.allclose(clf.log_proba(images), model((images.float() / 255 - 0.1307) / 0.3081))


def test_classifier_batches_do_not_change_the_numbers(tmp_path):
    path, model, _ = _saved(tmp_path)
    clf = Classifier.from_checkpoint(load_checkpoint(path))
    images, labels = _digits(), torch.arange(50) % 10
    logp = model((images.float() / 255 - 0.1307) / 0.3081)
    torch.testing.assert_close(clf.log_proba(images, batch_size=7), clf.log_proba(images))
    nll, acc, pred = clf.evaluate(images, labels, batch_size=16)  # 16+16+16+2
    assert nll == pytest.approx(F.nll_loss(logp, labels).item(), rel=1e-5)
    assert acc == pytest.approx((logp.argmax(1) == labels).float().mean().item())
    torch.testing.assert_close(pred, logp.argmax(1))


def test_classifier_refuses_an_empty_set(tmp_path):
    path, _, _ = _saved(tmp_path)
    clf = Classifier.from_checkpoint(load_checkpoint(path))
    with pytest.raises(RobustMnistError, match="empty"):
        clf.evaluate(torch.zeros(0, 1, 28, 28, dtype=torch.uint8), torch.zeros(0, dtype=torch.long))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(RobustMnistError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(RobustMnistError, match="corrupt"):
        load_checkpoint(bad)
    for name, text in (("metrics.csv", "epoch,train_loss\n1,0.5\n"), ("hello.pt", "hello")):
        (tmp_path / name).write_text(text)  # text files: torch's legacy reader fails oddly
        with pytest.raises(RobustMnistError, match="corrupt or not a checkpoint"):
            load_checkpoint(tmp_path / name)
    path, _, _ = _saved(tmp_path)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RobustMnistError, match="corrupt"):
        load_checkpoint(cut)


def test_pickle_with_code_is_refused(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("side effect",))

    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "x": Payload()}, path)
    with pytest.raises(RobustMnistError, match="other than weights"):
        load_checkpoint(path)
    assert "side effect" not in capsys.readouterr().out


def test_other_format_is_refused(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(build_model("baseline").state_dict(), path)  # a bare state_dict
    with pytest.raises(RobustMnistError, match="not a robustmnist checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("key", REQUIRED_KEYS)
@pytest.mark.parametrize("how", ["missing", "wrong type"])
def test_malformed_checkpoint_is_one_clear_error(tmp_path, key, how):
    path, _, _ = _saved(tmp_path)
    payload = _payload(path)
    if how == "missing":
        del payload[key]
    else:
        payload[key] = [1, 2]
    torch.save(payload, path)
    with pytest.raises(RobustMnistError, match=rf"malformed checkpoint \(key '{key}' missing") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_weights_of_another_architecture_do_not_fit(tmp_path):
    path, _, _ = _saved(tmp_path)
    ckpt = load_checkpoint(path)
    ckpt.state_dict["fc1.weight"] = torch.zeros(10, 10)
    with pytest.raises(RobustMnistError, match="do not fit model 'baseline'"):
        build_network(ckpt)


def test_unknown_model_is_refused(tmp_path):
    path, _, _ = _saved(tmp_path)
    payload = _payload(path)
    payload["model"] = "vit"
    torch.save(payload, path)
    with pytest.raises(RobustMnistError, match="unknown model 'vit'"):
        load_checkpoint(path)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda c: c["aug"].update(colour=1), r"not valid here \(aug\.colour: unknown key"),
    (lambda c: c.update(epochs=0), r"not valid here \(epochs: must be >= 1"),
    (lambda c: c.update(aug="thick"), r"not valid here \(aug: expected a table"),
    (lambda c: c["aug"].update(policy="blur"), r"aug\.policy: unknown value 'blur'"),
])
def test_invalid_saved_config_is_one_clear_error(tmp_path, edit, match):
    path, _, _ = _saved(tmp_path)
    payload = _payload(path)
    edit(payload["config"])
    torch.save(payload, path)
    with pytest.raises(RobustMnistError, match=match):
        load_checkpoint(path)


def test_trained_run_round_trip(tmp_path, tiny_run, tiny_splits):
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt.run == "tiny-seed3"  # the name it was trained under, even when moved
    test = tiny_splits["test"]
    _, acc, _ = Classifier.from_checkpoint(ckpt).evaluate(test.images, test.labels)
    assert acc > 0.5  # trained: chance is 0.1
