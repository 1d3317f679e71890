import dataclasses
import math

import pytest
import torch

from robustmnist import RobustMnistError
from robustmnist.augmentation import (
    POLICIES,
    AugConfig,
    AugParams,
    affine_matrix,
    apply,
    augment,
    concat,
    preview,
    rungs_for,
    sample,
    sample_batches,
    warp,
)
from robustmnist.morphology import apply_stroke_delta
from robustmnist.pen import FINE_PEN_PX, PEN_RANGE, PenAtlas, build_atlas, draw
from robustmnist.photobank import PHOTO_BANDS, build_bank


def _batch(device, n=32):
    g = torch.Generator(device=device).manual_seed(123)
    x = torch.zeros(n, 1, 28, 28, device=device)
    x[:, :, 8:20, 12:15] = torch.rand(n, 1, 12, 3, generator=g, device=device) * 0.5 + 0.5
    return x


def _atlas(x):
    return build_atlas(x.mul(255).round().to(torch.uint8).cpu().numpy(), workers=1).to(x.device)


def _photos(x, config):
    """The batch's photo bank for a photo policy, else None."""
    if config.p_photo == 0:
        return None
    return build_bank(x.mul(255).round().to(torch.uint8).cpu().numpy(), workers=1).to(x.device)


@pytest.mark.parametrize("policy", list(POLICIES))
def test_same_seed_same_batch(policy, device):
    config = AugConfig.from_policy(policy)
    x = _batch(device)
    atlas = _atlas(x) if config.p_pen > 0 else None
    photos = _photos(x, config)
    a = augment(x, config, torch.Generator(device=device).manual_seed(7), atlas, photos)
    b = augment(x, config, torch.Generator(device=device).manual_seed(7), atlas, photos)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.device == x.device and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1


def test_none_is_bit_identical(device):
    x = _batch(device)
    assert augment(x, AugConfig.from_policy("none"), torch.Generator().manual_seed(0)) is x


def test_thin_removes_ink_and_thick_adds_it(device):
    x = _batch(device)
    g = torch.Generator(device=device).manual_seed(0)
    thin = augment(x, AugConfig.from_policy("thin", p_untouched=0.0), g)
    thick = augment(x, AugConfig.from_policy("thick", p_untouched=0.0), g)
    assert (thin.sum((1, 2, 3)) <= x.sum((1, 2, 3)) + 1e-4).all()
    assert (thick.sum((1, 2, 3)) >= x.sum((1, 2, 3)) - 1e-4).all()


def test_sampled_levels_respect_range_and_p_untouched(device):
    config = AugConfig.from_policy("thickness", delta_min_px=-0.5, delta_max_px=1.5, p_untouched=0.3)
    params = sample(config, 20_000, torch.Generator(device=device).manual_seed(1))
    d = params.stroke_delta_px
    assert d.min() >= -0.5 and d.max() <= 1.5
    assert abs((d == 0).float().mean().item() - 0.3) < 0.02


def test_augment_is_sample_then_apply(device):
    config = AugConfig.from_policy("thickness+affine")
    x = _batch(device)
    params = sample(config, len(x), torch.Generator(device=device).manual_seed(5))
    assert params.affine is not None and params.affine.shape == (len(x), 3, 3)
    replayed = augment(x, config, torch.Generator(device=device).manual_seed(5))
    torch.testing.assert_close(replayed, apply(x, params), rtol=0, atol=0)
    assert not torch.equal(replayed, x)


@pytest.mark.parametrize("i", [0, 13, 31])
def test_each_draw_applies_to_its_own_image(device, i):
    """Image i of a batch gets draw i, whatever else is in the batch."""
    config = AugConfig.from_policy("thickness+affine", p_untouched=0.0)
    x = _batch(device)
    params = sample(config, len(x), torch.Generator(device=device).manual_seed(5))
    assert params.affine is not None
    alone = apply(x[i:i + 1], AugParams(params.stroke_delta_px[i:i + 1], params.affine[i:i + 1]))
    torch.testing.assert_close(alone, apply(x, params)[i:i + 1])


