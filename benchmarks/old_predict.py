"""The predict preprocessing as it was before the rewrite (commit b1e628e), kept verbatim as a
baseline for `predict_speed.py` and `predict_photos.py`; not used by the package.

Differences in the new one: see the module docstring of `robustmnist.predict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from robustmnist.predict import ImageError

MAX_SIDE = 1024            # working resolution cap, px (longest side)
MAX_PIXELS = 200_000_000   # refuse to decode anything larger (decompression bombs)
BOX = 20                   # MNIST's size-normalisation box, px
SIDE = 28


def load_gray(path: Path) -> np.ndarray:
    """Decode any supported image into float32 grey in [0, 1], longest side <= MAX_SIDE."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(f"{path}: {img.width}x{img.height} is too large to decode "
                                 f"(> {MAX_PIXELS:,} px); downscale it first")
            img.seek(0)  # first frame of an animation
            if img.format == "JPEG":
                img.draft("L", (MAX_SIDE, MAX_SIDE))  # decode at reduced size: bounded memory
            oriented = ImageOps.exif_transpose(img)
            oriented.load()
            gray = _to_gray_array(oriented)
    except (UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ImageError(f"{path}: not a readable image ({type(err).__name__})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: corrupt or truncated image ({err})") from None
    h, w = gray.shape
    scale = MAX_SIDE / max(h, w)
    if scale < 1:
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                          interpolation=cv2.INTER_AREA)
    return gray


def _to_gray_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        return (arr / top).astype(np.float32)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        return np.clip(arr / max(1.0, float(arr.max())), 0, 1)
    if "A" in img.getbands() or img.mode == "P":
        rgba = img.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, rgba)
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


@dataclass(frozen=True)
class Preprocessed:
    image: np.ndarray        # (28, 28) uint8, MNIST-like (light ink on black)
    inverted: bool           # the input was dark ink on light paper
    ink_box: tuple[int, int, int, int]  # x, y, w, h of the ink in the working image


def mnistify(gray: np.ndarray, normalize_thickness_px: float | None = None,
             name: str = "image") -> Preprocessed:
    """Turn a grey photo (float [0, 1]) into a 28x28 MNIST-style digit (see module doc)."""
    if gray.ndim != 2 or gray.size == 0:
        raise ImageError(f"{name}: expected a 2-D grey image")
    h, w = gray.shape
    # 2. polarity from the border (mostly paper).
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    inverted = bool(np.median(border) > 0.5)
    ink = 1.0 - gray if inverted else gray.copy()
    # 3. illumination: opening with a kernel far wider than a stroke estimates the background.
    k = max(3, (min(h, w) // 3) | 1)  # wider than any stroke of a digit that fills the photo
    background = cv2.morphologyEx(ink, cv2.MORPH_OPEN,
                                  cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    background = cv2.GaussianBlur(background, (0, 0), k / 4)
    ink = np.clip(ink - background, 0, 1)
    # 4. noise: blur, Otsu, drop small or faint components.
    ink = cv2.GaussianBlur(ink, (0, 0), max(0.5, min(h, w) / 400))
    peak = float(np.percentile(ink, 99.9))
    if peak < 0.08:
        raise ImageError(f"{name}: no ink found (blank or too faint image)")
    ink8 = np.clip(ink / peak * 255, 0, 255).astype(np.uint8)
    _, mask = cv2.threshold(ink8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    count, labels, comp_stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        raise ImageError(f"{name}: no ink found (blank image)")
    areas = comp_stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= 0.05 * areas.max()) + 1
    kept = np.isin(labels, keep)
    ys, xs = np.nonzero(kept)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    # Soft ink inside the kept components (dilated a little to keep anti-aliased edges).
    region = cv2.dilate(kept.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    strong = float(np.percentile(ink[kept], 90))
    soft = np.where(region, np.clip(ink / max(strong, 1e-6), 0, 1), 0.0)[y0:y1, x0:x1]
    # 6. fit into 20x20 keeping the aspect ratio.
    ch, cw = soft.shape
    scale = BOX / max(ch, cw)
    nh, nw = max(1, round(ch * scale)), max(1, round(cw * scale))
    small = cv2.resize(soft.astype(np.float32), (nw, nh), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((SIDE, SIDE), np.float32)
    oy, ox = (SIDE - nh) // 2, (SIDE - nw) // 2
    canvas[oy:oy + nh, ox:ox + nw] = small / max(float(small.max()), 1e-6)  # peak ink = 255
    # 7. centre of mass to the centre of the 28x28 field, by a whole-pixel shift (as MNIST:
    #    no resampling blur, the 20x20 box stays 20x20; the residual is at most 0.5 px).
    cy, cx = centre_of_mass(canvas)
    centre = (SIDE - 1) / 2
    dy, dx = round(centre - cy), round(centre - cx)
    dy = int(np.clip(dy, -oy, SIDE - oy - nh))
    dx = int(np.clip(dx, -ox, SIDE - ox - nw))
    canvas = np.roll(canvas, (dy, dx), axis=(0, 1))
    image = np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8)
    if normalize_thickness_px is not None:
        from robustmnist.perturb import perturb

        image = perturb(image[None], "absolute", normalize_thickness_px)[0]
    return Preprocessed(image, inverted, (int(x0), int(y0), int(x1 - x0), int(y1 - y0)))


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(row, col) centre of mass of a grey image."""
    m = image.astype(np.float64)
    total = m.sum()
    idx = np.arange(m.shape[0]), np.arange(m.shape[1])
    return float((m.sum(1) * idx[0]).sum() / total), float((m.sum(0) * idx[1]).sum() / total)
