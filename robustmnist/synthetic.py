"""Synthetic "photos" of digits: dark pen on uneven paper, for tests and the predict benchmark.

Digits are drawn with OpenCV's Hershey fonts at a chosen pen width (given in MNIST pixels: the
stroke width the digit will have once size-normalised to MNIST's 20 px box), on paper with a
lighting gradient, sensor noise and optionally a faint printed grid, then saved as JPEG.
"""

from __future__ import annotations

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
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"could not encode {path}")
    Path(path).write_bytes(buf.tobytes())
    return Path(path)
