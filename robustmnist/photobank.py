"""Photographs of the training digits: the ``photo`` mix augmentation's bank.

Each training digit is photographed by the ``photo`` test family's own generator
(``pen.PhotoDigit``: its skeleton written at a pen width relative to the digit's height, dark ink
on unevenly lit paper, defocus, sensor noise, JPEG) and read back with ``predict``'s
preprocessing, at one pen fraction drawn per band of `PHOTO_BANDS` (seeded by the digit's
pixels, so a digit's photos do not depend on where it sits in the set). The bank is built
once per training set on the CPU (~15 ms a digit and core: ~7-8 min for MNIST's 60,000 on 2
cores), cached under ``<data dir>/photos`` with a content hash and named by the generator's
fingerprint, and loaded once onto the training device; each batch then takes its rows, a
gather (``AugConfig.p_photo``). The fingerprint covers the source of ``predict.py`` and
``images.py`` (the photo family's sets are rebuilt the same way): any edit there rebuilds the
bank, and an unfinished photo run recorded with the old bank is refused on resume.

The bank is *in-renderer* training data: it comes from the generator that makes the ``photo``
test family (from other digits, the training split, each with its own scene). A model trained
on it is tested on photos of the same synthetic kind, so its gain on that family is an upper
estimate of its gain on real photos (``benchmarks/predict_photos.py`` reads photos of another
kind).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustmnist import artifacts
from robustmnist.measure import as_digits, map_chunks
from robustmnist.pen import Log, PhotoDigit, digit_seed, photo_fingerprint, read_photos

#: One photo per digit and band: a pen fraction (of the digit's height) uniform in each band.
#: The bands cover the thick end, where the pen redraws fall short of photos; the fine pens
#: cover the thin end.
PHOTO_BANDS = ((0.10, 0.20), (0.20, 0.30))
#: Bump when the bank's computation changes (besides the photo generator's own fingerprint).
BANK_VERSION = 1


def pen_fractions(image: np.ndarray) -> np.ndarray:
    """(K,) the pen fractions a digit is photographed at, one per band, seeded by its pixels.

    >>> f = pen_fractions(np.zeros((28, 28), np.uint8))
    >>> [bool(lo <= v < hi) for v, (lo, hi) in zip(f, PHOTO_BANDS)]
    [True, True]
    """
    u = np.random.default_rng([digit_seed(image), BANK_VERSION]).uniform(size=len(PHOTO_BANDS))
    return np.array([lo + (hi - lo) * v for v, (lo, hi) in zip(u, PHOTO_BANDS, strict=True)])


def photograph_digits(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, K, 28, 28) photos of uint8 (N, 28, 28) digits (blank where the preprocessing
    finds none) and their (N, K) float32 pen fractions, on the CPU, one process."""
    images = as_digits(images)
    photos = np.zeros((len(images), len(PHOTO_BANDS), 28, 28), np.uint8)
    fractions = np.zeros((len(images), len(PHOTO_BANDS)), np.float32)
    for i, image in enumerate(images):
        fractions[i] = pen_fractions(image)
        photos[i] = np.stack(read_photos(PhotoDigit(image), [float(f) for f in fractions[i]]))
    return photos, fractions


@dataclass(frozen=True)
class PhotoBank:
    """Per digit, its photos (N, K, 28, 28) uint8 and their pen fractions (N, K) float32."""

    images: torch.Tensor
    fractions: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, idx: torch.Tensor | slice) -> PhotoBank:
        if isinstance(idx, torch.Tensor):
            return PhotoBank(self.images.index_select(0, idx.to(self.images.device)),
                             self.fractions.index_select(0, idx.to(self.fractions.device)))
        return PhotoBank(self.images[idx], self.fractions[idx])

    def to(self, device: torch.device | str) -> PhotoBank:
        return PhotoBank(self.images.to(device), self.fractions.to(device))


def build_bank(images: np.ndarray, workers: int | None = None) -> PhotoBank:
    """The bank of uint8 (N, 28, 28) digits (chunks in parallel processes)."""
    images = as_digits(images)
    if len(images) == 0:
        return PhotoBank(torch.zeros((0, len(PHOTO_BANDS), 28, 28), dtype=torch.uint8),
                         torch.zeros((0, len(PHOTO_BANDS))))
    parts = map_chunks(photograph_digits, images, workers)
    return PhotoBank(torch.from_numpy(np.concatenate([p for p, _ in parts])),
                     torch.from_numpy(np.concatenate([f for _, f in parts])))


def bank_id(images: np.ndarray) -> str:
    """``photos_<N>_<hash>``: names the bank of `images` by the pixels, the bands and the photo
    generator's fingerprint (its cache file's stem; training runs record it)."""
    images = as_digits(images)
    spec = json.dumps({"bank": BANK_VERSION, "bands": PHOTO_BANDS, "photo": photo_fingerprint(),
                       "images": artifacts.sha256_of(images)}, sort_keys=True)
    return f"photos_{len(images)}_{hashlib.sha256(spec.encode()).hexdigest()[:16]}"


def _load(path: Path, n: int) -> PhotoBank | None:
    """The cached bank, or None if missing, unreadable or failing its content hash."""
    k = len(PHOTO_BANDS)
    z = artifacts.load_checked_npz(path, {"photos": (n, k, 28, 28), "fractions": (n, k)})
    if z is None or z["photos"].dtype != np.uint8:
        return None
    return PhotoBank(torch.from_numpy(z["photos"]), torch.from_numpy(z["fractions"]))


def load_or_build_bank(images: np.ndarray, cache_dir: Path | None, workers: int | None = None,
                       log: Log = lambda _m: None) -> tuple[PhotoBank, bool]:
    """The bank of `images` from `cache_dir`, built (and cached) if missing, stale or corrupt.
    Returns (bank on the CPU, built)."""
    images = as_digits(images)
    if cache_dir is None:
        return build_bank(images, workers), True
    path = Path(cache_dir) / f"{bank_id(images)}.npz"

    def built() -> tuple[PhotoBank, bytes]:
        bank = build_bank(images, workers)
        arrays = {"photos": bank.images.numpy(), "fractions": bank.fractions.numpy()}
        return bank, artifacts.checked_npz(arrays, {"bank": BANK_VERSION})

    def announce(why: str) -> None:
        log(f"photographing the {len(images):,} training digits at {len(PHOTO_BANDS)} pen widths "
            f"({why}, ~15 ms a digit and core; cached in {path.parent})")

    return artifacts.load_or_build(path, lambda p: _load(p, len(images)), built, announce, log)


def training_bank(images: torch.Tensor, data_dir: Path | None, log: Log = lambda _m: None) -> PhotoBank:
    """The bank of a split's uint8 (N, 1, 28, 28) images, cached in ``<data dir>/photos``."""
    from robustmnist.data import data_subdir

    return load_or_build_bank(images.cpu().numpy(), data_subdir(data_dir, "photos"), log=log)[0]
