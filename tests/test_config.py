import dataclasses
import math

import pytest

from robustmnist import RobustMnistError
from robustmnist.config import (
    MAX_SEED,
    POLICIES,
    AugConfig,
    TrainConfig,
    check,
    check_value,
    from_table,
)


def test_defaults_are_the_classic_recipe_and_valid():
    config = check(TrainConfig())
    assert (config.model, config.epochs, config.batch_size, config.lr) == ("baseline", 20, 512, 1e-3)
    assert config.aug == AugConfig() and config.aug.is_identity


@pytest.mark.parametrize(("table", "match"), [
    ({"epohcs": 3}, r"^epohcs: unknown key; known keys: .*epochs"),
    ({"epochs": "ten"}, r"^epochs: expected an integer, got 'ten'"),
    ({"epochs": 2.0}, r"^epochs: expected an integer, got 2\.0"),
    ({"epochs": True}, r"^epochs: expected an integer, got True"),     # bool is not an int
    ({"lr": False}, r"^lr: expected a number, got False"),
    ({"lr": math.inf}, r"^lr: must be a finite number"),
    ({"lr": math.nan}, r"^lr: must be a finite number"),
    ({"std": -math.inf}, r"^std: must be a finite number"),
    ({"epochs": 0}, r"^epochs: must be >= 1, got 0$"),
    ({"epochs": 1001}, r"^epochs: must be <= 1000, got 1001$"),
    ({"lr": 0.0}, r"^lr: must be > 0, got 0\.0$"),                    # open lower bound
    ({"batch_size": -5}, r"^batch_size: must be >= 1"),
    ({"seed": -1}, r"^seed: must be >= 0"),
    ({"seed": MAX_SEED + 1}, rf"^seed: must be <= {MAX_SEED}, got {MAX_SEED + 1}$"),
    ({"device": "tpu"}, r"^device: unknown device 'tpu'"),
    ({"device": "cpu\x00"}, r"^device: contains a NUL character"),
    ({"model": "vit"}, r"^model: unknown value 'vit'; choose one of baseline"),
    ({"model": 3}, r"^model: expected a string, got 3"),
])
def test_from_table_rejects_with_key_and_reason(table, match):
    with pytest.raises(RobustMnistError, match=match):
        from_table(TrainConfig, table)


def test_largest_seed_is_accepted():
    assert from_table(TrainConfig, {"seed": MAX_SEED}).seed == MAX_SEED


def test_prefix_names_the_table():
    with pytest.raises(RobustMnistError, match=r"^train\.epochs: must be >= 1"):
        from_table(TrainConfig, {"epochs": 0}, "train.")
    with pytest.raises(RobustMnistError, match=r"^train\.colour: unknown key"):
        from_table(TrainConfig, {"colour": 1}, "train.")


def test_nested_fields_are_not_table_keys():
    # `aug` is passed built (nested), so a table may not set it as well.
    with pytest.raises(RobustMnistError, match=r"^aug: unknown key"):
        from_table(TrainConfig, {"aug": {}}, aug=AugConfig())


def test_integers_are_accepted_as_floats():
    config = from_table(TrainConfig, {"lr": 1, "epochs": 3})
    assert config.lr == 1.0 and isinstance(config.lr, float) and config.epochs == 3


def test_check_value_converts_and_checks():
    assert check_value("x", float, 2, {"lo": 0, "hi": 2}) == 2.0
    with pytest.raises(RobustMnistError, match=r"^x: must be <= 2, got 3\.0$"):
        check_value("x", float, 3, {"hi": 2})
    with pytest.raises(RobustMnistError, match=r"^flag: expected true or false, got 1$"):
        check_value("flag", bool, 1, {})


def test_check_validates_a_built_instance():
    with pytest.raises(RobustMnistError, match=r"^p_untouched: must be <= 1, got 1\.5$"):
        check(TrainConfig(aug=AugConfig(p_untouched=1.5)))  # nested configs too
    with pytest.raises(RobustMnistError, match=r"^lr: must be > 0"):
        TrainConfig(lr=-1.0).validate()


@pytest.mark.parametrize("aug", [AugConfig(), AugConfig.from_policy("thickness+affine", p_untouched=0.4)])
def test_train_config_dict_round_trip(aug):
    config = TrainConfig(epochs=3, batch_size=32, lr=2e-3, seed=7, device="cpu", mean=0.5,
                         std=0.25, aug=aug)
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_from_dict_checks_the_nested_table():
    d = TrainConfig().to_dict()
    d["aug"]["delta_max_px"] = 9.0
    with pytest.raises(RobustMnistError, match=r"^aug\.delta_max_px: must be <= 4"):
        TrainConfig.from_dict(d)


def test_result_fields_leave_out_only_the_device():
    fields = TrainConfig(device="cpu").result_fields()
    assert set(fields) == {f.name for f in dataclasses.fields(TrainConfig)} - {"device"}
    assert TrainConfig(device="cpu").result_fields() == TrainConfig(device="auto").result_fields()


@pytest.mark.parametrize("policy", list(POLICIES))
def test_policies_set_only_their_own_fields(policy):
    config = AugConfig.from_policy(policy)
    assert config.policy == policy
    for f in dataclasses.fields(AugConfig):
        expected = POLICIES[policy].get(f.name, f.default) if f.name != "policy" else policy
        assert getattr(config, f.name) == expected, f.name


def test_from_policy_overrides_and_ignores_none():
    config = AugConfig.from_policy("thickness", delta_min_px=-0.5, p_untouched=None)
    assert (config.delta_min_px, config.delta_max_px, config.p_untouched) == (-0.5, 2.0, 0.2)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"delta_min_px": 1.0, "delta_max_px": -1.0}, r"range \[1, -1\] px is invalid"),
    ({"delta_max_px": 4.5}, r"^delta_max_px: must be <= 4, got 4\.5$"),
    ({"delta_min_px": -2.5}, r"^delta_min_px: must be >= -2, got -2\.5$"),
    ({"p_untouched": 1.5}, r"^p_untouched: must be <= 1"),
    ({"affine": 1}, r"^affine: expected true or false"),
    ({"colour": 1}, r"^colour: unknown key"),
])
def test_bad_policy_parameters(kwargs, match):
    with pytest.raises(RobustMnistError, match=match):
        AugConfig.from_policy("thickness", **kwargs)


def test_unknown_policy():
    with pytest.raises(RobustMnistError, match="unknown augmentation 'blur'"):
        AugConfig.from_policy("blur")
