"""Thickness-perturbed MNIST test sets: built once on the CPU with OpenCV, cached, verified.

Two families on the one stroke-width scale (``morphology.py``):

* ``delta``: a signed change of total stroke width, ``stroke_delta_px``. Each digit is upscaled
  x4 (cubic), dilated (delta > 0) or eroded (delta < 0) by a disk of radius ``2 |delta|`` px at
  that scale (= ``|delta| / 2`` per side at 28x28), and area-downsampled back to 28x28 uint8.
* ``absolute``: every digit redrawn at one thickness ``thickness_px`` from its skeleton: binarise
  at x4 (Morpho-MNIST's threshold), skeletonise, ink every pixel within ``2 t`` px of the
  skeleton (anti-aliased edge), area-downsample. Already-thin digits are not erased.

* ``ladder``: the 28x28 rungs of the training-time ladder (``morphology.LADDER``: -1 = 2x2
  erosion, -2 = 3x3 erosion, +1 = 2x2 dilation, +2 = 3x3 dilation), applied with OpenCV to the
  uint8 digits: the perturbations the augmentation itself produces, as a test.

The ``clean`` family (level 0) is the unmodified test set, measured the same way.
Every set is stored with its measured per-digit thickness and ink ratio; its cache file name
carries a hash of everything that determines it (family, level, algorithm version, source
MD5), and the file carries the SHA-256 of its pixels, checked on every load.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from skimage.morphology import skeletonize

from robustmnist import RobustMnistError, artifacts
from robustmnist.measure import (
    UPSCALE,
    as_digits,
    binarise,
    ink_ratio,
    map_chunks,
    measure_thickness,
    upscale,
)
from robustmnist.morphology import LADDER, element

#: Bump when the generation code changes: every cached set is then rebuilt.
ALGORITHM_VERSION = 1

#: family -> default levels (px at 28x28).
DEFAULT_LEVELS: dict[str, tuple[float, ...]] = {
    "delta": (-1.5, -1.0, -0.5, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0),
    "absolute": (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0),
    "ladder": (-2.0, -1.0, 1.0, 2.0),
}
#: family -> allowed (min, max) level; beyond it a digit is gone or a blob.
LEVEL_RANGE: dict[str, tuple[float, float]] = {
    "delta": (-3.0, 6.0),
    "absolute": (0.25, 8.0),
    "ladder": (float(min(LADDER)), float(max(LADDER))),
    "clean": (0.0, 0.0),
}
FAMILIES = ("clean", "delta", "absolute", "ladder")


def check_level(family: str, level: float) -> None:
    if family not in LEVEL_RANGE:
        raise RobustMnistError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    lo, hi = LEVEL_RANGE[family]
    if not lo <= level <= hi:
        raise RobustMnistError(f"{family} level {level:g} is outside [{lo:g}, {hi:g}] px")
    if family == "delta" and level != 0 and (abs(level) * 2 * UPSCALE / 2) % 1:
        raise RobustMnistError(f"delta level {level:g}: must be a multiple of 0.25 px "
                               "(disk radius is whole pixels at x4)")
    if family == "ladder" and level not in LADDER:
        raise RobustMnistError(f"ladder level {level:g}: choose one of {sorted(LADDER)}")


def _stroke_delta_one(image: np.ndarray, delta: float) -> np.ndarray:
    up = cv2.resize(image, None, fx=UPSCALE, fy=UPSCALE, interpolation=cv2.INTER_CUBIC)
    radius = round(abs(delta) * UPSCALE / 2)
    disk = element("disk", 2 * radius + 1)
    changed = cv2.dilate(up, disk) if delta > 0 else cv2.erode(up, disk)
    return cv2.resize(changed, image.shape[::-1], interpolation=cv2.INTER_AREA)


def _redraw_one(image: np.ndarray, thickness: float) -> np.ndarray:
    skeleton = skeletonize(binarise(upscale(image)))
    if not skeleton.any():
        return image.copy()
    # Distance of every pixel to the skeleton, at x4; ink within radius, 1-px soft edge.
    distance = cv2.distanceTransform((~skeleton).astype(np.uint8), cv2.DIST_L2,
                                     cv2.DIST_MASK_PRECISE)
    radius = thickness * UPSCALE / 2
    ink = np.clip(radius + 0.5 - distance, 0.0, 1.0).astype(np.float32)
    small = cv2.resize(ink, image.shape[::-1], interpolation=cv2.INTER_AREA)
    return np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)


def _ladder_one(image: np.ndarray, level: float) -> np.ndarray:
    rung = LADDER[int(level)]
    op = cv2.dilate if rung.op == "dilate" else cv2.erode
    return op(image, element(rung.shape, rung.size))


def perturb(images: np.ndarray, family: str, level: float) -> np.ndarray:
    """The perturbed copy of uint8 (N, 28, 28) digits (pure function, CPU)."""
    check_level(family, level)
    if family == "clean" or (family == "delta" and level == 0):
        return images.copy()
    if family == "ladder":
        return np.stack([_ladder_one(image, level) for image in images])
    one = _stroke_delta_one if family == "delta" else _redraw_one
    return np.stack([one(image, level) for image in images]) if len(images) else images.copy()


@dataclass(frozen=True)
class PerturbedSet:
    family: str
    level: float
    images: np.ndarray      # uint8 (N, 28, 28)
    thickness: np.ndarray   # float32 (N,) measured, px; NaN where no ink is left
    ink_ratio: np.ndarray   # float32 (N,) ink mass / original ink mass

    @property
    def mean_thickness(self) -> float:
        return float(np.nanmean(self.thickness)) if np.isfinite(self.thickness).any() else float("nan")

    @property
    def mean_ink_ratio(self) -> float:
        return float(np.nanmean(self.ink_ratio))

    @property
    def erased_fraction(self) -> float:
        """Digits left with under 10 % of their ink (nearly erased)."""
        return float(np.mean(~(self.ink_ratio >= 0.1)))


def cache_key(family: str, level: float, source_md5: str) -> str:
    spec = json.dumps({"family": family, "level": float(level), "algorithm": ALGORITHM_VERSION,
                       "source_md5": source_md5, "upscale": UPSCALE}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def cache_path(cache_dir: Path, family: str, level: float, source_md5: str) -> Path:
    return Path(cache_dir) / f"{family}_{level:+g}_{cache_key(family, level, source_md5)}.npz"


def _pixels_sha256(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def _load(path: Path, family: str, level: float) -> PerturbedSet | None:
    """The cached set, or None if missing, unreadable or failing its content hash."""
    try:
        with np.load(path, allow_pickle=False) as z:
            images, thickness, ink = z["images"], z["thickness"], z["ink_ratio"]
            meta: dict[str, Any] = json.loads(str(z["meta"]))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    if meta.get("pixels_sha256") != _pixels_sha256(images) or len(thickness) != len(images):
        return None
    return PerturbedSet(family, level, images, thickness, ink)


def build_set(images: np.ndarray, family: str, level: float,
              workers: int | None = None) -> PerturbedSet:
    """Generate and measure one set (no cache); chunks run in parallel processes."""
    images = as_digits(images)
    check_level(family, level)
    parts = map_chunks(_BuildJob(family, level), images, workers)
    perturbed = np.concatenate([p for p, _ in parts]) if parts else images.copy()
    thickness = np.concatenate([t for _, t in parts]).astype(np.float32)
    ink = ink_ratio(perturbed, images).astype(np.float32)
    return PerturbedSet(family, level, perturbed, thickness, ink)


@dataclass(frozen=True)
class _BuildJob:
    """Picklable (family, level) closure for worker processes."""

    family: str
    level: float

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        perturbed = perturb(images, self.family, self.level)
        return perturbed, measure_thickness(perturbed, workers=1)


def load_or_build(images: np.ndarray, family: str, level: float, source_md5: str,
                  cache_dir: Path | None, workers: int | None = None) -> tuple[PerturbedSet, bool]:
    """The set for (family, level) from `cache_dir`, generating it if needed.

    Returns (set, built): `built` is True when it had to be (re)generated. A corrupt or stale
    cache file is detected by its hash and rebuilt.
    """
    check_level(family, level)
    if cache_dir is None:
        return build_set(images, family, level, workers), True
    path = cache_path(cache_dir, family, level, source_md5)
    if path.exists() and (cached := _load(path, family, level)) is not None:
        return cached, False
    built = build_set(images, family, level, workers)
    meta = {"family": family, "level": level, "algorithm": ALGORITHM_VERSION,
            "source_md5": source_md5, "pixels_sha256": _pixels_sha256(built.images)}
    buf = io.BytesIO()
    np.savez(buf, images=built.images, thickness=built.thickness, ink_ratio=built.ink_ratio,
             meta=np.array(json.dumps(meta)))
    artifacts.write_bytes(path, buf.getvalue())
    return built, True
