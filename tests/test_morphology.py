import math

import cv2
import numpy as np
import pytest
import torch

from robustmnist import morphology
from robustmnist.morphology import LADDER, apply_stroke_delta, dilate, element, erode

ELEMENTS = [("square", 2), ("square", 3), ("square", 4), ("square", 5), ("disk", 2), ("disk", 3), ("disk", 5)]
CV_OPS = {"dilate": (dilate, cv2.dilate), "erode": (erode, cv2.erode)}


def _hand_made() -> np.ndarray:
    img = np.zeros((9, 9), np.uint8)
    img[2:7, 4] = 200   # a vertical stroke
    img[4, 1:8] = 120   # a fainter horizontal stroke
    img[0, 0] = 255     # a corner pixel: borders must behave like OpenCV's default
    img[8, 8] = 90
    return img


def _random(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (13, 17), dtype=np.uint8)


@pytest.fixture(params=["square fast path", "kornia only"])
def engine(request, monkeypatch):
    """Run a test with the CPU square fast path on, then with Kornia doing every element."""
    if request.param == "kornia only":
        monkeypatch.setattr(morphology, "_square_on_cpu", lambda x, shape: False)
    return request.param


@pytest.mark.parametrize(("shape", "size"), ELEMENTS)
@pytest.mark.parametrize("op", list(CV_OPS))
@pytest.mark.parametrize("image", [_hand_made(), _random(0), _random(1)], ids=["hand", "rand0", "rand1"])
def test_equals_opencv(shape, size, op, image, engine):
    ours, theirs = CV_OPS[op]
    x = torch.from_numpy(image).float()[None, None]
    expected = theirs(image, element(shape, size))  # OpenCV's default anchor and border
    np.testing.assert_array_equal(ours(x, shape, size)[0, 0].numpy().astype(np.uint8), expected)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("mirrored", [False, True])
@pytest.mark.parametrize("op", list(CV_OPS))
def test_square_fast_path_is_bit_identical_to_kornia(size, mirrored, op, monkeypatch):
    """The CPU square path (training's hot path) computes exactly what Kornia computes,
    borders, mirrored anchors, several channels and non-finite values included."""
    x = torch.rand(6, 2, 11, 9, generator=torch.Generator().manual_seed(size))
    x[x < 0.4] = 0
    x[0, 0, 0, 0], x[1, 1, 5, 4], x[2, 0, 10, 8] = float("inf"), -float("inf"), float("nan")
    ours = CV_OPS[op][0](x, "square", size, mirrored)
    monkeypatch.setattr(morphology, "_square_on_cpu", lambda x, shape: False)
    torch.testing.assert_close(ours, CV_OPS[op][0](x, "square", size, mirrored),
                               rtol=0, atol=0, equal_nan=True)


def test_hand_computed_2x2_dilation():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = 1
    out = dilate(x, "square", 2)[0, 0]
    # OpenCV anchor (1, 1): a pixel spreads to its right and bottom neighbours.
    expected = torch.zeros(4, 4)
    expected[1:3, 1:3] = 1
    torch.testing.assert_close(out, expected)


def test_mixed_batch_equals_each_sample_alone():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.random((9, 1, 12, 12), dtype=np.float32))
    levels = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.5, 1.0, 1.7, 2.6, 4.0])
    batch = apply_stroke_delta(x, levels)
    for i in range(len(x)):
        alone = apply_stroke_delta(x[i:i + 1], levels[i:i + 1])
        assert torch.equal(batch[i:i + 1], alone)  # to the bit: a resumed run replays its draws


def test_levels_are_the_hat_weighted_sum_of_the_rungs_to_the_bit(engine):
    """The batched rows (gathered, summed, put back) give the textbook blend's floats: the
    identity weight first, then the 1-px rung, the 2-px rung and so on up to the level's
    upper rung (the full OpenCV-anchored square, not the chained 2x2 steps), in that order."""
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.random((96, 1, 14, 14), dtype=np.float32))
    levels = torch.from_numpy(rng.uniform(-2, 4, 96).astype(np.float32))
    levels[::5] = 0.0
    levels[1::7] = torch.tensor([-2.0, -1.0, 1.0, 2.0, -1.5, 0.5, 1.5, -0.5, 2.0, -2.0, 3.0, 4.0,
                                 2.5, 3.5])[:len(levels[1::7])]
    def weight(d, rung):  # float32, as the levels are
        return (1 - (d - rung).abs()).clamp(min=0)

    got_all = apply_stroke_delta(x, levels)
    for i in range(len(x)):
        d, xi = levels[i], x[i:i + 1]
        sign = 1 if d > 0 else -1
        expected = xi * weight(d, 0)
        for k in range(1, math.ceil(abs(float(d))) + 1):  # each rung up to the level's, in order
            expected = expected + LADDER[k * sign](xi) * weight(d, k * sign)
        got = got_all[i:i + 1]
        assert torch.equal(got, expected.clamp(0, 1)), (i, d)