def test_zero_draw_is_the_identity(device):
    x = _batch(device)
    still = AugParams(torch.zeros(len(x), device=device), torch.eye(3, device=device).repeat(len(x), 1, 1))
    torch.testing.assert_close(apply(x, still), x)


def test_stroke_changes_of_some_rows_equal_the_whole_batch_changed(device):
    # apply() changes only the rows with a level; a level of 0 must be the identity to the
    # bit, or a run trained before that shortcut would not replay.
    x = _batch(device)
    levels = torch.linspace(-2, 2, len(x), device=device)
    levels[::3] = 0.0
    params = AugParams(levels, None)
    assert torch.equal(apply(x, params), apply_stroke_delta(x, levels))


def test_fine_pens_at_full_ink_on_their_rows_only_to_the_bit(device):
    x = _batch(device, 12)
    atlas = _atlas(x)
    widths = torch.tensor([0.5, 3.0, 0.0, 0.3, 6.0, 0.9] * 2, device=device)
    got = apply(x, AugParams(torch.zeros(len(x), device=device), None, widths), atlas)
    redrawn = draw(atlas, widths.clamp(min=PEN_RANGE[0]))  # the non-fine rows' own render
    for i, w in enumerate(widths.tolist()):
        if w >= PEN_RANGE[0]:
            assert torch.equal(got[i], redrawn[i])
        elif w > 0:
            alone = draw(atlas[i:i + 1], widths[i:i + 1])
            assert torch.equal(got[i], (alone / alone.amax().clamp(min=1e-6)).clamp(0, 1)[0])
        else:
            assert torch.equal(got[i], x[i])


def test_policies_without_pen_draw_what_they_drew_before():
    # Adding the pen must not shift the random stream of the older policies (runs replay).
    params = sample(AugConfig.from_policy("thickness+affine"), 4, torch.Generator().manual_seed(5))
    torch.testing.assert_close(params.stroke_delta_px, torch.tensor([1.4907556, 0.0, 0.0, 1.4597812]))
    assert params.affine is not None and params.pen_width_px is None
    torch.testing.assert_close(params.affine[0, :2].flatten(), torch.tensor(
        [1.0202609, 0.1677088, -4.4531851, -0.1677088, 1.0202609, 2.7043848]))


def test_pen_draws_respect_range_and_p_pen(device):
    config = AugConfig.from_policy("pen+thickness+affine", pen_min_px=2.0, pen_max_px=5.0, p_pen=0.3)
    params = sample(config, 20_000, torch.Generator(device=device).manual_seed(1))
    assert params.pen_width_px is not None
    redrawn = params.pen_width_px > 0
    assert abs(redrawn.float().mean().item() - 0.3) < 0.02
    widths = params.pen_width_px[redrawn]
    assert widths.min() >= 2.0 and widths.max() <= 5.0
    assert (params.stroke_delta_px[redrawn] == 0).all()  # a redrawn digit keeps the pen's width
    assert (params.stroke_delta_px[~redrawn] != 0).any()


@pytest.mark.parametrize("width", [1.5, 5.0])
def test_pen_replaces_the_digit_and_zero_keeps_it(device, width):
    x = _batch(device, 8)
    atlas = _atlas(x)
    still = torch.zeros(8, device=device)
    kept = apply(x, AugParams(still, None, torch.zeros(8, device=device)), atlas)
    torch.testing.assert_close(kept, x, rtol=0, atol=0)
    drawn = apply(x, AugParams(still, None, torch.full((8,), width, device=device)), atlas)
    assert drawn.device == x.device and drawn.dtype == x.dtype and not torch.equal(drawn, x)


