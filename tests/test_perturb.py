import numpy as np
import pytest

from robustmnist import RobustMnistError
from robustmnist.perturb import cache_path, check_level, load_or_build, perturb


@pytest.fixture
def digits(tiny_arrays):
    return tiny_arrays["test"][0][:24]


@pytest.mark.parametrize(("family", "level", "match"), [
    ("delta", 9.0, "outside"), ("absolute", 0.0, "outside"), ("ladder", 1.5, "choose one of"),
    ("delta", 0.3, "multiple of 0.25"), ("blur", 1.0, "unknown family"),
])
def test_bad_levels(family, level, match):
    with pytest.raises(RobustMnistError, match=match):
        check_level(family, level)


def test_delta_orders_ink(digits):
    ink = [perturb(digits, "delta", d).astype(float).sum() for d in (-1.0, -0.5, 0.0, 0.5, 1.0, 2.0)]
    assert ink == sorted(ink)


def test_absolute_orders_thickness(digits):
    from robustmnist.measure import measure_thickness

    means = [np.nanmean(measure_thickness(perturb(digits, "absolute", t))) for t in (2.0, 3.0, 5.0)]
    assert means == sorted(means)
    assert means[1] == pytest.approx(3.0, abs=0.5)


def test_ladder_is_28x28_morphology(digits):
    import cv2

    np.testing.assert_array_equal(perturb(digits, "ladder", 2.0)[3],
                                  cv2.dilate(digits[3], np.ones((3, 3), np.uint8)))


def test_cache_reuse_and_corruption(tmp_path, digits):
    first, built = load_or_build(digits, "delta", 1.0, "md5x", tmp_path)
    assert built
    again, built = load_or_build(digits, "delta", 1.0, "md5x", tmp_path)
    assert not built
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.thickness, again.thickness)
    path = cache_path(tmp_path, "delta", 1.0, "md5x")
    path.write_bytes(path.read_bytes()[:200])  # truncated cache file
    rebuilt, built = load_or_build(digits, "delta", 1.0, "md5x", tmp_path)
    assert built
    np.testing.assert_array_equal(rebuilt.images, first.images)


def test_changed_parameters_change_the_cache_key(tmp_path):
    a = cache_path(tmp_path, "delta", 1.0, "md5x")
    assert a != cache_path(tmp_path, "delta", 1.5, "md5x")
    assert a != cache_path(tmp_path, "delta", 1.0, "other-source")