@pytest.mark.parametrize("level", sorted(LADDER))
def test_integer_levels_are_the_ladder_rungs(level):
    x = torch.rand(3, 1, 10, 10)
    torch.testing.assert_close(apply_stroke_delta(x, torch.full((3,), float(level))), LADDER[level](x))


def test_fractional_level_blends_neighbouring_rungs():
    x = torch.rand(2, 1, 10, 10)
    out = apply_stroke_delta(x, torch.tensor([1.25, 1.25]))
    torch.testing.assert_close(out, 0.75 * LADDER[1](x) + 0.25 * LADDER[2](x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keeps_device_dtype_and_range(device, dtype):
    x = torch.rand(6, 1, 28, 28, device=device, dtype=dtype)
    out = apply_stroke_delta(x, torch.linspace(-2, 4, 6))
    assert out.device == x.device and out.dtype == dtype
    assert out.min() >= 0 and out.max() <= 1


def test_bad_inputs():
    with pytest.raises(ValueError, match="float tensor"):
        dilate(torch.zeros(28, 28), "square", 3)
    with pytest.raises(ValueError, match="one level per sample"):
        apply_stroke_delta(torch.zeros(2, 1, 5, 5), torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        element("star", 3)  # type: ignore[arg-type]


def _digits_u8(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = (torch.rand(n, 1, 16, 16, generator=g) ** 3 * 255).round().to(torch.uint8)
    u[torch.rand(u.shape, generator=g) < 0.5] = 0
    return u


@pytest.mark.parametrize(("lo", "hi"), [(-2, 4), (-1, 2), (0, 2), (-1, 0), (-2, 0), (0, 4), (0, 0)])
def test_rung_table_blend_is_the_rung_chain_to_the_bit(lo, hi):
    """The trainer's table (rungs of the uint8 pixels, two gathered and blended) gives the
    floats of `apply_stroke_delta` on the digits over 255, integer levels and both ends
    included, for any batch of rows of any subset of the set."""
    u = _digits_u8()
    x = u.float() / 255.0
    table = morphology.rung_table(u, lo, hi, chunk=64)  # chunks: a ragged last one too
    assert table.rungs.shape == (200, hi - lo + 1, 16, 16) and (table.lo, table.hi) == (lo, hi)
    g = torch.Generator().manual_seed(1)
    levels = lo + (hi - lo) * torch.rand(200, generator=g)
    levels[:7] = torch.arange(-2.0, 5.0).clamp(lo, hi)
    got = table.blend(torch.arange(200), levels)
    assert torch.equal(got, apply_stroke_delta(x, levels))
    subset = torch.randperm(200, generator=g)[:60]
    rows = torch.tensor([3, 0, 59, 17, 17])
    assert torch.equal(table[subset].blend(rows, levels[subset][rows]),
                       apply_stroke_delta(x[subset][rows], levels[subset][rows]))


def test_rung_table_refuses_levels_and_inputs_outside_it():
    table = morphology.rung_table(_digits_u8(4), -1, 2)
    with pytest.raises(ValueError, match=r"outside the rung table's \[-1, 2\]"):
        table.blend(torch.arange(2), torch.tensor([0.5, 2.5]))
    with pytest.raises(ValueError, match="need -2 <= lo <= 0 <= hi <= 4"):
        morphology.rung_table(_digits_u8(4), 1, 2)
    with pytest.raises(TypeError, match="1-d integer tensor"):
        table[torch.tensor([True, False, True, False])]
    with pytest.raises(ValueError, match="uint8 digits"):
        morphology.rung_table(torch.zeros(4, 1, 8, 8), 0, 1)
