import json
import os
import shutil
from pathlib import Path

import pytest

from robustmnist import RobustMnistError
from robustmnist.config import AugConfig, TrainConfig
from robustmnist.executors import LocalExecutor
from robustmnist.experiments import (
    load_experiment,
    pending_runs,
    resolve_path,
    run_experiment,
    sweep_is_current,
)
from robustmnist.perturb import DEFAULT_LEVELS

GOOD = """
name = "tiny"
description = "a tiny study"
output = "out"
report = "rep"
seeds = [0, 1]

[train]
epochs = 1
batch_size = 128
device = "cpu"

[sweep]
families = ["delta"]
delta = [-1.0, 1.0]

[[variants]]
name = "none"
policy = "none"

[[variants]]
name = "thick"
policy = "thick"
p_untouched = 0.5
"""


def _write(tmp_path, text, name="exp.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_file_mirrors_the_configs(tmp_path):
    exp = load_experiment(_write(tmp_path, GOOD))
    assert (exp.name, exp.description, exp.seeds) == ("tiny", "a tiny study", (0, 1))
    assert exp.train == TrainConfig(epochs=1, batch_size=128, device="cpu")
    assert [v.name for v in exp.variants] == ["none", "thick"]
    assert exp.variants[1].aug == AugConfig.from_policy("thick", p_untouched=0.5)
    assert exp.families == {"delta": [-1.0, 1.0]}
    # relative paths resolve against the file's folder, not the working directory
    assert (exp.output, exp.report) == (tmp_path / "out", tmp_path / "rep")


def test_runs_are_seed_major_with_full_configs(tmp_path):
    exp = load_experiment(_write(tmp_path, GOOD))
    runs = exp.runs()
    assert [(r.variant.name, r.seed) for r in runs] == [("none", 0), ("thick", 0), ("none", 1),
                                                        ("thick", 1)]
    thick1 = runs[3]
    assert thick1.config == TrainConfig(epochs=1, batch_size=128, device="cpu", seed=1,
                                        aug=exp.variants[1].aug)
    assert thick1.folder.root == tmp_path / "out" / "runs" / "thick-seed1"


def test_a_variant_overrides_train_settings_for_its_runs_only(tmp_path):
    exp = load_experiment(_write(tmp_path, GOOD.replace(
        'p_untouched = 0.5', 'p_untouched = 0.5\nlr_schedule = "cosine"\nepochs = 3\nlr = 1', 1)))
    assert exp.variants[1].aug == AugConfig.from_policy("thick", p_untouched=0.5)
    configs = {(r.variant.name, r.seed): r.config for r in exp.runs()}
    assert configs["thick", 1] == TrainConfig(epochs=3, batch_size=128, device="cpu", seed=1,
                                              lr=1.0, lr_schedule="cosine", aug=exp.variants[1].aug)
    assert isinstance(configs["thick", 1].lr, float)  # converted as [train]'s values are
    assert (configs["none", 1].lr_schedule, configs["none", 1].epochs) == ("constant", 1)
    recorded = exp.to_dict()["variants"]
    assert [v["train"] for v in recorded] == [{}, {"epochs": 3, "lr": 1.0, "lr_schedule": "cosine"}]


def test_out_override_keeps_the_report_with_the_results(tmp_path):
    exp = load_experiment(_write(tmp_path, GOOD), output=tmp_path / "trial")
    assert (exp.output, exp.report) == (tmp_path / "trial", tmp_path / "trial" / "report")


def test_defaults_name_and_paths_from_the_file(tmp_path):
    exp = load_experiment(_write(tmp_path, '[[variants]]\npolicy = "thin"\n', "study.toml"))
    assert exp.name == "study" and exp.seeds == (0,) and exp.train == TrainConfig()
    assert exp.variants[0].name == "thin"  # the policy names an unnamed variant
    assert exp.output == tmp_path / "results" / "study"
    assert exp.families == {f: list(levels) for f, levels in DEFAULT_LEVELS.items()}


@pytest.mark.parametrize(("old", "new", "match"), [
    ('epochs = 1', 'epochs = 1\nepohcs = 2', "key 'train.epohcs': unknown key"),
    ('epochs = 1', 'epochs = "ten"', "key 'train.epochs': expected an integer"),
    ('epochs = 1', 'epochs = 0', "key 'train.epochs': must be >= 1"),
    ('epochs = 1', 'epochs = true', "key 'train.epochs': expected an integer"),
    ('epochs = 1', 'seed = 3', "key 'train.seed': set seeds at the top level"),
    ('device = "cpu"', 'device = "tpu"', "key 'train.device'"),
    ('seeds = [0, 1]', 'seeds = [0, 0]', "key 'seeds': duplicate"),
    ('seeds = [0, 1]', 'seeds = []', "key 'seeds'"),
    ('seeds = [0, 1]', 'seeds = [4294967296]', "key 'seeds'"),
    ('seeds = [0, 1]', 'seeds = [0, 1]\nepochs = 2', "key 'epochs': unknown key.*go in \\[train\\]"),
    ('policy = "thick"', 'policy = "blur"', r"key 'variants\[1\].policy': unknown augmentation"),
    ('policy = "thick"', 'aug = "thick"', r"key 'variants\[1\].aug': unknown key"),  # the old layout
    ('p_untouched = 0.5', 'p_untouched = 2.0', r"key 'variants\[1\].p_untouched': must be <= 1"),
    ('p_untouched = 0.5', 'p_untouched = "half"', "expected a number"),
    ('p_untouched = 0.5', 'colour = 1', r"key 'variants\[1\].colour': unknown key"),
    ('p_untouched = 0.5', 'colour = 1', r"unknown key.*or a \[train\] field: model, epochs"),
    ('p_untouched = 0.5', 'lr_schedule = "step"', r"key 'variants\[1\].lr_schedule': .*cosine"),
    ('p_untouched = 0.5', 'epochs = 0', r"key 'variants\[1\].epochs': must be >= 1"),
    ('p_untouched = 0.5', 'seed = 4', r"key 'variants\[1\].seed': seeds are set at the top"),
    ('p_untouched = 0.5', 'device = "cuda"', r"key 'variants\[1\].device': the device is set once"),
    ('name = "thick"', 'name = "a|b"', r"key 'variants\[1\].name'"),
    ('name = "thick"', 'name = "none"', "duplicate variant names"),
    ('delta = [-1.0, 1.0]', 'delta = [-9.0]', "key 'sweep.delta'"),
    ('families = ["delta"]', 'families = ["blur"]', "key 'sweep.families'"),
    ('name = "tiny"', 'name = "a b"', "key 'name'"),
])
def test_validation_errors_name_file_key_reason(tmp_path, old, new, match):
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(RobustMnistError, match=match) as info:
        load_experiment(path)
    assert str(info.value).startswith(f"{path}: ")


def test_a_non_string_policy_is_blamed_not_the_name_it_would_give(tmp_path):
    path = _write(tmp_path, "[[variants]]\npolicy = 7\n", "study.toml")
    with pytest.raises(RobustMnistError, match=r"key 'variants\[0\].policy': expected a policy name"):
        load_experiment(path)


def test_compare_pairs_are_checked_and_recorded(tmp_path):
    exp = load_experiment(_write(tmp_path, 'compare = [["thick", "none"]]\n' + GOOD))
    assert exp.compare == (("thick", "none"),)
    assert exp.to_dict()["compare"] == [["thick", "none"]]
    for bad, match in ((' [["thick", "pen"]]', "no variant named 'pen'"),
                       (' [["thick", "thick"]]', "two different variant names"),
                       (' ["thick"]', "two different variant names"),
                       (' [["thick", "none"], ["none", "thick"]]', "listed twice")):
        key = r"key 'compare\[[01]\]': (expected |the pair .* is )?"
        with pytest.raises(RobustMnistError, match=key + match):
            load_experiment(_write(tmp_path, "compare =" + bad + "\n" + GOOD))


def test_not_toml(tmp_path):
    with pytest.raises(RobustMnistError, match="not valid TOML"):
        load_experiment(_write(tmp_path, "name = "))


@pytest.mark.parametrize("preset", ["quickstart", "thickness"])
def test_presets_are_valid(preset):
    exp = load_experiment(resolve_path(preset))
    assert exp.name == preset and exp.variants[0].name == "none"
    assert all(v.aug.policy == v.name for v in exp.variants)
    # a built-in preset's paths are relative to the current folder, not the package
    assert (exp.output, exp.report) == (Path("results") / preset, Path("reports") / preset)
    # experiments/<preset>.toml (a link to the preset, as the README runs it) writes there too
    linked = load_experiment(Path(__file__).resolve().parents[1] / "experiments" / f"{preset}.toml")
    assert (linked.output, linked.report) == (exp.output, exp.report)


def test_thickness_preset_is_the_full_study():
    exp = load_experiment(resolve_path("thickness"))
    assert {v.name for v in exp.variants} == {"none", "thickness", "thin", "thick", "thickness+affine",
                                              "pen", "pen+thickness+affine"}
    assert len(exp.seeds) >= 3 and exp.train.epochs == 20
    assert {"delta", "absolute", "ladder", "photo"} == set(exp.families)


def test_unknown_preset():
    with pytest.raises(RobustMnistError, match="quickstart"):
        resolve_path("nonexistent-experiment")


def test_executor_trains_only_missing_runs_and_changes_are_detected(tmp_path, tiny_data_dir):
    exp = load_experiment(_write(tmp_path, GOOD))
    todo, complete = pending_runs(exp)
    assert (len(todo), complete) == (4, 0)
    done = []
    LocalExecutor(1).train(todo, None, lambda run_dir, _s: done.append(run_dir))
    assert done == [run.folder.root for run in exp.runs()]
    assert pending_runs(exp) == ([], 4)
    # Delete one run: only it is pending.
    shutil.rmtree(exp.runs()[3].folder.root)
    todo, complete = pending_runs(exp)
    assert complete == 3 and [(r.variant.name, r.seed) for r in todo] == [("thick", 1)]
    # A changed setting is detected, not mixed with the old runs.
    changed = load_experiment(_write(tmp_path, GOOD.replace("p_untouched = 0.5", "p_untouched = 0.1")))
    with pytest.raises(RobustMnistError, match="changed since"):
        pending_runs(changed)
    overridden = load_experiment(_write(tmp_path, GOOD.replace(
        "p_untouched = 0.5", 'p_untouched = 0.5\nlr_schedule = "cosine"')))  # a variant's [train] too
    with pytest.raises(RobustMnistError, match=r"variant 'thick' changed since .*thick-seed0 was "
                       r"trained \(lr_schedule: saved 'constant', asked 'cosine'\); restore it"):
        pending_runs(overridden)


def test_run_experiment_then_rerun_does_nothing(tmp_path, tiny_data_dir):
    exp = load_experiment(_write(tmp_path, GOOD.replace("seeds = [0, 1]", "seeds = [0]")))
    first = run_experiment(exp, LocalExecutor(1))
    assert (first.total, first.trained, first.swept) == (2, 2, True)
    assert first.report == tmp_path / "rep" and (first.report / "README.md").is_file()
    assert sweep_is_current(exp)
    second = run_experiment(exp, LocalExecutor(1))
    assert (second.total, second.trained, second.swept) == (2, 0, False)
    record = json.loads(exp.layout.record.read_text())
    assert record["experiment"]["name"] == "tiny"
    assert [i["trained_runs"] for i in record["invocations"]] == [2, 0]
    # A retrained checkpoint makes the sweep stale.
    checkpoint = exp.runs()[0].folder.checkpoint
    os.utime(checkpoint, (1, 1))
    assert not sweep_is_current(exp)


def test_a_report_folder_of_the_user_s_is_refused_before_any_training(tmp_path, tiny_data_dir):
    exp = load_experiment(_write(tmp_path, GOOD))
    exp.report.mkdir()
    (exp.report / "README.md").write_text("the user's own notes")
    with pytest.raises(RobustMnistError, match="did not create it"):
        run_experiment(exp, data_dir=tiny_data_dir)
    assert not (exp.output / "runs").exists()  # nothing trained
    assert (exp.report / "README.md").read_text() == "the user's own notes"