def test_mixed_batch_redraws_exactly_its_pen_rows(device):
    # Only the rows with a pen are rendered: each must be its own digit's drawing, the others
    # untouched (a row mix-up in the subset path would swap digits).
    x = _batch(device, 8)
    x[5] = 0  # a blank digit: nothing to redraw, kept as it is even with a pen
    atlas = _atlas(x)
    widths = torch.tensor([0.0, 2.0, 0.0, 4.5, 3.0, 5.0, 0.0, 6.0], device=device)
    out = apply(x, AugParams(torch.zeros(8, device=device), None, widths), atlas)
    from robustmnist.pen import draw

    assert atlas.drawable.tolist() == [True] * 5 + [False] + [True] * 2
    for i, w in enumerate(widths.tolist()):
        expected = x[i] if w == 0 or i == 5 else draw(atlas[i:i + 1], widths[i:i + 1])[0]
        torch.testing.assert_close(out[i], expected, rtol=0, atol=0)


def test_thicker_pen_more_ink(device):
    x = _batch(device, 8)
    atlas = _atlas(x)
    still = torch.zeros(8, device=device)
    ink = [apply(x, AugParams(still, None, torch.full((8,), w, device=device)), atlas).sum((1, 2, 3))
           for w in (1.5, 3.0, 5.0)]
    assert (ink[0] < ink[1]).all() and (ink[1] < ink[2]).all()


def test_pen_policy_needs_the_atlas_rows(device):
    x = _batch(device, 4)
    config = AugConfig.from_policy("pen")
    with pytest.raises(ValueError, match="PenAtlas"):
        augment(x, config, torch.Generator(device=device).manual_seed(0))
    with pytest.raises(ValueError, match="PenAtlas"):
        augment(x, config, torch.Generator(device=device).manual_seed(0), _atlas(x)[:2])


def _box_and_centre(img):
    rows = torch.nonzero(img.amax(1) >= 0.5).flatten()
    cols = torch.nonzero(img.amax(0) >= 0.5).flatten()
    side = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1).item()
    ys, xs = torch.arange(img.shape[0], dtype=img.dtype), torch.arange(img.shape[1], dtype=img.dtype)
    m = img.sum()
    return side, ((img.sum(0) * xs).sum() / m).item(), ((img.sum(1) * ys).sum() / m).item()


def _corner_digits(n=4):
    # An L in the lower-left quadrant (centre of mass far from the image centre, cx != cy),
    # and its mirror in the upper right: a swapped x/y or a missing move to the original's
    # centre shows by several px.
    x = torch.zeros(n, 1, 28, 28)
    x[0::2, :, 10:24, 3:6] = 0.9
    x[0::2, :, 21:24, 3:13] = 0.9
    x[1::2, :, 3:17, 21:24] = 0.9
    x[1::2, :, 3:6, 14:24] = 0.9
    return x


@pytest.mark.parametrize("width", [1.0, 6.0, 9.0])
def test_refit_puts_a_redrawn_digit_back_in_its_original_box(width):
    # A wide pen grows the digit past its box; re-fitted, it is MNIST-sized again (a smaller
    # skeleton), centred where the original's mass was, strongest ink at 1; the rows not
    # chosen are exactly the plain redraw.
    x = _corner_digits(6)
    atlas = _atlas(x)
    still, widths = torch.zeros(6), torch.full((6,), width)
    chosen = torch.tensor([True, False, True, False, True, True])
    plain = apply(x, AugParams(still, None, widths), atlas)
    fitted = apply(x, AugParams(still, None, widths, chosen), atlas)
    torch.testing.assert_close(fitted[~chosen], plain[~chosen], rtol=0, atol=0)
    for i in torch.nonzero(chosen).flatten().tolist():
        side0, cx0, cy0 = _box_and_centre(x[i, 0])
        side_plain, _, _ = _box_and_centre(plain[i, 0])
        side, cx, cy = _box_and_centre(fitted[i, 0])
        if width > 3:
            assert side_plain >= side0 + 2  # the pen did grow it: the test tests something
        assert abs(side - side0) <= 1, (i, side0, side_plain, side)
        assert abs(cx - cx0) < 0.25 and abs(cy - cy0) < 0.25, (i, cx, cx0, cy, cy0)
        assert fitted[i].max().item() == pytest.approx(1.0)


