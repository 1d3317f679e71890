import cv2
import numpy as np
import pytest
import torch

from robustmnist import pen
from robustmnist.measure import measure_thickness


def _strokes() -> np.ndarray:
    """Tiny synthetic digits without junctions: a vertical bar, a diagonal, a ring, an arc."""
    images = np.zeros((4, 28, 28), np.uint8)
    cv2.line(images[0], (14, 5), (14, 22), 255, 2, cv2.LINE_AA)
    cv2.line(images[1], (9, 22), (19, 5), 255, 2, cv2.LINE_AA)
    cv2.circle(images[2], (14, 14), 8, 255, 2, cv2.LINE_AA)
    cv2.ellipse(images[3], (14, 14), (9, 7), 0, 200, 340, 255, 2, cv2.LINE_AA)
    return images


@pytest.fixture(scope="module")
def strokes_atlas() -> pen.PenAtlas:
    return pen.build_atlas(_strokes(), workers=1)


def _as_u8(ink: torch.Tensor) -> np.ndarray:
    return ink[:, 0].mul(255).round().to(torch.uint8).cpu().numpy()


def test_render_hand_computed():
    d = torch.tensor([0, 16, 32, 48, 255], dtype=torch.uint8).view(1, 1, 1, 5)  # 0..1.5 px, far
    torch.testing.assert_close(pen.render(d, torch.tensor([1.0])).flatten(),
                               torch.tensor([1.0, 0.5, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(pen.render(d, torch.tensor([3.0])).flatten(),
                               torch.tensor([1.0, 1.0, 1.0, 0.5, 0.0]))


@pytest.mark.parametrize("width", [2.0, 3.0, 4.0, 5.0, 6.0])
def test_rendered_width_measures_as_drawn(strokes_atlas, width):
    # The renderer itself, uncalibrated: strokes without junctions measure their pen width.
    ink = pen.render(strokes_atlas.distance, torch.full((len(strokes_atlas),), width))
    assert np.nanmean(measure_thickness(_as_u8(ink), workers=1)) == pytest.approx(width, abs=0.3)


@pytest.mark.parametrize("width", [2.0, 2.5, 3.5, 4.5, 5.5, 6.0])
def test_drawn_pen_measures_its_nominal_width(tiny_arrays, width):
    # Calibrated per digit: also on digits with loops and junctions (Hershey digits).
    digits = tiny_arrays["train"][0][:20]
    atlas = pen.build_atlas(digits, workers=1)
    measured = measure_thickness(_as_u8(pen.draw(atlas, torch.full((len(digits),), width))), workers=1)
    assert np.nanmean(measured) == pytest.approx(width, abs=0.3)


def test_one_px_pen_sits_at_the_measurement_floor(strokes_atlas):
    ink = pen.draw(strokes_atlas, torch.ones(len(strokes_atlas)))
    measured = np.nanmean(measure_thickness(_as_u8(ink), workers=1))
    assert 1.0 <= measured <= 1.7  # the measure cannot confirm widths below ~1.5 px


def test_render_width_inverts_the_calibration():
    knots = torch.tensor([[1.0, 2.2, 3.1, 4.5, 6.0, 7.5, 9.0, 10.5, 12.0]])
    widths = torch.tensor([1.0, 2.2, 3.8, 9.0, 0.5, 14.0, 0.999])
    got = pen.render_width(knots.expand(len(widths), -1).contiguous(), widths)
    # below the measurement floor a (fine) pen is its own render width
    torch.testing.assert_close(got, torch.tensor([1.0, 2.0, 3.5, 7.0, 0.5, 9.0, 0.999]))


def test_fine_pen_renders_below_the_measurement_floor(strokes_atlas):
    # Below 1 px a width is the render width itself (faint: the augmentation scales it to
    # full ink), and thinner renders measure thinner, all under the 1-px pen.
    n = len(strokes_atlas)
    measured = {}
    for width in (0.25, 0.5, 0.75, 1.0):
        ink = pen.draw(strokes_atlas, torch.full((n,), width))
        torch.testing.assert_close(ink, pen.render(strokes_atlas.distance, torch.full((n,), width)))
        full = ink / ink.amax((-2, -1), keepdim=True)
        measured[width] = np.nanmean(measure_thickness(_as_u8(full), workers=1))
    assert measured[0.5] < measured[0.75] - 0.05 and measured[0.75] < measured[1.0]
    assert 0.9 <= measured[0.25] <= 1.3, measured


def test_blank_digit_is_not_drawable():
    images = np.concatenate([_strokes()[:1], np.zeros((1, 28, 28), np.uint8)])
    atlas = pen.build_atlas(images, workers=1)
    assert atlas.drawable.tolist() == [True, False]
    assert (atlas.distance[1] == 255).all()


def test_atlas_rows_and_device(strokes_atlas, device):
    on_device = strokes_atlas.to(device)
    rows = on_device[torch.tensor([2, 0], device=device)]
    assert len(rows) == 2 and rows.distance.device.type == device.type
    assert rows.distance.shape == (2, 1, 28, 28) and rows.distance.dtype == torch.uint8
    ink = pen.draw(rows, torch.tensor([3.0, 3.0], device=device))
    assert ink.device.type == device.type and ink.dtype == torch.float32
    torch.testing.assert_close(ink.cpu(), pen.draw(strokes_atlas[[2, 0]], torch.tensor([3.0, 3.0])))


@pytest.mark.gpu
def test_cuda_draw_matches_cpu(strokes_atlas):
    widths = torch.tensor([0.5, 2.5, 4.0, 6.0])  # 0.5: a fine pen
    cpu = pen.draw(strokes_atlas, widths)
    gpu = pen.draw(strokes_atlas.to("cuda"), widths.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-6, rtol=0)


def test_atlas_cache_hit_miss_and_corruption(tmp_path):
    images = _strokes()
    first, built = pen.load_or_build_atlas(images, tmp_path)
    assert built
    again, built = pen.load_or_build_atlas(images, tmp_path)
    assert not built
    torch.testing.assert_close(again.distance, first.distance)
    torch.testing.assert_close(again.knots, first.knots, equal_nan=True)
    path = pen.atlas_path(tmp_path, images)
    path.write_bytes(path.read_bytes()[:300])  # truncated
    _, built = pen.load_or_build_atlas(images, tmp_path)
    assert built
    with np.load(path) as z:  # valid file, tampered pixels: the content hash catches it
        distance, knots, meta = z["distance"].copy(), z["knots"], z["meta"]
    distance[0, 0, 0] ^= 1
    with path.open("wb") as f:
        np.savez(f, distance=distance, knots=knots, meta=meta)
    rebuilt, built = pen.load_or_build_atlas(images, tmp_path)
    assert built
    torch.testing.assert_close(rebuilt.distance, first.distance)


def test_atlas_path_follows_the_pixels_and_the_version(tmp_path, monkeypatch):
    images = _strokes()
    path = pen.atlas_path(tmp_path, images)
    changed = images.copy()
    changed[0, 0, 0] = 1
    assert pen.atlas_path(tmp_path, changed) != path
    monkeypatch.setattr(pen, "ATLAS_VERSION", pen.ATLAS_VERSION + 1)
    assert pen.atlas_path(tmp_path, images) != path


def test_skeleton_segments_hand_computed():
    path = np.zeros((8, 8), bool)
    path[1, 1:4] = True   # a row of three: two segments
    path[5, 5] = True     # an isolated dot: one zero-length segment
    segments = pen.skeleton_segments(path) * pen.UPSCALE + (pen.UPSCALE / 2 - 0.5)  # back to x4 px
    as_set = {tuple(map(tuple, s.round(6))) for s in segments}
    assert as_set == {((1.0, 1.0), (2.0, 1.0)), ((2.0, 1.0), (3.0, 1.0)), ((5.0, 5.0), (5.0, 5.0))}


def test_photo_is_deterministic_and_pen_adds_ink(tiny_arrays):
    digit = tiny_arrays["test"][0][3]
    a, b = pen.PhotoDigit(digit), pen.PhotoDigit(digit.copy())
    np.testing.assert_array_equal(a.photograph(0.1), b.photograph(0.1))
    photo = a.photograph(0.1)
    assert photo.dtype == np.float32 and photo.shape == (a.side, a.side)
    assert photo.min() >= 0.0 and photo.max() <= 1.0
    assert a.ink(0.05).sum() < a.ink(0.1).sum() < a.ink(0.2).sum()
    # Written height (ink outside to outside) is PHOTO_DIGIT_PX whatever the pen.
    for fraction in (0.05, 0.2):
        rows = np.flatnonzero(a.ink(fraction).max(1) > 0.5)
        assert rows[-1] - rows[0] + 1 == pytest.approx(pen.PHOTO_DIGIT_PX, abs=4)


def test_photo_levels_read_back_as_mnist_digits(tiny_arrays):
    digit = tiny_arrays["test"][0][5]
    thin, thick = pen.photo_levels(digit, [0.05, 0.2])
    assert thin.shape == thick.shape == (28, 28) and thin.dtype == np.uint8
    assert thin.max() == 255
    t_thin, t_thick = measure_thickness(np.stack([thin, thick]), workers=1)
    assert t_thin < t_thick


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("width", [2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 7.0, 8.0])
def test_pen_widths_on_real_digits(width, real_atlas):
    measured = measure_thickness(_as_u8(pen.draw(real_atlas, torch.full((len(real_atlas),), width))),
                                 workers=1)
    assert np.nanmean(measured) == pytest.approx(width, abs=0.3)


@pytest.fixture(scope="module")
def real_atlas() -> pen.PenAtlas:
    from robustmnist.data import load_split

    return pen.build_atlas(load_split("train").images[:300, 0].numpy())


def test_profile_is_the_strongest_ink_of_each_row_and_column_to_the_bit(strokes_atlas):
    widths = torch.tensor([0.5, 2.0, 4.5, 9.0])  # a fine pen too
    ink, peaks = pen.draw_profile(strokes_atlas, widths)
    assert torch.equal(ink, pen.draw(strokes_atlas, widths))
    assert torch.equal(peaks[:, 0, 0], ink[:, 0].amax(-1)) and torch.equal(peaks[:, 0, 1], ink[:, 0].amax(-2))
    rows = strokes_atlas[torch.tensor([3, 1])]  # rows carry their profile and box
    assert torch.equal(rows.profile, strokes_atlas.profile[[3, 1]])
    assert torch.equal(rows.box_px, strokes_atlas.box_px[[3, 1]])


def test_digit_box_is_the_half_ink_box_of_the_batch():
    from robustmnist.augmentation import _box_side_px
    from robustmnist.checkpoint import to_unit

    g = torch.Generator().manual_seed(0)
    u = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    for i in range(64):  # a random rectangle of 127s (under half ink) and 128s (at it)
        r0, c0 = torch.randint(0, 20, (2,), generator=g).tolist()
        u[i, 0, r0:r0 + 1 + i % 8, c0:c0 + 1 + i % 5] = 128 if i % 3 else 127
    u[5] = 0
    assert torch.equal(pen.digit_box_px(u), _box_side_px(to_unit(u)[:, 0]))
    assert pen.digit_box_px(u)[3].item() == 0 and pen.digit_box_px(u)[4].item() == 5
    assert torch.equal(pen.build_atlas(_strokes(), workers=1).box_px, pen.digit_box_px(
        torch.from_numpy(_strokes()).unsqueeze(1)))


def test_centres_do_not_depend_on_the_rest_of_the_batch():
    """The atlas stores each digit's centre once; the trainer's batches measure the same."""
    g = torch.Generator().manual_seed(2)
    u = (torch.rand(700, 1, 28, 28, generator=g) ** 4 * 255).round().to(torch.uint8)
    x = u.float() / 255.0
    atlas = pen.PenAtlas(torch.zeros(700, 1, 28, 28, dtype=torch.uint8), torch.zeros(700, 9)).with_boxes(u)
    for n in (1, 5, 177, 512):
        idx = torch.randperm(700, generator=g)[:n]
        assert torch.equal(atlas.centre_xy[idx], pen.centre_xy(x.index_select(0, idx)[:, 0]))
