"""Training-time augmentation policies: sampled as tensors on the batch's device, then applied.

Policies are configurations of one mechanism, not code copies:

=====================================  =====================================================
``none``                               the baseline: the batch is untouched
``thickness``                          random signed stroke change in [-1, +2] px (thin and thick)
``thin``                               erosion only, [-1, 0] px
``thick``                              dilation only, [0, +2] px
``thickness+affine``                   ``thickness`` plus a small random affine (the "is it just
                                       more augmentation?" control)
``pen``                                80 % of the digits redrawn along their own skeleton with a
                                       pen of measured width uniform in [1, 6] px (``pen.py``)
``pen+thickness+affine``               half the digits redrawn with a pen, the other half get the
                                       ``thickness`` change (80 % of them); then the affine on all
``wide-pen+thickness+affine``          70 % redrawn with a pen of [1, 9] px (up to a 5x5 dilation's
                                       measured width), the rest as above; then the affine
``refit-pen+thickness+affine``         ``wide-pen+thickness+affine``, and half the redrawn digits
                                       re-fitted into their original's box, as MNIST's (and
                                       ``predict``'s) size normalisation does with a photo: a wide
                                       pen then draws a smaller digit, a fine pen a larger one
``fine-pen+thickness+affine``          ``refit-pen+thickness+affine``, and a fifth of the redrawn
                                       digits get a *fine* pen instead: a line narrower than a
                                       pixel (render width 0.25-1 px, below the 1-px measurement
                                       floor), its strongest ink put back at full after the
                                       affine, as a fine pen's photo comes out of ``predict``
``photo+fine-pen+thickness+affine``    ``fine-pen+thickness+affine``, and 40 % of the digits
                                       replaced by a photograph of themselves instead (the
                                       ``photo`` family's generator and ``predict``'s
                                       preprocessing, a pen 0.10-0.30 of the digit's height;
                                       ``photobank.py``); then the affine on all
=====================================  =====================================================

Randomness comes from a seeded ``torch.Generator`` on the training device, so a run replays
exactly; parameters are drawn first (`sample`), then applied deterministically (`apply`).
The ``pen`` redraw needs each digit's skeleton distance map: a `PenAtlas` built once per
training set (``pen.training_atlas``) and indexed with the batch's indices
(``augment(x, config, generator, atlas[idx])``); the ``photo`` mix needs each digit's
photographs, a `PhotoBank` (``photobank.training_bank``), indexed the same way; the other
policies need nothing else.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustmnist.checkpoint import to_unit
from robustmnist.config import POLICIES, AugConfig
from robustmnist.morphology import LADDER_RANGE, RungTable, apply_stroke_delta, rung_table
from robustmnist.pen import (
    FINE_PEN_PX,
    PEN_RANGE,
    PenAtlas,
    build_atlas,
    centre_xy,
    draw_profile,
    profile_side_px,
    side_px,
)
from robustmnist.photobank import PHOTO_BANDS, PhotoBank, build_bank

__all__ = ["POLICIES", "AugConfig", "AugParams", "PenAtlas", "PhotoBank", "RungTable", "apply", "augment",
           "concat", "preview", "rungs_for", "sample", "sample_batches"]


@dataclass(frozen=True)
class AugParams:
    """One batch's sampled parameters, replayable: (B,) stroke levels, (B, 3, 3) affines,
    (B,) pen widths (px; 0 = not redrawn; None when the policy has no pen; below
    ``PEN_RANGE[0]`` a fine pen's render width), which redrawn digits are re-fitted into
    their original's box (None when the policy re-fits none) and which digits are replaced by
    which of their photographs ((B,) band index into ``PHOTO_BANDS``, -1 = not; None when the
    policy has no photos)."""

    stroke_delta_px: torch.Tensor
    affine: torch.Tensor | None
    pen_width_px: torch.Tensor | None = None
    refit: torch.Tensor | None = None   # (B,) bool: chosen for a re-fit (if drawable) into its box
    photo: torch.Tensor | None = None   # (B,) int64: the photo band, -1 = not a photo


def _draws(config: AugConfig) -> list[tuple[str, int, float, float]]:
    """The uniform draws of one batch, in the order `sample` takes them from the generator:
    (name, numbers per digit, low, high). The optional ones come after the older ones, so a
    policy without them replays as before."""
    out = [("delta", 1, config.delta_min_px, config.delta_max_px), ("touched", 1, 0.0, 1.0)]
    if config.p_pen > 0:
        out += [("width", 1, config.pen_min_px, config.pen_max_px), ("redrawn", 1, 0.0, 1.0)]
    if config.affine:
        out += [("angle", 1, -config.affine_degrees, config.affine_degrees),
                ("shift", 2, -config.affine_translate, config.affine_translate),
                ("zoom", 1, 1 - config.affine_scale, 1 + config.affine_scale)]
    if config.p_pen > 0 and config.pen_refit > 0:
        out += [("refit", 1, 0.0, 1.0)]
    if config.p_pen > 0 and config.pen_fine > 0:
        out += [("fine_width", 1, FINE_PEN_PX, PEN_RANGE[0]), ("fine", 1, 0.0, 1.0)]
    if config.p_photo > 0:
        out += [("photo", 1, 0.0, 1.0), ("band", 1, 0.0, 1.0)]
    return out


def sample(config: AugConfig, batch_size: int, generator: torch.Generator) -> AugParams:
    """Draw per-sample parameters on the generator's device."""
    return sample_batches(config, [batch_size], generator)[0]


def sample_batches(config: AugConfig, sizes: Sequence[int], generator: torch.Generator
                   ) -> list[AugParams]:
    """`sample` of each batch size in `sizes` in turn, the same parameters, in a few dozen
    tensor operations for the whole list (and a sine and a cosine per batch) instead of a few
    dozen per batch.

    On the CPU a run of equal sizes takes its numbers in one ``torch.rand`` call (the CPU
    generator fills consecutive numbers: one draw of k x L numbers is k draws of L); on other
    devices each batch's draws are made as `sample` makes them. The arithmetic is elementwise,
    so every row gets the floats of its own batch (tests/test_augmentation.py); sines and
    cosines are taken batch by batch, so no angle's result depends on where in a longer tensor
    a kernel meets it (vector body or tail: they agree on the CPUs tried, 2026-12-02, which
    need not hold on every CPU).

    >>> g, h = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    >>> config = AugConfig.from_policy("fine-pen+thickness+affine")
    >>> one = sample_batches(config, [4, 4, 3], g)
    >>> torch.equal(one[1].affine, [sample(config, n, h) for n in (4, 4, 3)][1].affine)
    True
    """
    out: list[AugParams] = []
    start = 0
    while start < len(sizes):
        stop = start
        while stop < len(sizes) and sizes[stop] == sizes[start]:
            stop += 1
        out += _sample_equal(config, sizes[start], stop - start, generator)
        start = stop
    return out


def _sample_equal(config: AugConfig, n: int, k: int, generator: torch.Generator) -> list[AugParams]:
    """`k` batches of `n` digits' parameters, drawn in turn."""
    device = generator.device
    draws = _draws(config)
    per_batch = n * sum(m for _, m, _, _ in draws)
    if device.type == "cpu":
        u = torch.rand(k * per_batch, generator=generator, device=device).view(k, per_batch)
    else:  # one call per draw, as `sample` always made them (another device's stream differs)
        u = torch.cat([torch.rand(m * n, generator=generator, device=device)
                       for _ in range(k) for _, m, _, _ in draws]).view(k, per_batch)
    got: dict[str, torch.Tensor] = {}
    offset = 0
    for name, m, lo, hi in draws:
        part = u[:, offset:offset + m * n]  # (k, m * n): each batch's numbers of this draw
        got[name] = part if lo == 0 and hi == 1 else lo + (hi - lo) * part
        offset += m * n
    delta = torch.where(got["touched"] >= config.p_untouched, got["delta"], 0.0)
    pen_width = None
    if config.p_pen > 0:
        redrawn = got["redrawn"] < config.p_pen
        pen_width = torch.where(redrawn, got["width"], 0.0)
        delta = torch.where(redrawn, 0.0, delta)  # a pen sets the width
    photo = None
    if config.p_photo > 0:  # a photo replaces the digit: no pen, no stroke change
        shot = got["photo"] < config.p_photo
        bands = len(PHOTO_BANDS)
        photo = torch.where(shot, (got["band"] * bands).long().clamp_(max=bands - 1), -1)
        delta = torch.where(shot, 0.0, delta)
        if pen_width is not None:
            pen_width = torch.where(shot, 0.0, pen_width)
    matrix = None
    if config.affine:
        rad = got["angle"] * (math.pi / 180)
        # cos and sin batch by batch, each on the tensor its batch alone would have
        cos = torch.stack([torch.cos(r) for r in rad])
        sin = torch.stack([torch.sin(r) for r in rad])
        zoom = got["zoom"]
        matrix = _affine_from(cos, sin, got["shift"].reshape(k * n, 2) * 28.0, zoom, center=13.5)
    refit = None
    if pen_width is not None and config.pen_refit > 0:
        refit = (got["refit"] < config.pen_refit) & (pen_width > 0)
    if pen_width is not None and config.pen_fine > 0:
        fine = (got["fine"] < config.pen_fine) & (pen_width > 0)
        pen_width = torch.where(fine, got["fine_width"], pen_width)

    def rows(t: torch.Tensor | None) -> list[torch.Tensor | None]:
        return [None] * k if t is None else list(t.unbind(0))  # (k, n, ...): batch by batch

    return [AugParams(d, m, w, r, p)
            for d, m, w, r, p in zip(delta.unbind(0), rows(matrix), rows(pen_width), rows(refit),
                                     rows(photo), strict=True)]


def concat(params: Sequence[AugParams]) -> AugParams:
    """Consecutive batches' parameters as one batch's: `apply` works row by row, so applying
    them at once gives each row the floats it gets in its own batch (tests/test_augmentation.py)
    with a fraction of the per-call overhead.

    >>> g = torch.Generator().manual_seed(0)
    >>> parts = [sample(AugConfig.from_policy("thickness+affine"), n, g) for n in (3, 2)]
    >>> concat(parts).affine.shape
    torch.Size([5, 3, 3])
    """
    def joined(name: str) -> torch.Tensor | None:
        parts = [getattr(p, name) for p in params]
        return None if parts[0] is None else torch.cat(parts)

    delta = joined("stroke_delta_px")
    assert delta is not None  # every policy draws its levels
    return AugParams(delta, joined("affine"), joined("pen_width_px"), joined("refit"), joined("photo"))


def affine_matrix(angle_deg: torch.Tensor, shift_px: torch.Tensor, zoom: torch.Tensor,
                  center: float) -> torch.Tensor:
    """(B, 3, 3) forward pixel-coordinate affines: rotate by `angle_deg` and zoom about
    (`center`, `center`), then shift by `shift_px` (B, 2); Kornia's ``get_affine_matrix2d``
    (same matrices, same convention) in a handful of elementwise ops.

    >>> affine_matrix(torch.tensor([90.0]), torch.tensor([[1.0, 0.0]]), torch.tensor([2.0]),
    ...               center=1.0)[0].round().add(0.0).tolist()  # + 0.0: no -0.0
    [[0.0, -2.0, 4.0], [2.0, 0.0, -1.0], [0.0, 0.0, 1.0]]
    """
    rad = angle_deg * (math.pi / 180)
    return _affine_from(torch.cos(rad), torch.sin(rad), shift_px, zoom, center)


def _affine_from(cos: torch.Tensor, sin: torch.Tensor, shift_px: torch.Tensor,
                 zoom: torch.Tensor, center: float) -> torch.Tensor:
    """`affine_matrix` from the angles' cosines and sines; any shape of (B,) rows."""
    shape = cos.shape
    a, b = (zoom * cos).reshape(-1), (zoom * sin).reshape(-1)
    shift_px = shift_px.reshape(-1, 2)
    tx = shift_px[:, 0] + center - (a - b) * center
    ty = shift_px[:, 1] + center - (a + b) * center
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([a, -b, tx, b, a, ty, zero, zero, one], 1).view(*shape, 3, 3)


def _box_side_px(ink: torch.Tensor) -> torch.Tensor:
    """(B,) the longer side of each digit's box, px: rows and columns whose strongest ink
    reaches half, first to last (0 for a blank digit).

    >>> ink = torch.zeros(2, 28, 28); ink[0, 4:24, 10:14] = 0.5; ink[0, 3, 10] = 0.4999
    >>> _box_side_px(ink).tolist()
    [20.0, 0.0]
    """
    # Sums of the ink above the float just below half (> 0 exactly where some ink >= 0.5):
    # ~5x cheaper on the CPU than max over 28-wide rows.
    over = (ink - _below_half(ink.dtype, ink.device)).clamp_(min=0)
    return profile_side_px(over.sum(-1) > 0, over.sum(-2) > 0, ink.dtype)


def _below_half(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The float just below 0.5: ink > it exactly where ink >= 0.5."""
    half, zero = torch.tensor(0.5, dtype=dtype), torch.tensor(0.0, dtype=dtype)
    return torch.nextafter(half, zero).to(device)


def _profile_side_px(peaks: torch.Tensor) -> torch.Tensor:
    """`_box_side_px` of images from their strongest ink per row and column (B, 1, 2, n)
    (``pen.draw_profile``): the same sides."""
    return side_px(peaks[:, 0] >= 0.5, peaks.dtype)  # = ink > the float below half


#: Re-fitting scales a redrawn digit by at most this factor either way.
REFIT_LIMIT = 1.6


def refit_matrix(original: torch.Tensor | None, redrawn: torch.Tensor,
                 original_side: torch.Tensor | None = None,
                 redrawn_side: torch.Tensor | None = None,
                 original_centre: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 3, 3) forward pixel affines that fit each redrawn digit (B, 1, H, W) into its
    original's box: scaled by the ratio of their longer sides (whole pixels at half ink)
    about its centre of mass, which lands on the original's. This is approximately MNIST's
    size normalisation and centring as ``predict`` applies them to a photo of a digit written
    with that pen (predict measures sub-pixel edges). The stroke scales too: a 9-px pen
    re-fitted by 0.7 is about 6 px wide. A redrawn digit that runs past the field's edge has
    its box underestimated (scaled down a little too little). Box sides and the original's
    centre known beforehand (`original_side`, `redrawn_side`, (B,); `original_centre`, (B, 2))
    are used as given (`original` may then be None).

    >>> orig = torch.zeros(1, 1, 28, 28); orig[..., 4:24, 2:6] = 1    # 20 px tall, x 3.5, y 13.5
    >>> wide = torch.zeros(1, 1, 28, 28); wide[..., 0:24, 0:8] = 1    # 24 px tall, x 3.5, y 11.5
    >>> m = refit_matrix(orig, wide)[0]
    >>> round(float(m[0, 0]), 4), [round(float(v), 2) for v in m[:2, 2]]   # scale, (x, y) shift
    (0.8333, [0.58, 3.92])
    """
    dtype = redrawn.dtype
    if original is None:
        if original_side is None or original_centre is None:
            raise ValueError("refit_matrix needs the original digits or their box sides and centres")
        a, c_old = original_side.to(dtype), original_centre.to(dtype)
    else:
        a = _box_side_px(original[:, 0]) if original_side is None else original_side.to(original.dtype)
        c_old = (centre_xy(original[:, 0]) if original_centre is None
                 else original_centre.to(original.dtype))
    b = _box_side_px(redrawn[:, 0]) if redrawn_side is None else redrawn_side.to(dtype)
    scale = torch.where((a > 0) & (b > 0), a / b.clamp(min=1), 1.0).clamp_(1 / REFIT_LIMIT, REFIT_LIMIT)
    c_new = centre_xy(redrawn[:, 0])
    shift = c_old - scale.unsqueeze(1) * c_new
    zero = torch.zeros_like(scale)
    sx, sy = shift.unbind(1)
    return torch.stack([scale, zero, sx, zero, scale, sy, zero, zero, zero + 1], 1).view(-1, 3, 3)


def warp(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Bilinear warp of (B, C, H, W) by forward pixel affines (B, 3, 3), zeros outside; the
    result of Kornia's ``warp_affine(..., align_corners=True)`` (to float rounding) at half
    its CPU cost: each coordinate of an affine's sampling grid is a per-column term plus a
    per-row term, one broadcast add each (``benchmarks/bench.py`` measures the policies).
    """
    h, w = x.shape[-2:]
    m = matrix.to(x.dtype)
    a, b, tx, c, d, ty = m[:, :2].reshape(-1, 6).unbind(1)
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det        # inverse of the linear part
    kx, ky = (w - 1) / 2, (h - 1) / 2                             # normalised <-> pixel
    # source (normalised) = L @ output (normalised) + o, with L = D^-1 A^-1 D. Divided by
    # Python numbers, not tensors: on CUDA that is a multiplication by the reciprocal, and
    # runs replay only with the same arithmetic.
    l00, l01, l10, l11 = ia, ib * ky / kx, ic * kx / ky, id_
    o0 = (ia * (kx - tx) + ib * (ky - ty)) / kx - 1
    o1 = (ic * (kx - tx) + id_ * (ky - ty)) / ky - 1
    xs, ys = _grid_axes(h, w, x.dtype, x.device)
    # The x and y planes of the grid (B, 2, H, W), each contiguous, in one broadcast add;
    # grid_sample reads them through a (B, H, W, 2) view (it takes any strides): the same
    # numbers as writing the interleaved grid, and the whole warp 13 % cheaper (0.78 vs 0.90 ms
    # per 512-digit batch, medians of 8 alternations in one process, 2026-12-02).
    per_column = torch.stack([l00, l10], 1).view(-1, 2, 1, 1) * xs
    per_row = torch.stack([l01, l11], 1).view(-1, 2, 1, 1) * ys + torch.stack([o0, o1], 1).view(-1, 2, 1, 1)
    planes = per_column + per_row
    return F.grid_sample(x, planes.permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros",
                         align_corners=True)


@functools.cache
def _grid_axes(h: int, w: int, dtype: torch.dtype, device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """`warp`'s normalised x (1, 1, 1, w) and y (1, 1, h, 1) of the pixel centres, made once
    per field (outside inference mode: a cached inference tensor could not join autograd)."""
    with torch.inference_mode(False):
        xs = torch.linspace(-1, 1, w, device=device, dtype=dtype).view(1, 1, 1, w)
        ys = torch.linspace(-1, 1, h, device=device, dtype=dtype).view(1, 1, h, 1)
    return xs, ys

def _at_full_ink(ink: torch.Tensor) -> torch.Tensor:
    """Each digit (B, 1, H, W) divided by its strongest pixel (a photo's contrast stretch);
    a blank digit stays blank. In place on `ink`."""
    return ink.div_(ink.amax((-2, -1), keepdim=True).clamp_(min=1e-6)).clamp_(0, 1)


def rungs_for(images_u8: torch.Tensor, config: AugConfig) -> RungTable | None:
    """The `RungTable` of a training set's uint8 digits (N, 1, 28, 28) for the stroke levels
    `config` draws (None when it draws none): built once per training run, it turns each
    batch's stroke change into a gather and a blend (`apply`'s `rungs`), the same floats.
    ~47 MB a rung for MNIST's 60,000 digits, rung 0 (the digits) included: 188 MB for
    ``thickness``'s -1..+2, 329 MB for -2..+4, per training process."""
    lo = max(math.floor(config.delta_min_px), LADDER_RANGE[0])
    hi = min(math.ceil(config.delta_max_px), LADDER_RANGE[1])
    if lo == hi == 0 or config.p_untouched >= 1 or config.p_pen >= 1:  # no row changes stroke
        return None
    return rung_table(images_u8, min(lo, 0), max(hi, 0))


def apply(x: torch.Tensor, params: AugParams, atlas: PenAtlas | None = None,
          rungs: RungTable | None = None, photos: PhotoBank | None = None) -> torch.Tensor:
    """Apply sampled parameters to images in [0, 1], (B, 1, H, W); same device and dtype.

    `atlas` holds the rows of these B digits (needed when `params` has pen widths): the pen
    redraw replaces a digit first, then come the stroke change and the affine; last, re-fitted
    and fine-pen rows get their strongest ink back at full. `rungs` (optional), the rows of
    these digits of a `RungTable` (``x`` = those uint8 digits ``.to(dtype) / 255``, as the
    trainer makes them),
    serves the stroke change from the precomputed rungs: the same floats, a fraction of the
    CPU time. `photos`, the rows of these digits of a `PhotoBank` (needed when `params` has
    photos), replaces the chosen digits by their photographs before the affine.
    """
    out = x
    refit: tuple[torch.Tensor, torch.Tensor] | None = None  # re-fitted rows, (R, 3, 3) affines
    full: torch.Tensor | None = None  # rows whose strongest ink is put back at full, at the end
    if params.pen_width_px is not None:
        if atlas is None or len(atlas) != x.shape[0]:
            raise ValueError("a pen policy needs the PenAtlas rows of the batch's digits "
                             f"({x.shape[0]}), got {'none' if atlas is None else len(atlas)}")
        rows = torch.nonzero((params.pen_width_px > 0) & atlas.drawable).flatten()
        if rows.numel():  # only the redrawn rows are rendered (each row's ink is its own)
            widths = params.pen_width_px.index_select(0, rows)
            drawn = atlas[rows]
            pens, peaks = draw_profile(drawn, widths)  # and each row's and column's strongest ink
            pens, peaks = pens.to(x.dtype), peaks.to(x.dtype)
            fine = widths < PEN_RANGE[0]  # (R,) within `rows`
            at_full = fine  # rows whose strongest ink is put back at full after the warp
            fine_rows = torch.nonzero(fine).flatten()
            if fine_rows.numel():  # a fine pen's render is faint (peak ~0.4-0.9): full ink now
                pens.index_copy_(0, fine_rows, _at_full_ink(pens.index_select(0, fine_rows)))
                peaks.index_copy_(0, fine_rows, _at_full_ink(peaks.index_select(0, fine_rows)))
            out = x.index_copy(0, rows, pens)
            if params.refit is not None:
                picked = params.refit.index_select(0, rows)
                chosen = torch.nonzero(picked).flatten()
                if chosen.numel():
                    fit_rows = rows.index_select(0, chosen)
                    # The boxes from the atlas: the originals' measured once (and, on the
                    # CPU, their float32 centres: CPU sums, the trainer's there), the redraws'
                    # from their row and column maxima: the same sides and centres as
                    # measured on the images. On another device the centres are measured
                    # (its sums add in another order).
                    box = None if drawn.box_px is None else drawn.box_px.index_select(0, chosen)
                    centre = (drawn.centre_xy.index_select(0, chosen) if drawn.centre_xy is not None
                              and x.dtype == drawn.centre_xy.dtype and x.device.type == "cpu"
                              else None)
                    known = box is not None and centre is not None
                    originals = None if known else x.index_select(0, fit_rows)
                    refit = fit_rows, refit_matrix(originals,
                                                   pens.index_select(0, chosen), box,
                                                   _profile_side_px(peaks.index_select(0, chosen)),
                                                   centre)
                at_full = fine | picked
            if bool(at_full.any()):
                full = rows.index_select(0, torch.nonzero(at_full).flatten())
    if params.photo is not None:
        shots = torch.nonzero(params.photo >= 0).flatten()
        if shots.numel():
            if photos is None or len(photos) != x.shape[0]:
                raise ValueError("a photo policy needs the PhotoBank rows of the batch's digits "
                                 f"({x.shape[0]}), got {'none' if photos is None else len(photos)}")
            drawn_px = params.pen_width_px
            if (bool((params.stroke_delta_px.index_select(0, shots) != 0).any())
                    or (drawn_px is not None and bool((drawn_px.index_select(0, shots) > 0).any()))):
                raise ValueError("a digit replaced by its photo cannot also be redrawn or take a "
                                 "stroke change (sample never draws that)")
            taken = photos.images.index_select(0, shots)                     # (R, K, 28, 28)
            band = params.photo.index_select(0, shots).view(-1, 1, 1, 1).expand(-1, 1, *taken.shape[-2:])
            shot = to_unit(taken.gather(1, band)).to(x.dtype)                # (R, 1, 28, 28)
            out = out.index_copy_(0, shots, shot) if out is not x else out.index_copy(0, shots, shot)
    changed = torch.nonzero(params.stroke_delta_px).flatten()
    if changed.numel():  # only those rows: a level of 0 is the identity (pen rows have 0)
        levels = params.stroke_delta_px.index_select(0, changed)
        if rungs is None:
            moved = apply_stroke_delta(out.index_select(0, changed), levels)
        else:  # the table's rungs are the original digits': no redrawn row may change stroke
            if len(rungs) != x.shape[0]:
                raise ValueError(f"the rung table has {len(rungs)} rows for {x.shape[0]} digits")
            pens_too = params.pen_width_px
            if pens_too is not None and bool((pens_too.index_select(0, changed) > 0).any()):
                raise ValueError("a redrawn digit cannot also take a stroke change from the rung table")
            moved = rungs.blend(changed, levels, out.dtype)
        # in place on a batch this call made (the redrawn one); the caller's `x` is copied
        out = out.index_copy_(0, changed, moved) if out is not x else out.index_copy(0, changed, moved)
    if params.affine is not None:
        matrix = params.affine.float()  # composed in float32 (warp casts to the batch's dtype)
        if refit is not None:  # re-fit first, then the random affine: one warp
            fit_rows, fit = refit
            matrix = matrix.index_copy(0, fit_rows, matrix.index_select(0, fit_rows) @ fit.float())
        out = warp(out, matrix).clamp_(0, 1)
    elif refit is not None:
        fit_rows, fit = refit
        out = out.index_copy(0, fit_rows, warp(out.index_select(0, fit_rows), fit).clamp_(0, 1))
    if full is not None:  # and the strongest ink back at full strength, as MNIST's
        out.index_copy_(0, full, _at_full_ink(out.index_select(0, full)))  # `out` is new here
    return out


def augment(x: torch.Tensor, config: AugConfig, generator: torch.Generator,
            atlas: PenAtlas | None = None, photos: PhotoBank | None = None) -> torch.Tensor:
    """`sample` then `apply`; the identity policy returns `x` itself (bit-identical baseline).
    `atlas`, `photos`: the batch's rows of the training set's `PenAtlas` (pen policies) and
    `PhotoBank` (photo policies)."""
    if config.is_identity:
        return x
    return apply(x, sample(config, x.shape[0], generator), atlas, photos=photos)


def preview(images_u8: torch.Tensor, config: AugConfig, draws: int,
            seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(digits, 1 + draws, 28, 28) uint8 grid (original first) and the (digits, draws) stroke
    changes drawn (px; 0 for a pen redraw and a photo)."""
    x = images_u8.float().div(255)  # (D, 1, 28, 28)
    atlas = build_atlas(images_u8.cpu().numpy()).to(x.device) if config.p_pen > 0 else None
    photos = build_bank(images_u8.cpu().numpy()).to(x.device) if config.p_photo > 0 else None
    generator = torch.Generator(device=x.device).manual_seed(seed)
    columns, levels = [x[:, 0]], []
    for _ in range(draws):
        params = sample(config, x.shape[0], generator)
        columns.append(apply(x, params, atlas, photos=photos)[:, 0])
        levels.append(params.stroke_delta_px)
    grid = torch.stack(columns, 1).mul(255).round().to(torch.uint8)
    return grid.cpu(), torch.stack(levels, 1).cpu()