def test_refit_rows_get_their_strongest_ink_back_after_the_affine():
    # A rotation leaves a thin pen's peak below 1 (bilinear); re-fitted rows are brought back
    # to full strength, the others are not (the policy's second difference, documented).
    x = _corner_digits(4)
    atlas = _atlas(x)
    still, widths = torch.zeros(4), torch.full((4,), 1.0)
    turn = affine_matrix(torch.full((4,), 7.0), torch.full((4, 2), 0.3), torch.ones(4), 13.5)
    chosen = torch.tensor([True, False, True, False])
    out = apply(x, AugParams(still, turn, widths, chosen), atlas)
    peaks = out.amax((1, 2, 3))
    assert peaks[chosen].tolist() == pytest.approx([1.0, 1.0])
    assert (peaks[~chosen] < 0.95).all()


def test_refit_comes_before_the_affine():
    # An identity affine plus the re-fit gives the re-fit alone; a shift moves the result.
    x = _batch(torch.device("cpu"), 4)
    atlas = _atlas(x)
    still, widths, chosen = torch.zeros(4), torch.full((4,), 7.0), torch.ones(4, dtype=torch.bool)
    alone = apply(x, AugParams(still, None, widths, chosen), atlas)
    eye = torch.eye(3).repeat(4, 1, 1)
    torch.testing.assert_close(apply(x, AugParams(still, eye, widths, chosen), atlas), alone,
                               atol=1e-5, rtol=0)
    shift = eye.clone()
    shift[:, 0, 2] = 3.0
    moved = apply(x, AugParams(still, shift, widths, chosen), atlas)
    torch.testing.assert_close(moved[..., 3:], alone[..., :-3], atol=1e-5, rtol=0)


def test_refit_without_a_pen_is_refused():
    with pytest.raises(RobustMnistError, match=r"pen_refit: .* p_pen is 0"):
        AugConfig.from_policy("thickness", pen_refit=0.5)


def test_refit_draws_only_for_refit_policies():
    g = torch.Generator().manual_seed(2)
    base = sample(AugConfig.from_policy("wide-pen+thickness+affine"), 2000, g)
    assert base.refit is None
    params = sample(AugConfig.from_policy("refit-pen+thickness+affine"), 2000,
                    torch.Generator().manual_seed(2))
    # the same stream up to the re-fit draws, which come last
    torch.testing.assert_close(params.pen_width_px, base.pen_width_px, rtol=0, atol=0)
    torch.testing.assert_close(params.affine, base.affine, rtol=0, atol=0)
    redrawn = params.pen_width_px > 0
    assert not params.refit[~redrawn].any()
    assert abs(params.refit[redrawn].float().mean().item() - 0.5) < 0.05


