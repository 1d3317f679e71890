"""Reading a user's image files safely: bounded, format-checked decoding to grey in [0, 1].

Only the decoders in ``FORMATS`` are tried. The pixel count is checked from the header
*before* decoding (refused above ``MAX_PIXELS``: a 200-byte PNG can claim 12000x12000, 1.8 GB
once decoded). JPEGs are decoded at reduced size (draft mode) and everything is reduced to at
most ``MAX_SIDE`` px; first frame of animations; EXIF rotation applied; 16-bit data scaled by
its own bit depth (a 12-bit scan peaks at 4095, not 65535). Transparency: when the visible
colour is uniform the alpha channel *is* the drawing, otherwise it is composited onto a
background that contrasts with the visible pixels (white ink on a transparent background
stays visible).
"""

from __future__ import annotations

import glob
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from robustmnist import RobustMnistError
from robustmnist.layout import RunDir

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
FORMATS = ("PNG", "JPEG", "BMP", "DIB", "TIFF", "WEBP", "GIF", "PPM")  # the only decoders tried
MAX_PIXELS = 50_000_000    # refuse to decode anything larger (checked from the header), px
MAX_SIDE = 1024            # load_gray's output cap, px (longest side)


class ImageError(RobustMnistError):
    """A problem with one input image (reported per file; the others still run)."""


def expand_inputs(specs: Sequence[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths (in order). A
    name that exists is taken literally, so "photo[1].png" is that file, not a pattern."""
    paths: list[Path] = []
    for spec in specs:
        if any(ch in spec for ch in "*?[") and not Path(spec).exists():
            paths += [Path(p) for p in sorted(glob.glob(spec, recursive=True)) if Path(p).is_file()]
        elif Path(spec).is_dir():
            paths += sorted(p for p in Path(spec).rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(Path(spec))
    return paths


def load_gray(path: Path) -> np.ndarray:
    """Decode a supported image into float32 grey in [0, 1], longest side <= MAX_SIDE.

    Raises ImageError (one line naming the file) for anything that cannot be read, including
    images over MAX_PIXELS, which are refused before their pixels are decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            # Pillow warns about corrupt EXIF and large sizes; the former is harmless here and
            # the latter refused below, so neither reaches the user.
            warnings.simplefilter("ignore")
            with Image.open(path, formats=FORMATS) as img:
                width, height = img.size  # from the header: nothing decoded yet
                if width * height > MAX_PIXELS:
                    raise ImageError(f"{path}: {width}x{height} px is more than robustmnist "
                                     f"decodes ({MAX_PIXELS // 1_000_000} megapixels); "
                                     f"downscale it first (a digit needs ~{MAX_SIDE} px)")
                if img.format in ("JPEG", "MPO"):  # decode at 1/2, 1/4 or 1/8 size
                    shrink = MAX_SIDE / max(width, height)
                    if shrink < 1:
                        img.draft("L", (max(1, int(width * shrink)), max(1, int(height * shrink))))
                oriented = ImageOps.exif_transpose(img)
                return _to_gray_array(oriented, MAX_SIDE)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image (supported: {', '.join(FORMATS)}); "
                         "convert it to PNG or JPEG") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: more than robustmnist decodes ({MAX_PIXELS // 1_000_000} "
                         "megapixels); downscale it first") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied; make it readable") from None
    except Exception as err:  # a decoder meeting malformed bytes raises all kinds of errors
        detail = (str(err).strip().splitlines() or [""])[0][:160]
        raise ImageError(f"{path}: corrupt or truncated image ({type(err).__name__}"
                         f"{': ' + detail if detail else ''}); re-export it as PNG or JPEG") from None


def _to_gray_array(img: Image.Image, max_side: int | None = None) -> np.ndarray:
    """A decoded PIL image -> float32 grey in [0, 1], area-reduced to `max_side` if given."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = reduce_side(np.asarray(img).astype(np.float32), max_side)
        arr -= min(0.0, float(arr.min()))  # 32-bit ints may be negative
        # Scale by the data's own bit depth: a 12-bit scan peaks at 4095, not 65535.
        top = 2.0 ** max(8, int(np.ceil(np.log2(float(arr.max()) + 1)))) - 1
        return arr / np.float32(top)
    if img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 1:
            arr = (arr - lo) / max(hi - lo, 1e-12)
        return reduce_side(arr, max_side)
    if "A" in img.getbands() or "a" in img.getbands() or (
            img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"))
        gray = _flatten_alpha(cv2.cvtColor(np.ascontiguousarray(rgba[..., :3]), cv2.COLOR_RGB2GRAY),
                              rgba[..., 3])
        return reduce_side(gray, max_side)
    return reduce_side(np.asarray(img.convert("L")), max_side).astype(np.float32) / 255.0


def _flatten_alpha(gray_u8: np.ndarray, alpha_u8: np.ndarray) -> np.ndarray:
    """Grey + alpha -> float32 grey: the drawing stays visible whatever its colour."""
    gray, alpha = gray_u8.astype(np.float32) / 255, alpha_u8.astype(np.float32) / 255
    if alpha.min() == alpha.max():  # no transparency in use
        return gray
    visible = gray[alpha > 0.5] if (alpha > 0.5).any() else gray[alpha > 0]
    if float(visible.max()) - float(visible.min()) < 0.1:
        return alpha  # one colour: the alpha channel is the drawing (light on black)
    background = 0.0 if float(visible.mean()) > 0.5 else 1.0  # contrasts with what is drawn
    return gray * alpha + background * (1 - alpha)


def reduce_side(arr: np.ndarray, max_side: int | None) -> np.ndarray:
    h, w = arr.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return arr
    scale = max_side / max(h, w)
    return cv2.resize(arr, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=cv2.INTER_AREA)


def split_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """(checkpoints, image specs): the leading .pt files and run folders, then the rest."""
    split = 0
    while split < len(inputs) and (inputs[split].endswith(".pt") or
                                   RunDir(Path(inputs[split])).checkpoint.is_file()):
        split += 1
    if split == 0:
        raise RobustMnistError("pass at least one checkpoint first: "
                               "robustmnist predict RUN/checkpoint.pt photo.jpg")
    if split == len(inputs):
        raise RobustMnistError("no images given after the checkpoint(s)")
    return [Path(c) for c in inputs[:split]], list(inputs[split:])
