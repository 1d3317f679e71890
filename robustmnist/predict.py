"""Read a photo of a handwritten digit the way MNIST was made, then ask trained models.

`mnistify` is the one preprocessing routine (used by ``robustmnist predict`` and the tests):

1. **Decode** (`load_gray`): first frame of animated files; 8- or 16-bit; alpha composited
   onto white paper; EXIF rotation applied; very large images reduced while decoding (JPEG
   draft) or right after, to at most ``MAX_SIDE`` px, so memory stays bounded.
2. **Polarity**: MNIST is light ink on black. The border of a photo is mostly paper, so if the
   border is brighter than the middle of the range, the image is inverted.
3. **Illumination**: a grey morphological opening with a kernel much wider than a stroke
   estimates the (possibly shaded) background; subtracting it leaves only the ink, so a shadow
   or a gradient does not become ink.
4. **Noise**: a small Gaussian blur, then Otsu's threshold on the ink map; connected
   components smaller than 5 % of the largest (specks, grid crossings, dust) and faint ones
   are dropped. A faint printed grid is removed because it is far below Otsu's threshold.
5. **Crop** to the bounding box of the kept ink; ink intensities are scaled so the strong
   ink is 1 (anti-aliased edges kept).
6. **Size-normalise** into a 20x20 box keeping the aspect ratio (area interpolation = the
   anti-aliasing MNIST's resampling produced); the strongest ink becomes 255, as in MNIST.
7. **Centre** by centre of mass in 28x28 (whole-pixel shift, as MNIST).
8. Optionally **redraw at a fixed stroke thickness** (the `absolute` test-set routine).

The model then normalises with mean 0.1307 / std 0.3081, as in training.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from robustmnist import RobustMnistError
from robustmnist.layout import RunDir

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
MAX_SIDE = 1024            # working resolution cap, px (longest side)
MAX_PIXELS = 200_000_000   # refuse to decode anything larger (decompression bombs)
BOX = 20                   # MNIST's size-normalisation box, px
SIDE = 28


class ImageError(RobustMnistError):
    """A problem with one input image (reported per file; the others still run)."""


def expand_inputs(specs: Sequence[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths (in order)."""
    paths: list[Path] = []
    for spec in specs:
        if any(ch in spec for ch in "*?["):
            paths += [Path(p) for p in sorted(glob.glob(spec, recursive=True)) if Path(p).is_file()]
        elif Path(spec).is_dir():
            paths += sorted(p for p in Path(spec).rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(Path(spec))
    return paths


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
    for path in paths:
        try:
            gray = load_gray(path)
            pre = mnistify(gray, normalize_thickness, name=str(path))
        except ImageError as e:
            yield PhotoResult(path, None, [], str(e))
            continue
        x = torch.from_numpy(pre.image)[None, None]
        probs = [m.log_proba(x).exp()[0].cpu().numpy() for m in models]
        saved = []
        if save_dir is not None:
            stem = _unique_stem(path, used)
            views = ((".mnist.png", pre.image), (".side-by-side.png", side_by_side(gray, pre.image)))
            for suffix, view in views:
                artifacts.write_bytes(save_dir / f"{stem}{suffix}", cv2.imencode(".png", view)[1].tobytes())
                saved.append(save_dir / f"{stem}{suffix}")
        yield PhotoResult(path, pre, [rank(m.name, p) for m, p in zip(models, probs, strict=True)],
                          saved=saved)


def _unique_stem(path: Path, used: set[str]) -> str:
    """The file's stem, numbered when two inputs share it (a/x.jpg, b/x.jpg -> x, x-2)."""
    stem, n = path.stem, 2
    while stem in used:
        stem, n = f"{path.stem}-{n}", n + 1
    used.add(stem)
    return stem
