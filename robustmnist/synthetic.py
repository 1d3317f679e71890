"""Synthetic "photos" of digits: dark pen on uneven paper, for tests and the predict benchmark.

Two sources of digits:

* `draw_photo`: OpenCV's Hershey fonts at a chosen pen width (given in MNIST pixels: the stroke
  width the digit will have once size-normalised to MNIST's 20 px box), on paper with a
  lighting gradient, sensor noise and optionally a faint printed grid.
* `mnist_photo`: a real MNIST digit (labelled handwriting) blown up to photo size, its 50 %
  contour taken as the pen's edge (MNIST was made from bilevel scans, so that contour is the
  best estimate of the written shape), then photographed under a `Lighting`: paper and ink
  brightness, an illumination gradient, lens blur, sensor noise. Read back through
  ``predict``'s preprocessing it should give the original digit again, so the accuracy gap
  between the two measures what the preprocessing loses.

Both return uint8 grey images; `save_jpeg` / `jpeg_bytes` add the JPEG step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from skimage.morphology import skeletonize

FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)


def draw_photo(digit: int, pen_mnist_px: float, rng: np.random.Generator, *,
               height: int = 360, width: int = 300, font: int = cv2.FONT_HERSHEY_SIMPLEX,
               grid: bool = False, light_ink: bool = False) -> np.ndarray:
    """(height, width) uint8 grey photo of `digit` (dark ink on light paper unless light_ink)."""
    digit_h = int(height * rng.uniform(0.45, 0.6))  # glyph height in the photo, px
    scale = cv2.getFontScaleFromHeight(font, digit_h, 1)
    glyph = np.zeros((height, width), np.uint8)
    (tw, th), _ = cv2.getTextSize(str(digit), font, scale, 1)
    x = int((width - tw) / 2 + rng.uniform(-0.1, 0.1) * width)
    y = int((height + th) / 2 + rng.uniform(-0.08, 0.08) * height)
    cv2.putText(glyph, str(digit), (x, y), font, scale, 255, 1, cv2.LINE_8)
    # OpenCV's own thickness does not scale reliably with large fonts, so the pen is drawn
    # around the glyph's centre line: every pixel within pen/2 of it is ink (soft 1-px edge).
    centre = skeletonize(glyph > 0)
    ys, _ = np.nonzero(centre)
    box = ys.max() - ys.min() + 1
    # Normalising to MNIST's 20-px box scales the pen by 20 / (box + pen): solve for the pen.
    pen = pen_mnist_px * box / (20 - pen_mnist_px)
    distance = cv2.distanceTransform((~centre).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ink = np.clip(pen / 2 + 0.5 - distance, 0, 1) * 255
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
    paper = 215 + 30 * (ramp - ramp.mean())                       # lighting gradient
    if grid:
        paper[(yy.astype(int) % 24) < 2] -= 25                     # faint printed grid
        paper[(xx.astype(int) % 24) < 2] -= 25
    ink_level = rng.uniform(25, 60)
    photo = paper - (paper - ink_level) * (ink.astype(np.float32) / 255)
    photo += rng.normal(0, 4, photo.shape)                         # sensor noise
    photo = np.clip(photo, 0, 255).astype(np.uint8)
    return 255 - photo if light_ink else photo


def save_jpeg(path: Path, image: np.ndarray, quality: int = 85) -> Path:
    Path(path).write_bytes(jpeg_bytes(image, quality))
    return Path(path)


def jpeg_bytes(image: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError("could not encode a JPEG")
    return buf.tobytes()


@dataclass(frozen=True)
class Lighting:
    """How a photo is lit and exposed (brightness 0 = black, 1 = white; clipped at 1)."""

    paper: float = 0.85     # brightness of the paper at the photo's centre
    ink: float = 0.15       # brightness of the ink there (above `paper` = light ink on dark)
    gradient: float = 0.25  # illumination change across the photo, fraction of the centre's
    noise: float = 0.015    # sensor noise, standard deviation
    blur_px: float = 1.0    # lens blur, Gaussian sigma in photo px


# Conditions a photo pipeline must survive; polarity must not depend on absolute brightness.
LIGHTINGS = {
    "normal": Lighting(),
    "dim": Lighting(paper=0.40, ink=0.08),                 # paper at 40 % grey
    "over-exposed": Lighting(paper=1.35, ink=0.55),        # paper clipped to white
    "low contrast": Lighting(paper=0.70, ink=0.52, noise=0.01),
    "light ink on dark": Lighting(paper=0.12, ink=0.85),
}


def mnist_photo(digit: np.ndarray, rng: np.random.Generator, lighting: Lighting = Lighting(), *,
                size: tuple[int, int] = (300, 300), px_per_mnist_px: float | None = None
                ) -> np.ndarray:
    """(height, width) uint8 photo of one MNIST digit (uint8 28x28, light ink on black).

    The digit is scaled by `px_per_mnist_px` (default: random, so its 20-px box spans 35-60 %
    of the photo's height), placed at a random position, and lit with a gradient in a random
    direction.
    """
    height, width = size
    scale = px_per_mnist_px or rng.uniform(0.35, 0.6) * height / 20
    side = max(1, round(28 * scale))
    # Pen shape: the 50 % contour of the smoothly upsampled digit, anti-aliased at 2x.
    up = cv2.resize(digit.astype(np.float32) / 255, (2 * side, 2 * side), interpolation=cv2.INTER_CUBIC)
    pen = cv2.resize((up > 0.5).astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
    coverage = np.zeros((height, width), np.float32)
    y0, x0 = (int(rng.integers(0, max(1, n - side) + 1)) for n in (height, width))
    window = coverage[y0:y0 + side, x0:x0 + side]
    window[...] = pen[:window.shape[0], :window.shape[1]]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * (xx / width - 0.5) + np.sin(angle) * (yy / height - 0.5)
    illumination = 1 + lighting.gradient * ramp
    reflectance = lighting.paper + (lighting.ink - lighting.paper) * coverage
    photo = illumination * reflectance
    if lighting.blur_px > 0:
        photo = cv2.GaussianBlur(photo, (0, 0), lighting.blur_px)
    photo += rng.normal(0, lighting.noise, photo.shape).astype(np.float32)
    return np.clip(np.rint(photo * 255), 0, 255).astype(np.uint8)
