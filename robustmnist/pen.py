"""Redraw a digit along its own skeleton with a pen of a chosen width.

A digit's skeleton (Morpho-MNIST's: cubic x4 upscale with smoothing, half-max threshold,
``skeletonize``) is the writer's path; the distance from every pixel to it turns any pen width
into ink with one elementwise expression, ``ink = clamp(width / 2 + 0.5 - distance, 0, 1)``
(a 1-px anti-aliased edge). The skeleton is computed once per digit and serves every width:

* the ``absolute`` test family renders each thickness from the x4 distance map (`render_x4`);
* the ``pen`` training augmentation renders from a `PenAtlas`: per training digit the distance
  from each 28x28 pixel centre to the skeleton (uint8, 1/32 px) and a calibration, built once on
  the CPU, cached under the data dir, loaded once onto the training device (`draw`);
* the ``photo`` test family draws the skeleton at photo resolution (`PhotoDigit`).

Pen widths of the augmentation are on the *measured* scale: each digit's calibration (its
thickness measured at render widths 2-9 px) maps a nominal width to the render width that
measures that much, because a wide pen fills loops and junctions, where the Morpho-MNIST measure
reads more than the pen (an 8 drawn at 6 px measures ~8.7 px). The calibration starts at ~1.5 px:
a 1-px pen measures ~1.5 px (the measurement floor of the calibrated pens). A *fine* pen (a line
narrower than a pixel, as a fine pen photographed and size-normalised draws it) is below that
floor: its width is a render width in [`FINE_PEN_PX`, 1) px, off the measured scale; the
augmentation puts its strongest ink back at full, as a photo's contrast stretch does
(``AugConfig.pen_fine``). Such pens measure 1.07-1.49 px (``benchmarks/fine_pens.py``).
At the top, a width beyond what a digit measures at the widest calibrated render (9 px) is
drawn at that ceiling: 14.8 % of the 60,000 training digits measure under 9 px there (1 % under
8.5 px, the lowest 7.0 px), so the widest pens of a 1-9 px range are a little narrower
than asked on those digits.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from robustmnist import artifacts
from robustmnist.measure import UPSCALE, as_digits, binarise, map_chunks, measure_thickness, upscale

#: Calibrated pen widths of the augmentation, px of measured stroke thickness at 28x28; the
#: first is the measurement floor (a 1-px render, not measured).
PEN_RANGE = (1.0, 9.0)
#: Fine pens (below the measurement floor PEN_RANGE[0]) are render widths from this up to 1 px;
#: thinner renders measure no thinner (benchmarks/fine_pens.py).
FINE_PEN_PX = 0.25
#: Render widths at which each atlas digit is measured (its calibration knots), px.
CALIBRATION_WIDTHS = (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
#: Atlas distances are stored as uint8 in units of 1/DIST_STEP px (saturating at ~8 px).
DIST_STEP = 32
#: Bump when the atlas computation changes: every cached atlas is then rebuilt.
ATLAS_VERSION = 2

#: The photo family: height of the written digit (ink, outside to outside), px; image side
#: relative to it; JPEG quality. Bump PHOTO_VERSION when the rendering changes.
PHOTO_DIGIT_PX = 200
PHOTO_MARGIN = 1.5
JPEG_QUALITY = 85
PHOTO_VERSION = 1

Log = Callable[[str], None]


# --------------------------------------------------------------------------- the skeleton

def skeleton(image: np.ndarray) -> np.ndarray:
    """The writer's path of a uint8 (28, 28) digit: bool (112, 112) at x4 (all False if blank)."""
    from skimage.morphology import skeletonize

    return np.asarray(skeletonize(binarise(upscale(image))), dtype=bool)


