"""Read a photo of a handwritten digit the way MNIST was made, then ask trained models.

MNIST's digits were scanned as bilevel images, size-normalised to fit a 20x20 box keeping the
aspect ratio (the resampling anti-aliased them into grey levels) and centred in a 28x28 field
by their centre of mass, which sits at pixel index (14.0, 14.0) (measured over the test set:
13.99 / 14.01, +/- 0.29, the spread of a whole-pixel shift). `mnistify` redoes that on a
photo, so a model reads a photographed digit as well as the original: on the 10,000 MNIST test
digits rendered as JPEG photos (dim, over-exposed, low-contrast, light on dark too), 20-epoch
models read within 0.16 pp of their clean accuracy (``benchmarks/predict_photos.py``, figures
in ``benchmarks/README.md``). Steps, and why:

1. **Decode** (`images.load_gray`): bounded, format-checked decoding to grey in [0, 1].
2. **Working resolution**: at most ``WORK_SIDE`` px on the long side (area resampling), so
   the cost per photo is bounded whatever the input; ``ink_box`` is reported in the input's
   pixels.
3. **Polarity** (MNIST is light ink on black), independent of absolute brightness: a plane
   fitted to the border (mostly paper, possibly shaded) is subtracted; the side (darker or
   lighter than the paper) that holds more contrast beyond the noise is the ink. A dim photo
   (paper at 40 % grey), an over-exposed one, a low-contrast one and light ink on dark all
   read correctly; comparing brightness with a fixed 0.5 does not.
4. **Illumination**: a grey opening (erosion, then dilation) with a disc half the image's
   longer side wide removes the strokes, and the solid blobs a thick pen makes of closed
   loops, and leaves the paper's shading; it is computed on a copy reduced
   to ``BACKGROUND_SIDE`` px (shading is smooth, so nothing is lost, and it costs ~0.1 ms
   instead of ~95 ms at 300x300), extended past the border by point reflection (so it
   follows a gradient right up to the edge instead of lagging it there), and subtracted.
5. **Ink level and pen edge**: a slight blur against sensor noise; the stroke level is the
   90th percentile of the ink above Otsu's threshold; the pen's edge is where the ink reaches
   half of it (the bilevel shape MNIST started from). Connected pieces smaller than 5 % of the
   largest (specks, dust) are dropped. Refused as "no digit found": images smaller than
   ``MIN_SIDE`` px, ink weaker than ``MIN_SNR`` times the noise (blank, too faint, pure noise),
   and ink that covers most of the image or falls into many similar pieces (noise, texture).
6. **Size-normalise**: the ink coverage of the kept pieces is cropped around them; its extent
   is measured to a fraction of a pixel (the edge ramps, whether anti-aliasing or blur, count
   for what they cover) and the longer side scaled to 20 px. Small crops are enlarged first;
   then the coverage is sharpened around its half level into the pen's bilevel shape (its
   edges keep their sub-pixel positions) and area-resampled: MNIST's anti-aliasing.
7. **Centre** the centre of mass on pixel (14.0, 14.0) with a sub-pixel shift, applied at
   the crop's resolution before the area resampling, so it adds no interpolation blur. MNIST
   itself shifted by whole pixels; the exact centre reads 0.05-0.3 pp better. Centring on the
   geometric middle (13.5, 13.5), as this module once did, cost ~1.4 pp with a 3-epoch model.
8. The strongest ink becomes 255, as in MNIST. Optionally the strokes are **redrawn at a fixed
   thickness** (the `absolute` test-set routine).

The model then normalises with mean 0.1307 / std 0.3081, as in training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from robustmnist import RobustMnistError
from robustmnist.images import ImageError, expand_inputs, load_gray, reduce_side, split_inputs

__all__ = ["ImageError", "Preprocessed", "expand_inputs", "load_gray", "mnistify", "predict_files",
           "split_inputs"]

if TYPE_CHECKING:
    from robustmnist.checkpoint import Classifier

WORK_SIDE = 512            # mnistify's working resolution cap, px (longest side)
BACKGROUND_SIDE = 48       # resolution of the paper-shading estimate, px (longest side)
MIN_SIDE = 8               # smaller images are refused, px
MIN_SNR = 5.0              # stroke contrast / noise standard deviation, below: "no digit"
MIN_CONTRAST = 0.02        # stroke contrast floor (grey levels / 255 ~ 5)
MAX_PIECES = 12            # more similar-sized ink pieces than this is noise or texture
MAX_INK_FRACTION = 0.5     # ink covering more of the image than this is not a digit
BOX = 20                   # MNIST's size-normalisation box, px
SIDE = 28
CENTRE = 14.0              # where MNIST's centre of mass sits (row, col pixel index)
PREDICT_BATCH = 32         # photos per model call in predict_files
EDGE_GAIN = 3.0            # ink map sharpened around the pen's half level (1 = as is, inf = bilevel)


@dataclass(frozen=True)
class Preprocessed:
    image: np.ndarray        # (28, 28) uint8, MNIST-like (light ink on black)
    inverted: bool           # the input was dark ink on light paper
    ink_box: tuple[int, int, int, int]  # x, y, w, h of the kept ink, in the input's pixels


def mnistify(gray: np.ndarray, normalize_thickness_px: float | None = None,
             name: str = "image") -> Preprocessed:
    """Turn a grey photo (float [0, 1]; integer arrays are scaled by their type's maximum)
    into a 28x28 MNIST-style digit (steps in the module docstring).

    Raises ImageError ("no digit found ...") for images too small, blank, too faint or noise.

    >>> digit = np.zeros((60, 40), np.float32); digit[10:50, 18:23] = 1.0  # a "1"
    >>> pre = mnistify(digit); pre.image.shape, pre.inverted, pre.ink_box
    ((28, 28), False, (18, 10, 5, 40))
    """
    gray = np.asarray(gray)
    if gray.ndim != 2:
        raise ImageError(f"{name}: expected a 2-D grey image, got shape {gray.shape}")
    h, w = gray.shape
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"{name}: no digit found: {w}x{h} px is too small "
                         f"(at least {MIN_SIDE}x{MIN_SIDE}); use the original photo")
    if gray.dtype.kind not in "biuf":
        raise ImageError(f"{name}: expected grey levels, got an array of {gray.dtype}")
    top = np.iinfo(gray.dtype).max if gray.dtype.kind in "iu" else 1
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: refused
        gray = gray.astype(np.float32, copy=False) / np.float32(top)
    if not np.isfinite(gray).all():
        raise ImageError(f"{name}: the image holds NaN or infinite values")
    # 2. working resolution
    work = reduce_side(gray, WORK_SIDE)
    to_input = w / work.shape[1], h / work.shape[0]
    # 3. polarity: which side of the (shaded) paper holds the ink
    inverted = _dark_ink(work)
    ink = -work if inverted else work
    # 4. illumination: paper shading from a reduced copy (an opening removes the strokes)
    ink = ink - _background(ink)
    # 5. ink level, pen edge, clean-up
    ink = cv2.GaussianBlur(ink, (0, 0), 0.6)
    sample = _sample(ink)
    paper = float(np.median(sample))
    noise = 1.4826 * float(np.median(np.abs(sample - paper)))
    ink -= paper
    strong = _stroke_level(ink)
    if strong < max(MIN_CONTRAST, MIN_SNR * noise):
        raise ImageError(f"{name}: no digit found (blank, too faint or noise: ink contrast "
                         f"{strong:.3f}, noise {noise:.3f}); photograph it with more contrast")
    kept, (x0, y0, x1, y1) = _pen_shape(ink > strong / 2, name)
    # Ink coverage (0-1) of the kept pieces, with a margin: its soft edge reaches past the
    # half-level box.
    rows = slice(max(0, y0 - 3), min(ink.shape[0], y1 + 3))
    cols = slice(max(0, x0 - 3), min(ink.shape[1], x1 + 3))
    region = cv2.dilate(kept, np.ones((5, 5), np.uint8))[rows, cols]
    coverage = np.clip(ink[rows, cols] / strong, 0, 1) * region
    # 6-8. the digit's longer side 20 px, centre of mass on (14, 14), strongest ink 255
    image = _fit_and_centre(coverage)
    if normalize_thickness_px is not None:
        from robustmnist.perturb import perturb

        image = perturb(image[None], "absolute", normalize_thickness_px)[0]
    ink_box = (int(x0 * to_input[0]), int(y0 * to_input[1]),
               max(1, round((x1 - x0) * to_input[0])), max(1, round((y1 - y0) * to_input[1])))
    return Preprocessed(image, inverted, ink_box)


def _dark_ink(work: np.ndarray) -> bool:
    """True when the ink is darker than the paper, decided from contrast, not brightness.

    A plane fitted to the border (robustly: refitted without the pixels far from the first
    fit, where ink touches the edge) models the paper and its linear shading; the residual's
    mass beyond 3 noise sigmas on the dark side is compared with that on the light side.
    """
    h, w = work.shape
    ys = np.concatenate([np.zeros(w), np.full(w, h - 1), np.arange(h), np.arange(h)])
    xs = np.concatenate([np.arange(w), np.arange(w), np.zeros(h), np.full(h, w - 1)])
    values = work[ys.astype(int), xs.astype(int)].astype(np.float64)
    design = np.stack([xs / w, ys / h, np.ones_like(xs)], 1)
    use = np.ones(len(values), bool)
    for _ in range(2):
        coef = np.linalg.lstsq(design[use], values[use], rcond=None)[0]
        residual = values - design @ coef
        spread = 1.4826 * np.median(np.abs(residual[use])) + 1e-6
        use = np.abs(residual) <= 3 * spread
        if use.sum() < 3:
            break
    stride = _stride(work)
    sample = work[::stride, ::stride]
    plane = (coef[0] * (np.arange(w) / w)[None, ::stride]
             + coef[1] * (np.arange(h) / h)[::stride, None] + coef[2])
    residual = (sample - plane).ravel()
    noise = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    dark = float(np.clip(-residual - 3 * noise, 0, None).sum())
    light = float(np.clip(residual - 3 * noise, 0, None).sum())
    return dark > light


def _stride(image: np.ndarray, size: int = 20_000) -> int:
    """Step of a regular subsample of at most `size` pixels (enough for a median; faster)."""
    return max(1, int(np.ceil(np.sqrt(image.size / size))))


def _sample(image: np.ndarray) -> np.ndarray:
    stride = _stride(image)
    return image[::stride, ::stride]


def _background(ink: np.ndarray) -> np.ndarray:
    """The paper's level under the ink (light ink map): opening on a reduced copy."""
    h, w = ink.shape
    scale = min(1.0, BACKGROUND_SIDE / max(h, w))
    small = reduce_side(ink, BACKGROUND_SIDE) if scale < 1 else ink
    # Half the image's longer side: wider than any stroke, and than the solid blob a thick
    # pen makes of a closed loop, also in a tight portrait crop (a third of the shorter side
    # left rings of ink there: photo family at 0.25, -3 to -4 pp).
    k = max(3, (max(small.shape) // 2) | 1)
    # Extended by point reflection (linear extrapolation): at the border the opening would
    # otherwise see only one side and lag a shading gradient by up to k/2 px of its slope.
    padded = np.pad(small, k, mode="reflect", reflect_type="odd")
    paper = cv2.morphologyEx(padded, cv2.MORPH_OPEN,
                             cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    paper = cv2.GaussianBlur(paper, (0, 0), k / 4)[k:-k, k:-k]
    if paper.shape != ink.shape:
        paper = cv2.resize(paper, (w, h), interpolation=cv2.INTER_LINEAR)
    return paper


def _stroke_level(ink: np.ndarray) -> float:
    """The ink level of a full stroke: 90th percentile of the ink above Otsu's threshold."""
    peak = float(np.percentile(_sample(ink), 99.9))
    if not peak > 0:
        return 0.0
    ink8 = np.clip(ink * (255 / peak), 0, 255).astype(np.uint8)
    threshold, _ = cv2.threshold(ink8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    strong = ink[ink8 > threshold]
    return float(np.percentile(strong, 90)) if strong.size else 0.0


def _pen_shape(mask: np.ndarray, name: str) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(kept pieces as uint8 0/1, their box x0, y0, x1, y1); refuses noise and texture."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        raise ImageError(f"{name}: no digit found (no ink); photograph it with more contrast")
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= 0.05 * areas.max()) + 1
    similar = int((areas >= 0.25 * areas.max()).sum())
    if similar > MAX_PIECES:
        raise ImageError(f"{name}: no digit found (the ink falls into {similar} similar pieces: "
                         "noise or texture); crop the photo to one digit")
    if areas[keep - 1].sum() > MAX_INK_FRACTION * mask.size:
        raise ImageError(f"{name}: no digit found (ink covers most of the image); "
                         "photograph one digit on plain paper")
    lut = np.zeros(count, np.uint8)
    lut[keep] = 1
    kept = lut[labels]
    x0 = int(stats[keep, cv2.CC_STAT_LEFT].min())
    y0 = int(stats[keep, cv2.CC_STAT_TOP].min())
    x1 = int((stats[keep, cv2.CC_STAT_LEFT] + stats[keep, cv2.CC_STAT_WIDTH]).max())
    y1 = int((stats[keep, cv2.CC_STAT_TOP] + stats[keep, cv2.CC_STAT_HEIGHT]).max())
    return kept, (x0, y0, x1, y1)


def _extent(profile: np.ndarray) -> float:
    """Sub-pixel length of the ink along one axis, from the row (or column) maxima of its
    coverage: whole pixels between the first and last inked one, less what the partly covered
    pixels of the two edge ramps leave uncovered (the ramp's sum is the edge's true position,
    whether it comes from anti-aliasing or from blur)."""
    inked = np.flatnonzero(profile > 0.05)
    run = profile[inked[0]:inked[-1] + 1]
    full = np.flatnonzero(run >= 0.95)
    if full.size == 0:  # a pen thinner than a pixel: no full row to measure from
        return float(run.size)
    head, tail = run[:full[0]], run[full[-1] + 1:]
    return float(run.size - (head.size - head.sum()) - (tail.size - tail.sum()))


def _fit_and_centre(coverage: np.ndarray) -> np.ndarray:
    """Ink coverage (float 0-1, cropped around the digit) -> (28, 28) uint8: the digit's
    longer side becomes 20 px, its centre of mass lands on (14, 14), its peak on 255.

    Small crops are first enlarged (linear interpolation of the coverage); then the coverage
    is sharpened around its half level into the pen's bilevel shape, which keeps the edges'
    sub-pixel positions. The 28x28 field is laid out at that resolution (a canvas `side` px
    wide, scaled by 28 / side), the shape placed in it at the whole-canvas-pixel offset that
    puts its centre of mass on the centre; one area resampling then gives the anti-aliased
    digit. A canvas pixel is 1/5 of an MNIST pixel or finer, so the centring is sub-pixel
    without any extra blur.
    """
    box_px = max(_extent(coverage.max(1)), _extent(coverage.max(0)), 2.0)
    up = int(np.ceil(100 / box_px))  # small digits: refine first, for sub-pixel centring
    if up > 1:
        coverage = cv2.resize(coverage, (coverage.shape[1] * up, coverage.shape[0] * up),
                              interpolation=cv2.INTER_LINEAR)
        box_px *= up
    pen = np.clip(EDGE_GAIN * (coverage - 0.5) + 0.5, 0, 1)
    ch, cw = pen.shape
    side = round(SIDE * box_px / BOX)
    scale = SIDE / side  # canvas px -> MNIST px
    mass = float(pen.sum())  # > 0: the kept pieces are above half the stroke level
    cy = float(pen.sum(1) @ np.arange(ch)) / mass
    cx = float(pen.sum(0) @ np.arange(cw)) / mass
    # canvas index p lands on MNIST index (p + 0.5) * scale - 0.5; a crop wider than the
    # canvas (the margin) is clipped at the canvas edge.
    oy = round((CENTRE + 0.5) / scale - 0.5 - cy)
    ox = round((CENTRE + 0.5) / scale - 0.5 - cx)
    canvas = np.zeros((side, side), np.float32)
    ys, xs = slice(max(0, oy), min(side, oy + ch)), slice(max(0, ox), min(side, ox + cw))
    canvas[ys, xs] = pen[ys.start - oy:ys.stop - oy, xs.start - ox:xs.stop - ox]
    digit = cv2.resize(canvas, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    return np.clip(np.rint(digit * (255 / max(float(digit.max()), 1e-6))), 0, 255).astype(np.uint8)


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(row, col) centre of mass of a grey image."""
    m = image.astype(np.float64)
    total = m.sum()
    idx = np.arange(m.shape[0]), np.arange(m.shape[1])
    return float((m.sum(1) * idx[0]).sum() / total), float((m.sum(0) * idx[1]).sum() / total)


@dataclass(frozen=True)
class Prediction:
    model: str
    digit: int
    probability: float
    top3: list[tuple[int, float]]   # (digit, probability), most likely first


@dataclass(frozen=True)
class PhotoResult:
    path: Path
    preprocessed: Preprocessed | None
    predictions: list[Prediction]
    error: str | None = None         # one line, when the photo could not be read
    saved: list[Path] = field(default_factory=list)


def rank(model: str, probabilities: np.ndarray) -> Prediction:
    """The top digit and top-3 of one (10,) probability vector.

    >>> rank("m", np.array([0.1, 0.7, 0.2] + [0.0] * 7)).top3
    [(1, 0.7), (2, 0.2), (0, 0.1)]
    """
    top = np.argsort(-probabilities, kind="stable")[:3]
    return Prediction(model, int(top[0]), float(probabilities[top[0]]),
                      [(int(d), round(float(probabilities[d]), 4)) for d in top])


def side_by_side(gray: np.ndarray, image: np.ndarray, height: int = 280) -> np.ndarray:
    """uint8 view: the photo | a grey gap | the 28x28 model input, both `height` px tall."""
    width = max(1, round(gray.shape[1] * height / gray.shape[0]))
    photo = cv2.resize((gray * 255).astype(np.uint8), (width, height), interpolation=cv2.INTER_AREA)
    seen = cv2.resize(image, (height, height), interpolation=cv2.INTER_NEAREST)
    return np.hstack([photo, np.full((height, 8), 128, np.uint8), seen])


def predict_files(checkpoints: Sequence[Path], specs: Sequence[str], *,
                  device: torch.device | str = "cpu", normalize_thickness: float | None = None,
                  save_dir: Path | None = None) -> Iterator[PhotoResult]:
    """Preprocess every image and ask every checkpoint; one result per image, in order (an
    unreadable image gives a result with `error` set, the others still run)."""
    from robustmnist import artifacts
    from robustmnist.checkpoint import Classifier, load_checkpoint

    models = [Classifier.from_checkpoint(load_checkpoint(c), device) for c in checkpoints]
    paths = expand_inputs(specs)
    if not paths:
        raise RobustMnistError(f"no images found in {' '.join(specs)}")
    if save_dir is not None:
        artifacts.claim_dir(save_dir, "--save-preprocessed folder")
    used: set[str] = set()
    pending: list[PhotoResult] = []  # read, waiting for the models (asked once per batch)
    for path in paths:
        try:
            gray = load_gray(path)
            pre = mnistify(gray, normalize_thickness, name=str(path))
        except ImageError as e:
            pending.append(PhotoResult(path, None, [], str(e)))
            continue
        saved = []
        if save_dir is not None:
            stem = _unique_stem(path, used)
            views = ((".mnist.png", pre.image), (".side-by-side.png", side_by_side(gray, pre.image)))
            for suffix, view in views:
                artifacts.write_bytes(save_dir / f"{stem}{suffix}", cv2.imencode(".png", view)[1].tobytes())
                saved.append(save_dir / f"{stem}{suffix}")
        pending.append(PhotoResult(path, pre, [], saved=saved))
        if sum(r.preprocessed is not None for r in pending) == PREDICT_BATCH:
            yield from _ask(models, pending)
            pending = []
    yield from _ask(models, pending)


def _ask(models: Sequence[Classifier], results: list[PhotoResult]) -> Iterator[PhotoResult]:
    """`results` in order, the read ones with every model's prediction (one batch per model:
    a model call costs about as much for 32 digits as for one)."""
    images = [r.preprocessed.image for r in results if r.preprocessed is not None]
    if images:
        x = torch.from_numpy(np.stack(images))[:, None]                        # (B, 1, 28, 28)
        probs = [m.log_proba(x).exp().cpu().numpy() for m in models]           # (B, 10) each
    i = 0
    for r in results:
        if r.preprocessed is None:
            yield r
            continue
        yield replace(r, predictions=[rank(m.name, p[i]) for m, p in zip(models, probs, strict=True)])
        i += 1


def _unique_stem(path: Path, used: set[str]) -> str:
    """The file's stem, numbered when two inputs share it (a/x.jpg, b/x.jpg -> x, x-2)."""
    stem, n = path.stem, 2
    while stem in used:
        stem, n = f"{path.stem}-{n}", n + 1
    used.add(stem)
    return stem
