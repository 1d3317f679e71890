"""What a model gets wrong on one test level: the confusions, how many of the errors it also
makes on the clean digit, and whether the level closed (or opened) a loop of the digit: the
number of holes of the half-ink image (1 - Euler number, 8-connected ink) against the clean
digit's, and the accuracy on the digits that kept and lost a hole.

Usage: ``python benchmarks/photo_errors.py CHECKPOINT [--family photo] [--level 0.25]``
(the set is built and cached as ``eval --sweep-width`` does). Prints a Markdown summary.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch
from skimage.measure import euler_number

from robustmnist.checkpoint import Classifier, load_checkpoint
from robustmnist.data import load_split
from robustmnist.evaluation import test_set


def holes(images: np.ndarray) -> np.ndarray:
    """(N,) holes of each uint8 digit's half-ink image (ink >= 128, 8-connected)."""
    return np.array([1 - euler_number(im >= 128, connectivity=2) for im in images])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--family", default="photo")
    parser.add_argument("--level", type=float, default=0.25)
    args = parser.parse_args()
    model = Classifier.from_checkpoint(load_checkpoint(args.checkpoint))
    test = load_split("test")
    labels = test.labels.numpy()
    pset, _ = test_set(args.family, args.level, test=test)
    level_images = pset.images.reshape(-1, 28, 28)
    pred = model.log_proba(torch.from_numpy(level_images).unsqueeze(1)).argmax(1).cpu().numpy()
    clean_pred = model.log_proba(test.images).argmax(1).cpu().numpy()
    wrong = pred != labels
    lost = holes(level_images) < holes(test.images[:, 0].numpy())
    pairs = Counter(zip(labels[wrong].tolist(), pred[wrong].tolist(), strict=True)).most_common(10)
    both = int((wrong & (clean_pred != labels)).sum())
    print(f"{args.checkpoint}, {args.family} {args.level:g}: accuracy {100 * (1 - wrong.mean()):.2f} %, "
          f"{int(wrong.sum())} errors, {both} of them also wrong clean")
    print("confusions (true -> read: count):", ", ".join(f"{t}->{p}: {n}" for (t, p), n in pairs))
    print(f"digits with fewer holes than clean: {int(lost.sum())} ({100 * lost.mean():.1f} %); accuracy on "
          f"them {100 * (pred[lost] == labels[lost]).mean():.2f} %, on the rest "
          f"{100 * (pred[~lost] == labels[~lost]).mean():.2f} %")


if __name__ == "__main__":
    main()
