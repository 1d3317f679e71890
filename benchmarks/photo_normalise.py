"""Can ``predict`` read a thick pen better by normalising the stroke first? Measured, per run.

At ``photo`` 0.25 (a pen a quarter of the digit's height) the recommendation reads ~98.0 %,
short of issue 9's 98.5 %; a net trained on those very photos (``photo_oracle.py``) reads
98.4 %. This script asks whether a change on the *reading* side closes the gap instead. Each of
the 10,000 test digits is photographed at each ``--fractions`` pen (the ``photo`` family's own
generator) and read back by ``predict.mnistify``, which also hands over the digit's ink
coverage at photo resolution (a hook in this script's worker processes; ``predict`` itself is
not changed). From one photo, these readings:

- **as read**: the ``photo`` family's own image;
- **redrawn 28x28**: ``predict --normalize-thickness 3`` (the ``absolute`` routine: skeleton
  at 28x28, redrawn at 3 px) for digits measured over 4 px (MNIST's thickest 5 %);
- **thinned to R**: the pen's shape eroded at photo resolution, before the size
  normalisation, until the stroke is R of the digit's height (MNIST's median is ~0.12), for
  digits whose stroke is wider than R: at photo resolution a uniform pen thins without
  breaking, unlike an erosion at 28x28;
- **as read + thinned 0.16**: test-time augmentation, the mean of both readings' probabilities;

and, over all the runs named, **ensemble**: the mean probability of the runs on the photo as
read (one model per seed: not one variant's cost). Writes
``benchmarks/results/photo-normalise.{json,md}`` (``--out`` another folder)::

    python benchmarks/photo_normalise.py results/photo-mix/photo40-seed0 results/photo-mix/photo40-seed1 \\
        results/photo-mix/photo40-seed2

~90 s per fraction on 2 cores (the photographs), a few seconds per run and reading.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from photo_mix import out_folder
from skimage.morphology import skeletonize

from robustmnist import RobustMnistError, artifacts, predict
from robustmnist.checkpoint import Classifier, load_checkpoint
from robustmnist.data import default_data_dir, load_split
from robustmnist.measure import measure_thickness
from robustmnist.pen import PhotoDigit
from robustmnist.perturb import check_level, perturb

ROOT = Path(__file__).resolve().parent
THINNED = (0.14, 0.16)     # stroke / height targets of the photo-resolution thinning
REDRAW_PX, REDRAW_ABOVE_PX = 3.0, 4.0
TTA = 0.16
CHUNK = 250
FIT = predict._fit_and_centre  # the reading's last step, unhooked


def stroke_ratio(coverage: np.ndarray) -> tuple[float, np.ndarray]:
    """(stroke width / digit height, signed distance to the pen's edge in px) of an ink
    coverage map: the width is twice the median distance to the edge on the shape's skeleton.

    >>> c = np.zeros((60, 60), np.float32); c[10:50, 25:35] = 1.0  # a 10 x 40 px bar
    >>> ratio, signed = stroke_ratio(c); round(ratio, 2), float(signed[30, 30] > 0), float(signed[30, 5] < 0)
    (0.25, 1.0, 1.0)
    """
    mask = (coverage > 0.5).astype(np.uint8)
    inside = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    outside = cv2.distanceTransform(1 - mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    signed = np.where(mask > 0, inside - 0.5, 0.5 - outside)
    spine = skeletonize(mask.astype(bool))
    height = max(predict._extent(coverage.max(1)), predict._extent(coverage.max(0)), 1.0)
    width = 2 * float(np.median(inside[spine])) if spine.any() else 0.0
    return width / height, signed


def thinned(coverage: np.ndarray, target: float) -> np.ndarray | None:
    """The 28x28 reading of `coverage` with its pen eroded to `target` of the digit's height,
    or None when the stroke is no wider than that. Eroding by r px narrows the stroke by 2r
    and the digit by 2r: r solves (w - 2r) / (h - 2r) = target.

    >>> c = np.zeros((60, 60), np.float32); c[10:50, 25:35] = 1.0  # stroke 0.25 of the height
    >>> thin, bar = thinned(c, 0.3), thinned(c, 0.15)
    >>> thin is None, bar.shape, int((bar[14] > 127).sum()), int((FIT(c)[14] > 127).sum())
    (True, (28, 28), 3, 5)
    """
    ratio, signed = stroke_ratio(coverage)
    if ratio <= target:
        return None
    height = max(predict._extent(coverage.max(1)), predict._extent(coverage.max(0)))
    r = (ratio - target) * height / (2 * (1 - target))
    return FIT(np.clip(signed - r + 0.5, 0, 1).astype(np.float32))


def _read(args: tuple[np.ndarray, float]) -> tuple[np.ndarray, np.ndarray]:
    """Worker: (as read (n, 28, 28), thinned (n, len(THINNED), 28, 28), as read where not)."""
    images, fraction = args
    seen: list[np.ndarray] = []

    def keep(coverage: np.ndarray) -> np.ndarray:
        seen.append(coverage)
        return FIT(coverage)

    predict._fit_and_centre = keep  # this process only: the coverage the reading ends with
    plain, thin = [], []
    for image in images:
        seen.clear()
        try:
            read = predict.mnistify(PhotoDigit(image).photograph(fraction)).image
        except predict.ImageError:
            read = np.zeros((28, 28), np.uint8)
        plain.append(read)
        alts = [thinned(seen[0], t) if seen else None for t in THINNED]  # each from the photo's own
        thin.append(np.stack([read if a is None else a for a in alts]))
    predict._fit_and_centre = FIT
    return np.stack(plain), np.stack(thin)


def readings(images: np.ndarray, fraction: float, workers: int) -> dict[str, np.ndarray]:
    chunks = [(images[i:i + CHUNK], fraction) for i in range(0, len(images), CHUNK)]
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(_read, chunks))
    plain = np.concatenate([p for p, _ in parts])
    thin = np.concatenate([t for _, t in parts])
    thick = measure_thickness(plain) > REDRAW_ABOVE_PX
    redrawn = plain.copy()
    if thick.any():
        redrawn[thick] = perturb(plain[thick], "absolute", REDRAW_PX)
    out = {"as read": plain, f"redrawn 28x28 ({REDRAW_PX:g} px above {REDRAW_ABOVE_PX:g} px)": redrawn}
    out.update({f"thinned to {t:g}": thin[:, i] for i, t in enumerate(THINNED)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    parser.add_argument("--fractions", default="0.2,0.25", help="pen fractions, comma-separated")
    parser.add_argument("--limit", type=int, default=None, help="first N test digits only")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: benchmarks/results; needed with --limit, "
                        "so a smoke run does not replace the committed figures)")
    args = parser.parse_args()
    try:
        fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError:
        raise SystemExit(f"error: --fractions {args.fractions!r}: expected numbers such as "
                         "0.2,0.25") from None
    for fraction in fractions:
        try:
            check_level("photo", fraction)
        except RobustMnistError as err:
            raise SystemExit(f"error: --fractions: {err}") from None
    if args.limit is not None and args.limit < 1:
        raise SystemExit(f"error: --limit {args.limit}: at least 1 digit")
    if args.workers < 1:
        raise SystemExit(f"error: --workers {args.workers}: at least 1 process")
    if args.out is None and args.limit is not None:
        raise SystemExit("error: --limit: name an --out folder too (benchmarks/results holds the "
                         "figures of all 10,000 digits)")
    args.out = ROOT / "results" if args.out is None else args.out
    out_folder(args.out)
    try:
        checkpoints = [load_checkpoint(run) for run in args.runs]
    except (OSError, RobustMnistError) as err:
        raise SystemExit(f"error: {err}") from None
    for run, ckpt in zip(args.runs, checkpoints, strict=True):
        if not ckpt.complete:
            raise SystemExit(f"error: {run} is not finished; finish it with robustmnist train ... --resume")
    test = load_split("test", default_data_dir())
    images = test.images.numpy().reshape(-1, 28, 28)[:args.limit]
    labels = test.labels[:len(images)]
    models = [Classifier.from_checkpoint(c) for c in checkpoints]
    started = time.perf_counter()
    table: dict[str, dict[str, list[float]]] = {}
    for fraction in fractions:
        sets = readings(images, fraction, args.workers)
        probs = {name: [m.log_proba(torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)).exp()
                        for m in models] for name, x in sets.items()}
        thin = probs[f"thinned to {TTA:g}"]
        probs[f"as read + thinned {TTA:g}"] = [a + b for a, b in zip(probs["as read"], thin, strict=True)]
        col = f"photo {fraction:g}"
        for name, per_run in probs.items():
            table.setdefault(name, {})[col] = [100 * float((p.argmax(1) == labels).float().mean())
                                               for p in per_run]
        table.setdefault("ensemble of the runs (as read)", {})[col] = [
            100 * float((sum(probs["as read"]).argmax(1) == labels).float().mean())]
    minutes = (time.perf_counter() - started) / 60
    machine = artifacts.machine_info("cpu")
    cols = [f"photo {f:g}" for f in fractions]
    lines = ["| reading | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{np.mean(row[c]):.2f} ({', '.join(f'{v:.2f}' for v in row[c])})" if len(row[c]) > 1
            else f"{row[c][0]:.2f}" for c in cols) + " |")
    record = {"runs": [str(r) for r in args.runs], "digits": len(images), "fractions": fractions,
              "accuracy": table, "minutes": round(minutes, 2),
              "git": artifacts.git_revision(ROOT), "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": f"{machine['host_cpu']}, {machine['cpu_count']} cores, torch {machine['torch']}"}
    command = "python benchmarks/photo_normalise.py " + " ".join(str(r) for r in args.runs)
    if args.fractions != "0.2,0.25":
        command += f" --fractions {args.fractions}"
    if args.limit is not None:
        command += f" --limit {args.limit}"
    text = (f"`{command}` ({record['measured']}, {record['machine']}, {minutes:.1f} min, tree "
            f"{record['git']}): {len(images):,} test digits photographed at each pen and read "
            "each way; accuracy %, the mean of the runs (each run's in brackets).\n\n"
            + "\n".join(lines) + "\n")
    artifacts.write_json(args.out / "photo-normalise.json", record)
    artifacts.write_text(args.out / "photo-normalise.md", text)
    print(text)
    print(json.dumps({name: {c: round(float(np.mean(v)), 2) for c, v in row.items()}
                      for name, row in table.items()}))


if __name__ == "__main__":
    try:
        main()
    except RobustMnistError as err:  # data and caches: one line, as the CLI says it
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        raise SystemExit(130) from None