def skeleton_distance(path: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance (px at x4) of every x4 pixel to the skeleton `path`."""
    return cv2.distanceTransform((~path).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def render_x4(distance: np.ndarray, thickness_px: float) -> np.ndarray:
    """A width-`thickness_px` pen along the skeleton of an x4 distance map -> uint8 (28, 28)."""
    radius = thickness_px * UPSCALE / 2
    ink = np.clip(radius + 0.5 - distance, 0.0, 1.0).astype(np.float32)
    h, w = distance.shape
    small = cv2.resize(ink, (w // UPSCALE, h // UPSCALE), interpolation=cv2.INTER_AREA)
    return np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- the training atlas

@dataclass(frozen=True)
class PenAtlas:
    """What the ``pen`` augmentation needs per digit, as tensors on one device.

    Attributes:
        distance: uint8 (N, 1, 28, 28): distance of each pixel centre to the digit's skeleton,
            in 1/DIST_STEP px (255 = far; all 255 for a digit without a skeleton).
        knots: float32 (N, K + 1): measured thickness at render widths (1, *CALIBRATION_WIDTHS),
            strictly increasing; the first knot (1 px) is not measured (measurement floor).
        profile: uint8 (N, 1, 2, 28): the nearest distance in each row (``[:, 0, 0]``) and
            column (``[:, 0, 1]``), so a redraw's strongest ink per row and column, hence its
            box, comes without the image (ink falls with the distance); derived from
            `distance` when not given.
        box_px: float32 (N,) or None: each original digit's box side (`digit_box_px`), for
            re-fitting a redraw into it; None: measured on the batch.
        centre_xy: float32 (N, 2) or None: each original digit's ink centre (`centre_xy` of
            the digit over 255, as the trainer's batches hold it); None: measured on the batch.
    """

    distance: torch.Tensor
    knots: torch.Tensor
    profile: torch.Tensor = None  # type: ignore[assignment]  # set in __post_init__
    box_px: torch.Tensor | None = None
    centre_xy: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.profile is None:
            d = self.distance
            object.__setattr__(self, "profile", torch.stack([d.amin(-1), d.amin(-2)], -2))

    def __len__(self) -> int:
        return int(self.distance.shape[0])

    def _rows(self, take: Callable[[torch.Tensor], torch.Tensor]) -> PenAtlas:
        return PenAtlas(take(self.distance), take(self.knots), take(self.profile),
                        None if self.box_px is None else take(self.box_px),
                        None if self.centre_xy is None else take(self.centre_xy))

    def __getitem__(self, idx: torch.Tensor | slice) -> PenAtlas:
        """The rows of a batch (e.g. the training batch's indices)."""
        if isinstance(idx, torch.Tensor) and idx.dtype != torch.bool:
            # index_select: the rows of a 1-d index of non-negative positions (a batch's),
            # as advanced indexing gives them, at a fraction of its CPU cost (6 vs 116 us
            # for 512 of 60,000 digits, 2026-12-02)
            return self._rows(lambda t: t.index_select(0, idx))
        return self._rows(lambda t: t[idx])

    def to(self, device: torch.device | str) -> PenAtlas:
        return self._rows(lambda t: t.to(device))

    def with_boxes(self, images_u8: np.ndarray | torch.Tensor) -> PenAtlas:
        """The atlas with its digits' box sides and centres (`box_px`, `centre_xy`) from their
        uint8 pixels (N, 28, 28) or (N, 1, 28, 28)."""
        images = torch.as_tensor(np.asarray(images_u8)).reshape(len(self), 1, 28, 28)
        centres = torch.cat([centre_xy(part[:, 0].float() / 255.0) for part in images.split(4096)]
                            ) if len(images) else torch.zeros(0, 2)
        device = self.distance.device
        return PenAtlas(self.distance, self.knots, self.profile,
                        digit_box_px(images).to(device), centres.to(device))

    @property
    def drawable(self) -> torch.Tensor:
        """(N,) bool: the digit has a skeleton to redraw."""
        return torch.isfinite(self.knots[:, -1])


def centre_xy(ink: torch.Tensor) -> torch.Tensor:
    """(B, 2) ink-weighted centre of images (B, H, W), (x, y) = (column, row) pixel
    coordinates as ``augmentation.warp``'s affines use them (``predict.centre_of_mass``
    returns (row, col)); the image centre for a blank digit. Each row's centre is the same
    floats whatever else is in the batch (tests/test_pen.py)."""
    h, w = ink.shape[-2:]
    xs, ys, middle = _centre_constants(h, w, ink.dtype, ink.device)
    mass = ink.sum((-2, -1))
    cx = (ink.sum(-2) * xs).sum(-1) / mass
    cy = (ink.sum(-1) * ys).sum(-1) / mass
    return torch.where(mass.unsqueeze(1) > 0, torch.stack([cx, cy], 1), middle)


@functools.cache
def _centre_constants(h: int, w: int, dtype: torch.dtype, device: torch.device
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`centre_xy`'s column and row coordinates and the field's middle, made once per field."""
    with torch.inference_mode(False):  # cached: no inference tensor
        return (torch.arange(w, device=device, dtype=dtype),
                torch.arange(h, device=device, dtype=dtype),
                torch.tensor([(w - 1) / 2, (h - 1) / 2], device=device, dtype=dtype))


def digit_box_px(images_u8: torch.Tensor) -> torch.Tensor:
    """(N,) float32: the longer side of each uint8 digit's (N, 1, H, W) box, whole px: rows and
    columns with a pixel at half ink or more (>= 128: 128 / 255 is the first over 0.5), first to
    last; 0 for a blank digit. ``augmentation.refit_matrix`` measures the same on [0, 1] images.

    >>> d = torch.zeros(2, 1, 28, 28, dtype=torch.uint8); d[0, 0, 4:24, 10:14] = 128
    >>> d[1, 0, 3, 3] = 127
    >>> digit_box_px(d).tolist()
    [20.0, 0.0]
    """
    inked = images_u8[:, 0] >= 128
    return profile_side_px(inked.any(-1), inked.any(-2), torch.float32)


def profile_side_px(rows: torch.Tensor, cols: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B,) the longer side of each box whose inked rows (B, H) and columns (B, W) are given,
    first to last (0 when none is inked): `side_px` of one (B, 2, max(H, W)) tensor, the
    shorter profile padded with no ink."""
    h, w = rows.shape[-1], cols.shape[-1]
    inked = torch.zeros(rows.shape[0], 2, max(h, w), dtype=torch.bool, device=rows.device)
    inked[:, 0, :h] = rows
    inked[:, 1, :w] = cols
    return side_px(inked, dtype)


def side_px(inked: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B,) the longer extent, first to last, of (B, 2, n) inked rows and columns."""
    ends = torch.where(inked.unsqueeze(-2), *_ends(inked.shape[-1], inked.device)).amax(-1)
    return (ends[..., 0] + ends[..., 1] + 1).clamp_(min=0).amax(-1).to(dtype)  # last - first + 1


@functools.cache
def _ends(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(2, n) positions and fills whose maxima over the inked ones are (last, -first) of a
    profile (-1 and -n when none is inked: a side of at most 0)."""
    with torch.inference_mode(False):  # cached: no inference tensor
        idx = torch.arange(n, device=device)
        return torch.stack([idx, -idx]), torch.tensor([[-1], [-n]], device=device).expand(2, n)


def render(distance: torch.Tensor, width_px: torch.Tensor) -> torch.Tensor:
    """Ink of a pen of `width_px` (B,) along the skeleton: (B, 1, H, W) float32 in [0, 1].

    >>> d = torch.tensor([0, 32, 64], dtype=torch.uint8).view(1, 1, 1, 3)  # 0, 1, 2 px away
    >>> render(d, torch.tensor([2.0])).flatten().tolist()
    [1.0, 0.5, 0.0]
    """
    return _ink(distance, _edge(width_px))


def _edge(width_px: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, 1) float32: where a pen's ink reaches 0.5 from the skeleton, px + 0.5."""
    return (width_px.to(torch.float32) / 2 + 0.5).view(-1, 1, 1, 1)


def _ink(distance: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
    """``(edge - distance / DIST_STEP).clamp(0, 1)`` in float32 for uint8 `distance` (the atlas's),
    the distances converted in the subtraction (a power of two: times its inverse is the same
    quotient)."""
    return torch.sub(edge, distance, alpha=1 / DIST_STEP).clamp_(0, 1)


@functools.cache
def _knot_widths(device: torch.device) -> torch.Tensor:
    """The render widths of the calibration knots, float32, on `device` (made once there)."""
    with torch.inference_mode(False):  # cached: no inference tensor
        return torch.tensor((PEN_RANGE[0], *CALIBRATION_WIDTHS), device=device)


def render_width(knots: torch.Tensor, pen_width_px: torch.Tensor) -> torch.Tensor:
    """The render width (B,) that measures `pen_width_px` (B,) on each digit (piecewise linear
    in its calibration `knots` (B, K + 1); clamped to the calibrated range). A fine pen, below
    the measurement floor ``PEN_RANGE[0]``, is its own render width.

    >>> knots = torch.tensor([[1.0, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5]])  # measures +0.5
    >>> render_width(knots.expand(3, -1), torch.tensor([0.5, 3.0, 9.0])).tolist()
    [0.5, 2.5, 8.5]
    """
    widths = _knot_widths(knots.device)
    safe = torch.where(torch.isfinite(knots), knots, widths)  # undrawable rows: any numbers
    pen = pen_width_px.to(torch.float32)
    w = torch.minimum(torch.maximum(pen, safe[:, 0]), safe[:, -1])
    upper = torch.searchsorted(safe, w.unsqueeze(1)).clamp_(1, len(widths) - 1)  # (B, 1)
    ends = torch.cat([upper - 1, upper], 1)                                         # (B, 2)
    (x0, x1), (y0, y1) = safe.gather(1, ends).unbind(1), widths[ends].unbind(1)
    calibrated = y0 + (y1 - y0) * (w - x0) / (x1 - x0)
    return torch.where(pen < PEN_RANGE[0], pen, calibrated)


def draw(atlas: PenAtlas, pen_width_px: torch.Tensor) -> torch.Tensor:
    """Each digit of `atlas` redrawn with a pen that measures `pen_width_px` (B,):
    (B, 1, 28, 28) float32 in [0, 1], on the atlas's device (a fine pen, below
    ``PEN_RANGE[0]``, at its render width: faint until its ink is scaled to full)."""
    return render(atlas.distance, render_width(atlas.knots, pen_width_px))


def draw_profile(atlas: PenAtlas, pen_width_px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`draw` and the strongest ink of each row and column of it, (B, 1, 2, 28): the same
    floats as the maxima over the drawn image (the ink of the row's nearest distance), at a
    28th of the work."""
    edge = _edge(render_width(atlas.knots, pen_width_px))
    return _ink(atlas.distance, edge), _ink(atlas.profile, edge)


def _atlas_chunk(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance uint8 (n, 28, 28), knots float32 (n, K + 1)) of digits (numpy only: runs in
    forked workers)."""
    n, h, w = images.shape
    distance = np.full((n, h, w), 255, np.uint8)
    drawable = np.zeros(n, bool)
    for i, image in enumerate(images):
        path = skeleton(image)
        if path.any():
            # Bilinear resampling = the distance at each 28x28 pixel centre.
            d = cv2.resize(skeleton_distance(path), (w, h), interpolation=cv2.INTER_LINEAR)
            distance[i] = np.clip(np.rint(d * (DIST_STEP / UPSCALE)), 0, 255)
            drawable[i] = True
    measured = np.empty((n, len(CALIBRATION_WIDTHS)), np.float64)
    for k, width in enumerate(CALIBRATION_WIDTHS):
        ink = np.clip(width / 2 + 0.5 - distance.astype(np.float32) / DIST_STEP, 0, 1)
        measured[:, k] = measure_thickness(np.rint(ink * 255).astype(np.uint8), workers=1)
    knots = np.concatenate([np.full((n, 1), PEN_RANGE[0]), np.nan_to_num(measured, nan=0.0)], 1)
    # Strictly increasing (a digit can measure a hair less at a wider pen).
    knots = np.maximum.accumulate(knots + 1e-3 * np.arange(knots.shape[1]), axis=1)
    knots[~drawable] = np.nan
    return distance, knots.astype(np.float32)


def build_atlas(images: np.ndarray, workers: int | None = None) -> PenAtlas:
    """The atlas of uint8 (N, 28, 28) digits, on the CPU (chunks in parallel processes)."""
    images = as_digits(images)
    if len(images) == 0:
        return PenAtlas(torch.zeros((0, 1, 28, 28), dtype=torch.uint8),
                        torch.zeros((0, len(CALIBRATION_WIDTHS) + 1)))
    parts = map_chunks(_atlas_chunk, images, workers)
    distance = np.concatenate([d for d, _ in parts])
    knots = np.concatenate([k for _, k in parts])
    return PenAtlas(torch.from_numpy(distance).unsqueeze(1), torch.from_numpy(knots)).with_boxes(images)


def atlas_id(images: np.ndarray) -> str:
    """``atlas_<N>_<hash>``: names the atlas of `images` by a hash of the pixels and of the
    algorithm's settings (its cache file's stem; training runs record it)."""
    spec = json.dumps({"atlas": ATLAS_VERSION, "upscale": UPSCALE, "step": DIST_STEP,
                       "calibration": CALIBRATION_WIDTHS, "floor": PEN_RANGE[0],
                       "images": artifacts.sha256_of(as_digits(images))}, sort_keys=True)
    return f"atlas_{len(images)}_{hashlib.sha256(spec.encode()).hexdigest()[:16]}"


def atlas_path(cache_dir: Path, images: np.ndarray) -> Path:
    """Cache file of the atlas of `images` (named by `atlas_id`)."""
    return Path(cache_dir) / f"{atlas_id(images)}.npz"


def _load_atlas(path: Path, n: int) -> PenAtlas | None:
    """The cached atlas, or None if missing, unreadable or failing its content hash."""
    z = artifacts.load_checked_npz(path, {"distance": (n, 28, 28),
                                          "knots": (n, len(CALIBRATION_WIDTHS) + 1)})
    if z is None:
        return None
    return PenAtlas(torch.from_numpy(z["distance"]).unsqueeze(1), torch.from_numpy(z["knots"]))


def load_or_build_atlas(images: np.ndarray, cache_dir: Path | None, workers: int | None = None,
                        log: Log = lambda _m: None) -> tuple[PenAtlas, bool]:
    """The atlas of `images` from `cache_dir`, built (and cached) if missing, stale or corrupt.

    Returns (atlas on the CPU, built)."""
    images = as_digits(images)
    if cache_dir is None:
        return build_atlas(images, workers), True
    path = atlas_path(cache_dir, images)

    def built() -> tuple[PenAtlas, bytes]:
        atlas = build_atlas(images, workers)
        arrays = {"distance": atlas.distance[:, 0].numpy(), "knots": atlas.knots.numpy()}
        return atlas, artifacts.checked_npz(arrays, {"atlas": ATLAS_VERSION})

    def announce(why: str) -> None:
        log(f"building the pen atlas of {len(images):,} digits (skeletons and calibration, {why}; "
            f"cached in {path.parent})")

    atlas, was_built = artifacts.load_or_build(path, lambda p: _load_atlas(p, len(images)), built,
                                               announce, log)
    return (atlas if was_built else atlas.with_boxes(images)), was_built


def training_atlas(images: torch.Tensor, data_dir: Path | None, log: Log = lambda _m: None) -> PenAtlas:
    """The atlas of a split's uint8 (N, 1, 28, 28) images, cached in ``<data dir>/pen``."""
    from robustmnist.data import data_subdir

    return load_or_build_atlas(images.cpu().numpy(), data_subdir(data_dir, "pen"), log=log)[0]


# --------------------------------------------------------------------------- photos

def digit_seed(image: np.ndarray) -> int:
    """A seed from a digit's pixels: its photo does not depend on where it sits in a set."""
    return int.from_bytes(hashlib.blake2b(np.ascontiguousarray(image).tobytes(),
                                          digest_size=8).digest(), "little")


def skeleton_segments(path: np.ndarray) -> np.ndarray:
    """(M, 2, 2) float (x, y) segments between 8-neighbour pixels of an x4 skeleton, in px at
    28x28 (isolated pixels as zero-length segments)."""
    h, w = path.shape
    padded = np.pad(path, 1)
    ends, linked = [], np.zeros_like(path)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        pair = path & padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        ys, xs = np.nonzero(pair)
        ends.append(np.stack([np.stack([xs, ys], 1), np.stack([xs + dx, ys + dy], 1)], 1))
        linked |= pair
        linked[ys + dy, xs + dx] = True
    ys, xs = np.nonzero(path & ~linked)
    ends.append(np.stack([np.stack([xs, ys], 1)] * 2, 1))
    segments = np.concatenate(ends).astype(np.float64)
    return (segments + 0.5) / UPSCALE - 0.5


@dataclass(frozen=True)
class Scene:
    """How one photo is taken (drawn once per digit, shared by every pen width)."""

    paper: float                    # brightness of the paper under even light, [0, 1]
    ink: float                      # reflectance of the ink relative to the paper
    gradient: float                 # amplitude of a linear light gradient across the image
    angle: float                    # its direction, radians
    shadow: float                   # depth of a soft round shadow
    shadow_xy: tuple[float, float]  # its centre, in [-1, 1] image coordinates
    blur_px: float                  # Gaussian defocus, sigma in photo px
    noise: float                    # sensor noise, std as a fraction of full scale
    offset: tuple[float, float]     # the digit's shift from the centre, fraction of the side

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Scene:
        return cls(paper=rng.uniform(0.65, 0.95), ink=rng.uniform(0.05, 0.35),
                   gradient=rng.uniform(0.0, 0.15), angle=rng.uniform(0, 2 * np.pi),
                   shadow=rng.uniform(0.0, 0.2), shadow_xy=tuple(rng.uniform(-1, 1, 2)),
                   blur_px=rng.uniform(0.5, 1.5), noise=rng.uniform(0.005, 0.025),
                   offset=tuple(rng.uniform(-0.05, 0.05, 2)))


class PhotoDigit:
    """One digit ready to be photographed at any pen width: its skeleton, scene, lighting and
    sensor noise are computed once (seeded by the digit's pixels)."""

    def __init__(self, image: np.ndarray, seed: int | None = None) -> None:
        path = skeleton(image)
        self.segments = skeleton_segments(path)
        rng = np.random.default_rng(digit_seed(image) if seed is None else seed)
        self.scene = Scene.draw(rng)
        if len(self.segments):
            lo, hi = self.segments.reshape(-1, 2).min(0), self.segments.reshape(-1, 2).max(0)
        else:
            lo = hi = np.array([13.5, 13.5])
        self.centre = (lo + hi) / 2
        self.path_height = max(float(hi[1] - lo[1]), 2.0)   # px at 28x28
        aspect = max(1.0, float(hi[0] - lo[0]) / self.path_height)
        self.side = 2 * round(PHOTO_MARGIN * PHOTO_DIGIT_PX * aspect / 2)
        yy, xx = np.mgrid[0:self.side, 0:self.side] / (self.side - 1) * 2 - 1
        s = self.scene
        light = 1 + s.gradient * (np.cos(s.angle) * xx + np.sin(s.angle) * yy)
        light -= s.shadow * np.exp(-((xx - s.shadow_xy[0]) ** 2 + (yy - s.shadow_xy[1]) ** 2) / 0.5)
        self.paper = (s.paper * light).astype(np.float32)          # (side, side)
        self.noise = rng.normal(0, s.noise, self.paper.shape).astype(np.float32)

    def ink(self, pen_fraction: float) -> np.ndarray:
        """Ink coverage (side, side) float32 of the digit written with a pen `pen_fraction` of
        its height wide (height = ink outside to outside = PHOTO_DIGIT_PX)."""
        pen = pen_fraction * PHOTO_DIGIT_PX
        scale = (PHOTO_DIGIT_PX - pen) / self.path_height
        centre = self.side / 2 + np.array(self.scene.offset) * self.side
        points = (self.segments - self.centre) * scale + centre
        canvas = np.zeros((self.side, self.side), np.uint8)
        shift = 4  # sub-pixel coordinates (1/16 px)
        lines = list(np.rint(points * (1 << shift)).astype(np.int32).reshape(-1, 2, 1, 2))
        cv2.polylines(canvas, lines, False, 255, 1, cv2.LINE_8, shift)
        distance = cv2.distanceTransform((canvas == 0).astype(np.uint8), cv2.DIST_L2,
                                         cv2.DIST_MASK_PRECISE)
        return np.clip(pen / 2 + 0.5 - distance, 0, 1)

    def photograph(self, pen_fraction: float) -> np.ndarray:
        """The JPEG-decoded grey photo (side, side) float32 in [0, 1]: dark ink on lit paper,
        defocus, sensor noise, JPEG at JPEG_QUALITY."""
        s = self.scene
        gray = self.paper * (1 - self.ink(pen_fraction) * (1 - s.ink))
        gray = cv2.GaussianBlur(gray, (0, 0), s.blur_px) + self.noise
        pixels = np.clip(np.rint(gray * 255), 0, 255).astype(np.uint8)
        ok, jpeg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        decoded = cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE) if ok else None
        if decoded is None:  # pragma: no cover - OpenCV always encodes a uint8 image
            raise RuntimeError("JPEG round trip failed")
        return decoded.astype(np.float32) / 255.0


def photo_levels(image: np.ndarray, pen_fractions: Sequence[float]) -> list[np.ndarray]:
    """One digit photographed at each pen fraction and read back with `predict.mnistify`:
    uint8 (28, 28) each (blank where the preprocessing finds no digit)."""
    return read_photos(PhotoDigit(image), pen_fractions)


def read_photos(digit: PhotoDigit, pen_fractions: Sequence[float]) -> list[np.ndarray]:
    """`digit` photographed at each pen fraction and read back with `predict.mnistify`."""
    from robustmnist.predict import ImageError, mnistify

    out = []
    for fraction in pen_fractions:
        try:
            out.append(mnistify(digit.photograph(fraction)).image)
        except ImageError:
            out.append(np.zeros((28, 28), np.uint8))
    return out


def photo_fingerprint() -> str:
    """Identifies the photo family's generator: PHOTO_VERSION and the source of ``predict`` and ``images``
    (its preprocessing is part of the set, so any change there rebuilds the cached sets)."""
    from robustmnist import images, predict

    source = inspect.getsource(predict) + inspect.getsource(images)
    return f"{PHOTO_VERSION}:{hashlib.sha256(source.encode()).hexdigest()[:16]}"