def test_fine_pens_draw_last_and_only_for_fine_policies():
    base = sample(AugConfig.from_policy("refit-pen+thickness+affine"), 4000,
                  torch.Generator().manual_seed(4))
    fine = sample(AugConfig.from_policy("fine-pen+thickness+affine"), 4000,
                  torch.Generator().manual_seed(4))
    for a, b in ((base.stroke_delta_px, fine.stroke_delta_px), (base.affine, fine.affine),
                 (base.refit, fine.refit)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    redrawn = base.pen_width_px > 0
    changed = fine.pen_width_px != base.pen_width_px
    assert not changed[~redrawn].any()  # only redrawn digits get a fine pen
    assert abs(changed[redrawn].float().mean().item() - 0.2) < 0.03
    widths = fine.pen_width_px[changed]
    assert widths.min() >= 0.25 and widths.max() < 1.0 and widths.std() > 0.15


def test_fine_pens_at_full_ink_before_the_refit_and_after_the_affine():
    # A fine render is faint (peak ~0.4-0.9): scaled to full before its box is measured (a
    # faint box would be too small and the digit blown up) and again after the rotation.
    x = torch.zeros(6, 1, 28, 28)  # Ls with 2-px bars: the skeleton runs between pixel centres
    x[:, :, 6:24, 4:6] = 0.9
    x[:, :, 22:24, 4:16] = 0.9
    atlas = _atlas(x)
    still = torch.zeros(6)
    widths = torch.tensor([0.8, 0.9, 0.3, 0.5, 1.0, 1.0])  # the last two: calibrated 1-px pens
    chosen = torch.tensor([True, True, False, False, False, False])
    turn = affine_matrix(torch.full((6,), 7.0), torch.full((6, 2), 0.3), torch.ones(6), 13.5)
    out = apply(x, AugParams(still, turn, widths, chosen), atlas)
    peaks = out.amax((1, 2, 3))
    assert peaks[:4].tolist() == pytest.approx([1.0] * 4)
    assert (peaks[4:] < 0.95).all()  # as in the older policies
    fitted = apply(x, AugParams(still, None, widths, chosen), atlas)
    for i in (0, 1):
        side0, cx0, cy0 = _box_and_centre(x[i, 0])
        side, cx, cy = _box_and_centre(fitted[i, 0])
        assert abs(side - side0) <= 1, (i, side0, side)
        assert abs(cx - cx0) < 0.3 and abs(cy - cy0) < 0.3


def test_fine_pens_without_a_pen_are_refused():
    with pytest.raises(RobustMnistError, match=r"pen_fine: .* p_pen is 0"):
        AugConfig.from_policy("thickness", pen_fine=0.2)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"pen_min_px": 5.0, "pen_max_px": 2.0}, "pen range"),
    ({"pen_max_px": 9.5}, "pen_max_px: must be <= 9"),
    ({"pen_min_px": 0.5}, "pen_min_px: must be >= 1"),  # fine pens: pen_fine, not the range
    ({"pen_fine": 1.5}, "pen_fine"),
    ({"p_pen": 1.5}, "p_pen"),
])
def test_bad_pen_parameters(kwargs, match):
    with pytest.raises(RobustMnistError, match=match):
        AugConfig.from_policy("pen", **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("policy", [p for p in POLICIES if AugConfig.from_policy(p).p_pen > 0])
def test_pen_policies_on_cuda_match_cpu(policy):
    # the same drawn parameters applied on both devices: redrawn, kept, re-fitted, fine rows
    x = _batch(torch.device("cpu"), 64)
    params = sample(AugConfig.from_policy(policy), len(x), torch.Generator().manual_seed(3))
    atlas = _atlas(x)

    def cuda(t):
        return None if t is None else t.cuda()

    cuda_params = AugParams(params.stroke_delta_px.cuda(), cuda(params.affine),
                            cuda(params.pen_width_px), cuda(params.refit))
    torch.testing.assert_close(apply(x.cuda(), cuda_params, atlas.to("cuda")).cpu(),
                               apply(x, params, atlas), atol=1e-5, rtol=0)


def test_preview_grid_shape(device):
    images = (_batch(device, 3) * 255).to(torch.uint8)
    grid, levels = preview(images, AugConfig.from_policy("thickness"), draws=4)
    assert grid.shape == (3, 5, 28, 28) and grid.dtype == torch.uint8
    assert levels.shape == (3, 4)
    torch.testing.assert_close(grid[:, 0], images[:, 0].cpu())


def test_preview_of_a_pen_policy(device):
    images = (_batch(device, 3) * 255).to(torch.uint8)
    grid, levels = preview(images, AugConfig.from_policy("pen", p_pen=1.0), draws=2)
    assert grid.shape == (3, 3, 28, 28)
    assert not torch.equal(grid[:, 1], grid[:, 0]) and (levels == 0).all()


@pytest.mark.parametrize("shape", [(16, 1, 28, 28), (5, 3, 20, 31)])
def test_warp_matches_kornia(device, shape):
    """The in-house affine (matrix and warp) equals Kornia's get_affine_matrix2d + warp_affine."""
    from kornia.geometry.transform import get_affine_matrix2d, warp_affine

    g = torch.Generator(device=device).manual_seed(3)
    n = shape[0]
    angle = torch.rand(n, generator=g, device=device) * 60 - 30
    shift = torch.rand(n, 2, generator=g, device=device) * 8 - 4
    zoom = torch.rand(n, generator=g, device=device) * 0.6 + 0.7
    ours = affine_matrix(angle, shift, zoom, center=6.5)
    theirs = get_affine_matrix2d(shift, torch.full((n, 2), 6.5, device=device),
                                 zoom.unsqueeze(1).repeat(1, 2), angle)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    x = torch.rand(shape, generator=g, device=device)
    expected = warp_affine(x, theirs[:, :2], dsize=shape[-2:], mode="bilinear",
                           padding_mode="zeros", align_corners=True)
    torch.testing.assert_close(warp(x, ours), expected, rtol=0, atol=1e-4)


def test_box_side_px_is_the_box_of_the_half_level_ink():
    # Against a plain loop, on ink with exact halves (0.5 counts), gaps and blank digits.
    from robustmnist.augmentation import _box_side_px

    g = torch.Generator().manual_seed(0)
    ink = torch.rand(64, 28, 28, generator=g) * (torch.rand(64, 28, 28, generator=g) < 0.1)
    ink[::3] = torch.round(ink[::3] * 4) / 8
    ink[::5] = 0

    def by_loop(img):
        rows = [i for i in range(28) if (img[i] >= 0.5).any()]
        cols = [j for j in range(28) if (img[:, j] >= 0.5).any()]
        return max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) if rows else 0

    assert _box_side_px(ink).tolist() == [float(by_loop(img)) for img in ink]


