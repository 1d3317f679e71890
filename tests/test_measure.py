from pathlib import Path

import cv2
import numpy as np
import pytest

from robustmnist.measure import ink_ratio, measure_thickness

DATA = Path(__file__).parent / "data" / "morpho_subset.npz"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "t10k-morpho.csv"


def test_conformance_on_fixed_subset():
    with np.load(DATA) as z:
        images, reference = z["images"], z["thickness"]
    ours = measure_thickness(images)
    assert np.corrcoef(ours, reference)[0, 1] >= 0.98
    assert abs(np.mean(ours - reference)) <= 0.1


@pytest.mark.parametrize("width", [2, 3, 4, 6])
def test_drawn_stroke_of_known_width(width):
    # A long bar `width` px wide, anti-aliased by drawing at x8 and area-downsampling.
    big = np.zeros((224, 224), np.uint8)
    cv2.rectangle(big, (112 - 4 * width, 32), (112 + 4 * width - 1, 192), 255, -1)
    image = cv2.resize(big, (28, 28), interpolation=cv2.INTER_AREA)
    assert measure_thickness(image[None])[0] == pytest.approx(width, abs=0.3)


def test_blank_digit_is_nan_and_shapes_accepted():
    out = measure_thickness(np.zeros((2, 1, 28, 28), np.uint8))
    assert out.shape == (2,) and np.isnan(out).all()
    with pytest.raises(ValueError, match="uint8"):
        measure_thickness(np.zeros((2, 28, 28), np.float32))


def test_parallel_equals_serial():
    with np.load(DATA) as z:
        images = z["images"][:40]
    np.testing.assert_array_equal(measure_thickness(images, workers=1),
                                  measure_thickness(images, workers=2))


def test_ink_ratio():
    a = np.zeros((2, 28, 28), np.uint8)
    a[:, 10:20, 10:12] = 100
    b = a.copy()
    b[0, 10:20, 12:14] = 100
    np.testing.assert_allclose(ink_ratio(b, a), [2.0, 1.0])
    assert np.isnan(ink_ratio(a[:1] * 0, a[:1] * 0))[0]


@pytest.mark.slow
@pytest.mark.realdata
def test_conformance_full_test_set():
    if not REFERENCE.is_file():
        pytest.skip("../shared/reference/t10k-morpho.csv is not present (user clone)")
    import pandas as pd

    from robustmnist.data import load_split

    images = load_split("test").images[:, 0].numpy()
    reference = pd.read_csv(REFERENCE)["thickness"].to_numpy()
    ours = measure_thickness(images)
    assert np.corrcoef(ours, reference)[0, 1] >= 0.98
    assert abs(np.mean(ours - reference)) <= 0.1


def _thickness_on_whole_image(image):
    """The definition computed on the whole 112x112 image, with SciPy's exact Euclidean
    distance transform (independent of OpenCV's and of the ink box): what the measure must
    reproduce exactly."""
    from scipy.ndimage import distance_transform_edt
    from skimage.morphology import skeletonize

    from robustmnist.measure import binarise, upscale

    binary = binarise(upscale(image))
    skeleton = skeletonize(binary)
    if not skeleton.any():
        return np.nan
    return 2.0 * distance_transform_edt(binary)[skeleton].mean() / 4


def _shifted(image, dy, dx):
    """`image` moved by (dy, dx) px, zeros coming in (no wrap-around)."""
    out = np.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_ink_box_measure_equals_the_whole_image():
    with np.load(DATA) as z:
        images = z["images"][:60]
    # A digit pushed against each edge and into a corner: its box then meets the image border.
    rows, cols = np.flatnonzero(images[0].any(1)), np.flatnonzero(images[0].any(0))
    pushes = [(-rows[0], 0), (27 - rows[-1], 0), (0, -cols[0]), (0, 27 - cols[-1]),
              (-rows[0], 27 - cols[-1])]
    shifted = [_shifted(images[0], dy, dx) for dy, dx in pushes]
    assert all(s[0].any() or s[-1].any() or s[:, 0].any() or s[:, -1].any() for s in shifted)
    corner = np.zeros((28, 28), np.uint8)
    corner[:6, :5] = 255
    faint = (images[1] // 40).astype(np.uint8)  # a low-contrast digit, same threshold rule
    batch = np.stack([*images, *shifted, corner, faint, np.zeros((28, 28), np.uint8)])
    expected = np.array([_thickness_on_whole_image(im) for im in batch])
    np.testing.assert_array_equal(measure_thickness(batch, workers=1), expected)
