import pytest

from robustmnist import RobustMnistError
from robustmnist.experiments import (
    PRESETS_DIR,
    load_experiment,
    pending_runs,
    resolve_path,
    train_all,
)

GOOD = """
name = "tiny"
output = "{out}"
epochs = 1
seeds = [0, 1]
batch_size = 128
device = "cpu"

[sweep]
families = ["delta"]
delta = [-1.0, 1.0]

[[variants]]
name = "none"
aug = "none"

[[variants]]
name = "thick"
aug = "thick"
p_untouched = 0.5
"""


def _write(tmp_path, text):
    path = tmp_path / "exp.toml"
    path.write_text(text.replace("{out}", str(tmp_path / "out")))
    return path


def test_good_file(tmp_path):
    exp = load_experiment(_write(tmp_path, GOOD))
    assert exp.name == "tiny" and exp.seeds == (0, 1) and exp.train.epochs == 1
    assert [v.name for v in exp.variants] == ["none", "thick"]
    assert exp.variants[1].aug.p_untouched == 0.5 and exp.variants[1].aug.delta_max_px == 2.0
    assert exp.families == {"delta": [-1.0, 1.0]}
    assert len(exp.runs()) == 4


@pytest.mark.parametrize(("old", "new", "match"), [
    ('epochs = 1', 'epochs = 1\nepohcs = 2', "key 'epohcs': unknown key"),
    ('epochs = 1', 'epochs = "ten"', "key 'epochs': expected an integer"),
    ('epochs = 1', 'epochs = 0', "key 'epochs': must be >= 1"),
    ('seeds = [0, 1]', 'seeds = [0, 0]', "key 'seeds': duplicate"),
    ('seeds = [0, 1]', 'seeds = []', "key 'seeds'"),
    ('aug = "thick"', 'aug = "blur"', r"variants\[1\].aug': unknown policy"),
    ('p_untouched = 0.5', 'p_untouched = 2.0', "p_untouched"),
    ('p_untouched = 0.5', 'p_untouched = "half"', "expected a number"),
    ('p_untouched = 0.5', 'colour = 1', "unknown key"),
    ('delta = [-1.0, 1.0]', 'delta = [-9.0]', "key 'sweep.delta'"),
    ('families = ["delta"]', 'families = ["blur"]', "key 'sweep.families'"),
    ('name = "thick"', 'name = "none"', "duplicate variant names"),
    ('device = "cpu"', 'device = "tpu"', "device"),
])
def test_validation_errors_name_file_key_reason(tmp_path, old, new, match):
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(RobustMnistError, match=match) as info:
        load_experiment(path)
    assert str(path) in str(info.value)


def test_not_toml(tmp_path):
    with pytest.raises(RobustMnistError, match="not valid TOML"):
        load_experiment(_write(tmp_path, "name = "))


@pytest.mark.parametrize("preset", ["quickstart", "thickness"])
def test_presets_are_valid(preset):
    exp = load_experiment(resolve_path(preset))
    assert exp.variants[0].name == "none"
    assert (PRESETS_DIR / f"{preset}.toml").is_file()


def test_thickness_preset_is_the_full_study():
    exp = load_experiment(resolve_path("thickness"))
    assert {v.name for v in exp.variants} == {"none", "thickness", "thin", "thick", "thickness+affine"}
    assert len(exp.seeds) >= 3 and exp.train.epochs == 20
    assert {"delta", "absolute"} <= set(exp.families)


def test_resume_trains_only_missing_runs_and_detects_changes(tmp_path, tiny_data_dir):
    path = _write(tmp_path, GOOD)
    exp = load_experiment(path)
    done = []
    train_all(exp, on_done=lambda run, *_: done.append(run))
    assert len(done) == 4
    assert pending_runs(exp) == ([], 4)
    again = []
    assert train_all(exp, on_done=lambda run, *_: again.append(run)) == 0.0 and again == []
    # Delete one run: only it is retrained.
    import shutil

    shutil.rmtree(exp.run_dir(exp.variants[1], 1))
    todo, complete = pending_runs(exp)
    assert complete == 3 and [(v.name, s) for v, s, *_ in todo] == [("thick", 1)]
    # A changed setting is detected, not mixed with the old runs.
    changed = load_experiment(_write(tmp_path, GOOD.replace("p_untouched = 0.5", "p_untouched = 0.1")))
    with pytest.raises(RobustMnistError, match="changed since"):
        pending_runs(changed)


def test_unknown_preset():
    with pytest.raises(RobustMnistError, match="quickstart"):
        resolve_path("nonexistent-experiment")