def test_concat_joins_every_field_in_order():
    config = AugConfig.from_policy("photo+fine-pen+thickness+affine")  # a policy that draws them all
    g = torch.Generator().manual_seed(0)
    parts = [sample(config, n, g) for n in (3, 5)]
    joined = concat(parts)
    for f in dataclasses.fields(AugParams):
        assert torch.equal(getattr(joined, f.name), torch.cat([getattr(p, f.name) for p in parts])), f.name


@pytest.mark.parametrize("policy", [p for p in POLICIES if AugConfig.from_policy(p).p_pen > 0])
def test_atlas_boxes_give_the_refits_of_the_measured_boxes_to_the_bit(policy):
    """Re-fit boxes from the atlas (the original's box and centre once, the redraw's box from
    its row and column maxima) are those measured on the batch: the same floats, fine and wide
    pens alike."""
    config = AugConfig.from_policy(policy, pen_refit=0.9, pen_fine=0.3)
    g = torch.Generator().manual_seed(7)
    x = torch.zeros(64, 1, 28, 28)
    for i in range(64):  # bars of different sizes and places: every digit its own box and centre
        r0, c0 = torch.randint(2, 12, (2,), generator=g).tolist()
        x[i, 0, r0:r0 + 6 + i % 11, c0:c0 + 2 + i % 4] = 0.5 + 0.5 * torch.rand(1, generator=g)
    x = x.mul(255).round().div(255)  # the trainer's batch: the digits over 255
    atlas = _atlas(x)
    assert len(set(atlas.box_px.tolist())) >= 8  # a row mix-up would move some boxes
    measured = PenAtlas(atlas.distance, atlas.knots)  # no boxes: measured on the images
    assert measured.box_px is None and atlas.box_px is not None
    params = sample(config, 64, torch.Generator().manual_seed(3))
    assert int(params.refit.sum()) > 10 and int((params.pen_width_px < PEN_RANGE[0]).sum()) > 3
    photos = _photos(x, config)
    assert torch.equal(apply(x, params, atlas, photos=photos), apply(x, params, measured, photos=photos))


