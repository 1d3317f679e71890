import numpy as np
import pytest

from robustmnist import RobustMnistError, pen
from robustmnist.measure import measure_thickness
from robustmnist.perturb import (
    DEFAULT_LEVELS,
    FAMILIES,
    build_set,
    build_sets,
    cache_path,
    check_level,
    load_or_build,
    load_or_build_levels,
    perturb,
    perturb_levels,
)


@pytest.fixture
def digits(tiny_arrays):
    return tiny_arrays["test"][0][:24]


@pytest.mark.parametrize(("family", "level", "match"), [
    ("delta", 9.0, "outside"), ("absolute", 0.0, "outside"), ("ladder", 1.5, "choose one of"),
    ("delta", 0.3, "multiple of 0.25"), ("blur", 1.0, "unknown family"),
    ("photo", 0.0, "outside"), ("photo", 0.5, "of the digit's height"),
    ("photo", 0.0, r"the defaults: 0\.03, 0\.05"), ("clean", 1.0, "one level, 0; drop --level"),
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


@pytest.mark.parametrize(("level", "op", "side"), [(-2.0, "erode", 3), (-1.0, "erode", 2),
                                                   (1.0, "dilate", 2), (2.0, "dilate", 3),
                                                   (3.0, "dilate", 4), (4.0, "dilate", 5)])
def test_ladder_is_28x28_opencv_morphology(digits, level, op, side):
    """Rung k is OpenCV's (|k|+1)-square, default anchor; +4 is the 5x5 dilation of the issue."""
    import cv2

    np.testing.assert_array_equal(perturb(digits, "ladder", level)[3],
                                  getattr(cv2, op)(digits[3], np.ones((side, side), np.uint8)))


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


def _redraw_reference(image, thickness):
    """The `absolute` algorithm as first written (one skeleton per digit and level)."""
    import cv2
    from skimage.morphology import skeletonize

    from robustmnist.measure import UPSCALE, binarise, upscale

    skeleton = skeletonize(binarise(upscale(image)))
    if not skeleton.any():
        return image.copy()
    distance = cv2.distanceTransform((~skeleton).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ink = np.clip(thickness * UPSCALE / 2 + 0.5 - distance, 0.0, 1.0).astype(np.float32)
    small = cv2.resize(ink, image.shape[::-1], interpolation=cv2.INTER_AREA)
    return np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)


def test_absolute_is_bit_identical_to_the_first_algorithm(digits):
    levels = [1.0, 2.5, 6.0]
    shared = perturb_levels(digits, "absolute", levels)
    for k, level in enumerate(levels):
        expected = np.stack([_redraw_reference(d, level) for d in digits])
        np.testing.assert_array_equal(shared[k], expected)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("clean", "photo")])
def test_levels_built_together_equal_levels_built_alone(digits, family):
    levels = list(DEFAULT_LEVELS[family])
    together = build_sets(digits, family, levels, workers=1)
    for level, pset in zip(levels, together, strict=True):
        alone = build_set(digits, family, level, workers=1)
        np.testing.assert_array_equal(pset.images, alone.images)
        # OpenCV's precise distance transform (inside the measure) varies by ~1 ulp between
        # calls on the same input, so measured thickness agrees to ~1e-6 px, not bit for bit.
        np.testing.assert_allclose(pset.thickness, alone.thickness, rtol=0, atol=1e-5)
        assert pset.level == level and pset.family == family


def test_parallel_chunks_build_the_same_sets(digits):
    one = build_sets(digits, "absolute", [2.0, 4.0], workers=1)
    two = build_sets(digits, "absolute", [2.0, 4.0], workers=2)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_allclose(a.thickness, b.thickness, rtol=0, atol=1e-5)


def test_levels_cache_builds_only_what_is_missing(tmp_path, digits):
    (first, built), = load_or_build_levels(digits, "absolute", [3.0], "md5x", tmp_path)
    assert built
    results = load_or_build_levels(digits, "absolute", [2.0, 3.0, 2.0], "md5x", tmp_path)
    assert [b for _, b in results] == [True, False, True]
    np.testing.assert_array_equal(results[1][0].images, first.images)
    np.testing.assert_array_equal(results[0][0].images, results[2][0].images)
    assert all(not b for _, b in load_or_build_levels(digits, "absolute", [2.0, 3.0], "md5x", tmp_path))


@pytest.fixture(scope="module")
def photo_digits(tiny_arrays):
    return tiny_arrays["test"][0][:6]


@pytest.fixture(scope="module")
def photo_sets(photo_digits):
    return build_sets(photo_digits, "photo", [0.04, 0.12, 0.25], workers=1)


def test_photo_sets_are_mnist_shaped(photo_sets, photo_digits):
    for pset in photo_sets:
        assert pset.images.shape == photo_digits.shape and pset.images.dtype == np.uint8
        assert pset.thickness.shape == (len(photo_digits),)
        assert (pset.images.reshape(len(photo_digits), -1).max(1) == 255).all()  # read back, peak ink


def test_photo_is_deterministic_per_digit(photo_sets, photo_digits):
    again = perturb(photo_digits[::-1], "photo", 0.12)[::-1]  # other order: same photos
    np.testing.assert_array_equal(again, photo_sets[1].images)


def test_thicker_pen_fraction_measures_thicker(photo_sets):
    means = [pset.mean_thickness for pset in photo_sets]
    assert means == sorted(means)
    assert means[-1] - means[0] > 2.0  # 0.04 -> 0.25 of the height: ~0.8 -> ~5 px at 28x28


def test_photo_cache_and_key(tmp_path, photo_digits, photo_sets, monkeypatch):
    first, built = load_or_build(photo_digits, "photo", 0.12, "md5x", tmp_path)
    assert built
    np.testing.assert_array_equal(first.images, photo_sets[1].images)
    _, built = load_or_build(photo_digits, "photo", 0.12, "md5x", tmp_path)
    assert not built
    path = cache_path(tmp_path, "photo", 0.12, "md5x")
    monkeypatch.setattr(pen, "PHOTO_VERSION", pen.PHOTO_VERSION + 1)
    assert cache_path(tmp_path, "photo", 0.12, "md5x") != path


def test_photo_key_follows_the_predict_source(tmp_path, monkeypatch):
    import inspect

    path = cache_path(tmp_path, "photo", 0.12, "md5x")
    real = inspect.getsource
    monkeypatch.setattr(inspect, "getsource", lambda obj: real(obj) + "# changed\n")
    assert cache_path(tmp_path, "photo", 0.12, "md5x") != path


def test_photo_thickness_is_on_the_pixel_scale(photo_sets):
    # After predict's 20x20 box fit a pen of fraction f is about 20 f px (design note).
    for pset in photo_sets:
        assert np.nanmedian(measure_thickness(pset.images, workers=1)) == pytest.approx(
            20 * pset.level, abs=1.0)
