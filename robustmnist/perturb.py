"""Thickness-perturbed MNIST test sets: built once on the CPU with OpenCV, cached, verified.

Families on the one stroke-width scale (``morphology.py``):

* ``delta``: a signed change of total stroke width, ``stroke_delta_px``. Each digit is upscaled
  x4 (cubic), dilated (delta > 0) or eroded (delta < 0) by a disk of radius ``2 |delta|`` px at
  that scale (= ``|delta| / 2`` per side at 28x28), and area-downsampled back to 28x28 uint8.
* ``absolute``: every digit redrawn at one thickness ``thickness_px`` from its skeleton: binarise
  at x4 (Morpho-MNIST's threshold), skeletonise, ink every pixel within ``2 t`` px of the
  skeleton (anti-aliased edge), area-downsample. Already-thin digits are not erased.
* ``ladder``: the 28x28 rungs of the training-time ladder (``morphology.LADDER``: -1 = 2x2
  erosion, -2 = 3x3 erosion, +1 = 2x2 dilation, +2 = 3x3 dilation, +3 = 4x4, +4 = 5x5),
  applied with OpenCV to the uint8 digits: the perturbations the augmentation itself
  produces, as a test. The thickness policies train up to +2 by default: +3 and +4 are held
  out unless a variant's ``delta_max_px`` reaches them (`TEST_RUNGS`).
* ``photo``: the user's case. Each digit's skeleton is written with a pen whose width is a
  fraction of the digit's height (the level), photographed (200-px digit on a 300-px image, dark
  ink on paper under uneven light, defocus, sensor noise, JPEG; seeded by the digit's pixels,
  ``pen.PhotoDigit``) and read back through `predict.mnistify`, the preprocessing ``predict``
  uses. After its 20x20 box fit a fraction f is about 20 f px at 28x28; the measured thickness
  of the preprocessed digits puts the curve on the pixel scale.

The ``clean`` family (level 0) is the unmodified test set, measured the same way.
Every set is stored with its measured per-digit thickness and ink ratio; its cache file name
carries a hash of everything that determines it (family, level, algorithm version, source
MD5; for ``photo`` also the photo generator and the ``predict`` source), and the file carries the
SHA-256 of its pixels, checked on every load.

Work is shared across the levels of a family (`build_sets`, `load_or_build_levels`): each digit
is upscaled (``delta``) or skeletonised (``absolute``, ``photo``) once and every level is
rendered from that; the results are bit-identical to building one level at a time.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from robustmnist import RobustMnistError, artifacts, pen
from robustmnist.measure import UPSCALE, as_digits, ink_ratio, map_chunks, measure_thickness
from robustmnist.morphology import LADDER, Rung, element

#: Bump when the generation or measuring code changes: every cached set is then rebuilt.
#: 2: thickness from exact grid distances (measure._exact; differs from 1 by < 2e-6 px).
ALGORITHM_VERSION = 2

#: The ``ladder`` family's rungs: the whole 28x28 ladder.
TEST_RUNGS: dict[int, Rung] = dict(LADDER)

#: family -> default levels (px at 28x28; for ``photo`` the pen width / digit height).
DEFAULT_LEVELS: dict[str, tuple[float, ...]] = {
    "delta": (-1.5, -1.0, -0.5, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0),
    "absolute": (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0),
    "ladder": (-2.0, -1.0, 1.0, 2.0, 3.0, 4.0),
    "photo": (0.03, 0.05, 0.08, 0.12, 0.16, 0.20, 0.25),
}
#: family -> allowed (min, max) level; beyond it a digit is gone or a blob.
LEVEL_RANGE: dict[str, tuple[float, float]] = {
    "delta": (-3.0, 6.0),
    "absolute": (0.25, 8.0),
    "ladder": (float(min(TEST_RUNGS)), float(max(TEST_RUNGS))),
    "photo": (0.01, 0.35),
    "clean": (0.0, 0.0),
}
FAMILIES = ("clean", "delta", "absolute", "ladder", "photo")
#: family -> the unit of its level, for messages and reports.
LEVEL_UNIT = {"photo": "of the digit's height"}


def check_level(family: str, level: float) -> None:
    if family not in LEVEL_RANGE:
        raise RobustMnistError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    lo, hi = LEVEL_RANGE[family]
    if lo == hi != level:
        raise RobustMnistError(f"{family} has one level, {lo:g}; drop --level (got {level!r})")
    if not lo <= level <= hi:
        unit = LEVEL_UNIT.get(family, "px")
        # repr, not %g: 8.000001 must not read as 8 next to a limit of 8
        raise RobustMnistError(f"{family} level {level!r} is outside [{lo:g}, {hi:g}] {unit}; "
                               f"pass a level in that range (the defaults: "
                               f"{', '.join(f'{v:g}' for v in DEFAULT_LEVELS.get(family, (lo,)))})")
    if family == "delta" and level != 0 and (abs(level) * 2 * UPSCALE / 2) % 1:
        raise RobustMnistError(f"delta level {level:g}: must be a multiple of 0.25 px "
                               "(disk radius is whole pixels at x4)")
    if family == "ladder" and level not in TEST_RUNGS:
        raise RobustMnistError(f"ladder level {level:g}: choose one of {sorted(TEST_RUNGS)}")


# One digit at every level: (uint8 (28, 28), levels) -> one uint8 (28, 28) per level.

def _delta_levels(image: np.ndarray, levels: Sequence[float]) -> list[np.ndarray]:
    up = cv2.resize(image, None, fx=UPSCALE, fy=UPSCALE, interpolation=cv2.INTER_CUBIC)
    out = []
    for delta in levels:
        if delta == 0:
            out.append(image.copy())
            continue
        radius = round(abs(delta) * UPSCALE / 2)
        disk = element("disk", 2 * radius + 1)
        changed = cv2.dilate(up, disk) if delta > 0 else cv2.erode(up, disk)
        out.append(cv2.resize(changed, image.shape[::-1], interpolation=cv2.INTER_AREA))
    return out


def _absolute_levels(image: np.ndarray, levels: Sequence[float]) -> list[np.ndarray]:
    path = pen.skeleton(image)
    if not path.any():
        return [image.copy() for _ in levels]
    # Distance of every pixel to the skeleton, at x4; ink within radius, 1-px soft edge.
    distance = pen.skeleton_distance(path)
    return [pen.render_x4(distance, thickness) for thickness in levels]


def _ladder_levels(image: np.ndarray, levels: Sequence[float]) -> list[np.ndarray]:
    out = []
    for level in levels:
        rung = TEST_RUNGS[int(level)]
        op = cv2.dilate if rung.op == "dilate" else cv2.erode
        out.append(op(image, element(rung.shape, rung.size)))
    return out


def _clean_levels(image: np.ndarray, levels: Sequence[float]) -> list[np.ndarray]:
    return [image.copy() for _ in levels]


_PER_DIGIT: dict[str, Callable[[np.ndarray, Sequence[float]], list[np.ndarray]]] = {
    "clean": _clean_levels, "delta": _delta_levels, "absolute": _absolute_levels,
    "ladder": _ladder_levels, "photo": pen.photo_levels,
}


def perturb_levels(images: np.ndarray, family: str, levels: Sequence[float]) -> np.ndarray:
    """uint8 (L, N, 28, 28): the digits (N, 28, 28) at each level, sharing the per-digit work."""
    for level in levels:
        check_level(family, level)
    out = np.empty((len(levels), *images.shape), np.uint8)
    one = _PER_DIGIT[family]
    for n, image in enumerate(images):
        for k, changed in enumerate(one(image, levels)):
            out[k, n] = changed
    return out


def perturb(images: np.ndarray, family: str, level: float) -> np.ndarray:
    """The perturbed copy of uint8 (N, 28, 28) digits (pure function, CPU)."""
    return perturb_levels(images, family, [level])[0]


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
    spec: dict[str, Any] = {"family": family, "level": float(level), "algorithm": ALGORITHM_VERSION,
                            "source_md5": source_md5, "upscale": UPSCALE}
    if family == "photo":
        spec["photo"] = pen.photo_fingerprint()
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(cache_dir: Path, family: str, level: float, source_md5: str) -> Path:
    return Path(cache_dir) / f"{family}_{level:+g}_{cache_key(family, level, source_md5)}.npz"


def _pixels_sha256(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def _load(path: Path, family: str, level: float) -> PerturbedSet | None:
    """The cached set, or None if missing, unreadable or failing its content hash."""
    try:
        with np.load(path, allow_pickle=False) as z:
            images, thickness, ink = z["images"], z["thickness"], z["ink_ratio"]
            meta: Any = json.loads(str(z["meta"]))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    if (not isinstance(meta, dict) or meta.get("pixels_sha256") != _pixels_sha256(images)
            or len(thickness) != len(images)):
        return None
    return PerturbedSet(family, level, images, thickness, ink)


def build_sets(images: np.ndarray, family: str, levels: Sequence[float],
               workers: int | None = None) -> list[PerturbedSet]:
    """Generate and measure the sets of several levels (no cache), sharing each digit's work
    across levels; chunks of digits run in parallel processes."""
    images = as_digits(images)
    levels = [float(level) for level in levels]
    for level in levels:
        check_level(family, level)
    if not levels:
        return []
    parts = map_chunks(_BuildJob(family, tuple(levels)), images, workers)
    perturbed = np.concatenate([p for p, _ in parts], axis=1)    # (L, N, 28, 28)
    thickness = np.concatenate([t for _, t in parts], axis=1).astype(np.float32)
    return [PerturbedSet(family, level, perturbed[k], thickness[k],
                         ink_ratio(perturbed[k], images).astype(np.float32))
            for k, level in enumerate(levels)]


def build_set(images: np.ndarray, family: str, level: float,
              workers: int | None = None) -> PerturbedSet:
    """Generate and measure one set (no cache); chunks run in parallel processes."""
    return build_sets(images, family, [level], workers)[0]


@dataclass(frozen=True)
class _BuildJob:
    """Picklable (family, levels) closure for worker processes."""

    family: str
    levels: tuple[float, ...]

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        perturbed = perturb_levels(images, self.family, self.levels)
        if len(images) == 0:
            return perturbed, np.zeros((len(self.levels), 0))
        return perturbed, np.stack([measure_thickness(p, workers=1) for p in perturbed])


def load_or_build_levels(images: np.ndarray, family: str, levels: Sequence[float],
                         source_md5: str, cache_dir: Path | None,
                         workers: int | None = None) -> list[tuple[PerturbedSet, bool]]:
    """The sets of (family, each level) from `cache_dir`; the missing ones are generated
    together (sharing each digit's skeleton or upscaling) and cached.

    Returns one (set, built) per level: `built` is True when it had to be (re)generated. A
    corrupt or stale cache file is detected by its hash and rebuilt.
    """
    levels = [float(level) for level in levels]
    for level in levels:
        check_level(family, level)
    if cache_dir is None:
        return [(s, True) for s in build_sets(images, family, levels, workers)]
    found: dict[float, PerturbedSet] = {}
    for level in levels:
        path = cache_path(cache_dir, family, level, source_md5)
        if artifacts.cache_file_present(path) and (cached := _load(path, family, level)) is not None:
            found[level] = cached
    missing = [level for level in dict.fromkeys(levels) if level not in found]
    built = dict(zip(missing, build_sets(images, family, missing, workers), strict=True))
    for level, pset in built.items():
        meta = {"family": family, "level": level, "algorithm": ALGORITHM_VERSION,
                "source_md5": source_md5, "pixels_sha256": _pixels_sha256(pset.images)}
        buf = io.BytesIO()
        np.savez(buf, images=pset.images, thickness=pset.thickness, ink_ratio=pset.ink_ratio,
                 meta=np.array(json.dumps(meta)))
        artifacts.write_bytes(cache_path(cache_dir, family, level, source_md5), buf.getvalue())
    return [(found[level], False) if level in found else (built[level], True) for level in levels]


def load_or_build(images: np.ndarray, family: str, level: float, source_md5: str,
                  cache_dir: Path | None, workers: int | None = None) -> tuple[PerturbedSet, bool]:
    """The set for (family, level) from `cache_dir`, generating it if needed.

    Returns (set, built): `built` is True when it had to be (re)generated. A corrupt or stale
    cache file is detected by its hash and rebuilt.
    """
    return load_or_build_levels(images, family, [level], source_md5, cache_dir, workers)[0]