@pytest.mark.parametrize("policy", [p for p in POLICIES if AugConfig.from_policy(p).delta_max_px
                                    or AugConfig.from_policy(p).delta_min_px])
def test_rung_table_gives_the_stroke_changes_of_the_chain_to_the_bit(policy):
    config = AugConfig.from_policy(policy)
    x = _batch("cpu", 64)
    u = x.mul(255).round().to(torch.uint8)
    x = u.float() / 255.0  # the trainer's batch: the digits over 255
    atlas = _atlas(x) if config.p_pen else None
    table = rungs_for(u, config)
    assert table is not None and (table.lo, table.hi) == (math.floor(config.delta_min_px),
                                                          math.ceil(config.delta_max_px))
    params = sample(config, 64, torch.Generator().manual_seed(4))
    assert int((params.stroke_delta_px != 0).sum()) > 10
    photos = _photos(x, config)
    assert torch.equal(apply(x, params, atlas, table, photos), apply(x, params, atlas, photos=photos))
    with pytest.raises(ValueError, match="rung table has 63 rows for 64 digits"):
        apply(x, params, atlas, table[torch.arange(63)], photos)


def test_rung_table_refuses_a_stroke_change_on_a_redrawn_digit():
    x = _batch("cpu", 4)
    table = rungs_for(x.mul(255).round().to(torch.uint8), AugConfig.from_policy("thickness"))
    both = AugParams(torch.tensor([1.0, 0.0, 0.0, 0.0]), None, torch.tensor([3.0, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="redrawn digit cannot also take a stroke change"):
        apply(x, both, _atlas(x), table)


def test_policies_without_stroke_changes_build_no_rung_table():
    u = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    assert rungs_for(u, AugConfig.from_policy("pen")) is None
    assert rungs_for(u, AugConfig.from_policy("thickness", p_untouched=1.0)) is None
    assert rungs_for(u, AugConfig.from_policy("none")) is None
    assert rungs_for(u, AugConfig.from_policy("pen+thickness+affine", p_pen=1.0)) is None


def _one_draw_at_a_time(config, n, generator):
    """The parameters as `sample` drew them before `sample_batches`: one ``torch.rand`` call per
    draw, batch by batch (the oracle for the batched draws)."""
    def uniform(lo, hi, size=n):
        return lo + (hi - lo) * torch.rand(size, generator=generator)

    delta = uniform(config.delta_min_px, config.delta_max_px)
    touched = torch.rand(n, generator=generator) >= config.p_untouched
    delta = torch.where(touched, delta, torch.zeros_like(delta))
    width = None
    if config.p_pen > 0:
        w = uniform(config.pen_min_px, config.pen_max_px)
        redrawn = torch.rand(n, generator=generator) < config.p_pen
        width = torch.where(redrawn, w, torch.zeros_like(w))
        delta = torch.where(redrawn, torch.zeros_like(delta), delta)
    matrix = None
    if config.affine:
        angle = uniform(-config.affine_degrees, config.affine_degrees)
        shift = uniform(-config.affine_translate, config.affine_translate, 2 * n)
        zoom = uniform(1 - config.affine_scale, 1 + config.affine_scale)
        rad = angle * (math.pi / 180)  # affine_matrix as it was written before: a, b, tx, ty
        a, b = zoom * torch.cos(rad), zoom * torch.sin(rad)
        shift = shift.view(n, 2) * 28.0
        tx = shift[:, 0] + 13.5 - (a - b) * 13.5
        ty = shift[:, 1] + 13.5 - (a + b) * 13.5
        zero, one = torch.zeros_like(a), torch.ones_like(a)
        matrix = torch.stack([a, -b, tx, b, a, ty, zero, zero, one], 1).view(-1, 3, 3)
    refit_u = torch.rand(n, generator=generator) if width is not None and config.pen_refit > 0 else None
    fine_width = fine_u = None
    if width is not None and config.pen_fine > 0:
        fine_width = uniform(FINE_PEN_PX, PEN_RANGE[0])
        fine_u = torch.rand(n, generator=generator)
    photo = None
    if config.p_photo > 0:  # drawn last; a photo row has no pen, no stroke change, no re-fit
        shot = torch.rand(n, generator=generator) < config.p_photo
        band = (torch.rand(n, generator=generator) * len(PHOTO_BANDS)).floor().long()
        photo = torch.where(shot, band, torch.full_like(band, -1))
        delta = torch.where(shot, torch.zeros_like(delta), delta)
        width = None if width is None else torch.where(shot, torch.zeros_like(width), width)
    refit = None if refit_u is None else (refit_u < config.pen_refit) & (width > 0)
    if fine_u is not None:
        fine = (fine_u < config.pen_fine) & (width > 0)
        width = torch.where(fine, fine_width, width)
    return AugParams(delta, matrix, width, refit, photo)


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "none"])
@pytest.mark.parametrize("sizes", [(512, 512, 96), (7, 7, 5, 13, 13)])
def test_batched_draws_are_each_batchs_own_draws_to_the_bit(policy, sizes):
    # One rand call for a run of equal batches, elementwise arithmetic over all of them, the
    # sines and cosines batch by batch: each batch gets what drawing it alone gave (sizes that
    # are no multiple of a vector's width put numbers in the scalar tails of the kernels).
    config = AugConfig.from_policy(policy)
    gb = torch.Generator().manual_seed(11)
    batched = sample_batches(config, list(sizes), gb)
    g = torch.Generator().manual_seed(11)
    for n, got in zip(sizes, batched, strict=True):
        want = _one_draw_at_a_time(config, n, g)
        for f in dataclasses.fields(AugParams):
            a, b = getattr(got, f.name), getattr(want, f.name)
            assert (a is None) == (b is None), f.name
            assert a is None or (a.shape == b.shape and torch.equal(a, b)), (n, f.name)
    assert torch.equal(gb.get_state(), g.get_state())  # and the generator left where it was


def test_box_sides_and_pen_ink_equal_their_plain_formulas_to_the_bit():
    # The one-`where` box sides and the fused pen ink against the formulas they replace.
    from robustmnist.pen import DIST_STEP, render
    from robustmnist.pen import side_px as _side_px

    g = torch.Generator().manual_seed(2)
    inked = torch.rand(64, 2, 28, generator=g) < torch.rand(64, 1, 1, generator=g)
    inked[:3] = False
    idx = torch.arange(28)
    first = torch.where(inked, idx, 28).amin(-1)
    last = torch.where(inked, idx, -1).amax(-1)
    assert torch.equal(_side_px(inked, torch.float32), (last - first + 1).clamp(min=0).amax(-1).float())
    distance = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g)
    width = torch.rand(64, generator=g) * 9
    edge = (width / 2 + 0.5).view(-1, 1, 1, 1)
    assert torch.equal(render(distance, width), (edge - distance.float() / DIST_STEP).clamp(0, 1))


def test_cached_constants_join_autograd_after_inference_mode():
    from robustmnist.pen import centre_xy

    with torch.inference_mode():
        centre_xy(torch.rand(2, 5, 7))
        warp(torch.rand(2, 1, 5, 7), torch.eye(3).expand(2, 3, 3))
    ink = torch.rand(2, 5, 7, requires_grad=True)
    centre_xy(ink).sum().backward()
    x = torch.rand(2, 1, 5, 7, requires_grad=True)
    warp(x, torch.eye(3).expand(2, 3, 3)).sum().backward()
    assert ink.grad is not None and x.grad is not None
