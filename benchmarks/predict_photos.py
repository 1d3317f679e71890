"""How much accuracy `robustmnist predict`'s preprocessing loses on photographed MNIST digits.

Every MNIST test digit is rendered as a photo (`synthetic.mnist_photo`: its 50 % contour as
the pen's edge, 300x300 px, random size and position, a `Lighting`, lens blur, sensor noise),
written as a JPEG file (quality 75-95) and read back exactly as ``robustmnist predict`` reads a
file (`load_gray` + `mnistify`). A lossless pipeline gives back the original digits, so a model
reads the photos as well as the clean test set. Pipelines compared on the same photos:

* ``new``: `robustmnist.predict` as it is;
* ``whole-pixel``: the same, but centred by a whole-pixel shift as MNIST itself was (ablation);
* ``old``: the pipeline before the rewrite (`old_predict.py`; ~80 ms a photo, so it runs on the
  first ``--old-n`` digits only, and its clean column is on those digits).

A refused photo ("no digit found") counts as an error. The lightings (`synthetic.LIGHTINGS`) are
normal, dim (paper at 40 % grey), over-exposed, low contrast and light ink on dark.

Usage: ``python benchmarks/predict_photos.py CKPT [CKPT ...] [--n 10000] [--n-other 2000]
[--old-n 1000]`` (digits: normal lighting, each other lighting, read by the old pipeline).
Writes ``benchmarks/results/predict_photos.json`` and ``.md`` (the table, also printed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import old_predict
import torch

from robustmnist import artifacts, predict
from robustmnist.checkpoint import Classifier, load_checkpoint
from robustmnist.data import load_split
from robustmnist.synthetic import LIGHTINGS, mnist_photo, save_jpeg

RESULTS = Path(__file__).parent / "results"
Reader = Callable[[Path], np.ndarray]


def whole_pixel_fit(coverage: np.ndarray) -> np.ndarray:
    """`predict._fit_and_centre` with MNIST's own whole-pixel centring (the ablation)."""
    box_px = max(predict._extent(coverage.max(1)), predict._extent(coverage.max(0)), 2.0)
    up = int(np.ceil(100 / box_px))
    if up > 1:
        coverage = cv2.resize(coverage, (coverage.shape[1] * up, coverage.shape[0] * up),
                              interpolation=cv2.INTER_LINEAR)
        box_px *= up
    pen = np.clip(predict.EDGE_GAIN * (coverage - 0.5) + 0.5, 0, 1)
    scale = predict.BOX / box_px
    small = cv2.resize(pen, (max(1, round(pen.shape[1] * scale)), max(1, round(pen.shape[0] * scale))),
                       interpolation=cv2.INTER_AREA)
    cy, cx = predict.centre_of_mass(small)
    oy, ox = round(predict.CENTRE - cy), round(predict.CENTRE - cx)
    field = np.zeros((predict.SIDE, predict.SIDE), np.float32)
    ys = slice(max(0, oy), min(predict.SIDE, oy + small.shape[0]))
    xs = slice(max(0, ox), min(predict.SIDE, ox + small.shape[1]))
    field[ys, xs] = small[ys.start - oy:ys.stop - oy, xs.start - ox:xs.stop - ox]
    return np.clip(np.rint(field * (255 / max(float(field.max()), 1e-6))), 0, 255).astype(np.uint8)


def read_new(path: Path) -> np.ndarray:
    return predict.mnistify(predict.load_gray(path)).image


def read_whole_pixel(path: Path) -> np.ndarray:
    exact = predict._fit_and_centre
    predict._fit_and_centre = whole_pixel_fit  # type: ignore[assignment]
    try:
        return predict.mnistify(predict.load_gray(path)).image
    finally:
        predict._fit_and_centre = exact  # type: ignore[assignment]


def read_old(path: Path) -> np.ndarray:
    return old_predict.mnistify(old_predict.load_gray(path)).image


def read_all(digits: np.ndarray, lighting: str, readers: dict[str, tuple[Reader, int]],
             seed: int) -> dict[str, tuple[np.ndarray, int]]:
    """Photograph each digit once and read it with every pipeline: (images, refused) each."""
    rng = np.random.default_rng(seed)
    out = {name: np.zeros((n, 28, 28), np.uint8) for name, (_, n) in readers.items()}
    refused = dict.fromkeys(readers, 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        for i, digit in enumerate(digits):
            photo = mnist_photo(digit, rng, LIGHTINGS[lighting])
            save_jpeg(path, photo, quality=int(rng.integers(75, 96)))
            for name, (read, n) in readers.items():
                if i < n:
                    try:
                        out[name][i] = read(path)
                    except predict.ImageError:
                        refused[name] += 1  # stays blank: counted as an error
    return {name: (out[name], refused[name]) for name in readers}


def accuracy(model: Classifier, images: np.ndarray, labels: np.ndarray) -> float:
    predicted = model.log_proba(torch.from_numpy(images).unsqueeze(1)).argmax(1).cpu().numpy()
    return float(np.mean(predicted == labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--n", type=int, default=10_000, help="test digits, normal lighting")
    parser.add_argument("--n-other", type=int, default=2_000, help="test digits, other lightings")
    parser.add_argument("--old-n", type=int, default=1_000, help="of which the old pipeline reads")
    parser.add_argument("--lightings", default=",".join(LIGHTINGS), help="comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = [Classifier.from_checkpoint(load_checkpoint(c)) for c in args.checkpoints]
    split = load_split("test")
    rows = []
    for k, lighting in enumerate(args.lightings.split(",")):
        n = args.n if lighting == "normal" else args.n_other
        digits, labels = split.images[:n, 0].numpy(), split.labels[:n].numpy()
        readers = {"new": (read_new, n), "whole-pixel": (read_whole_pixel, n),
                   "old": (read_old, min(args.old_n, n))}
        start = time.perf_counter()
        read = read_all(digits, lighting, readers, seed=args.seed * 100 + k)
        for model in models:
            for name, (images, refused) in read.items():
                rows.append({"lighting": lighting, "model": model.name, "pipeline": name,
                             "n": len(images),
                             "refused": refused,
                             "clean_accuracy": accuracy(model, digits[:len(images)], labels[:len(images)]),
                             "accuracy": accuracy(model, images, labels[:len(images)]),
                             "mean_abs_pixel_error": float(np.abs(images.astype(np.int16)
                                                                  - digits[:len(images)]).mean())})
        print(f"{lighting}: {time.perf_counter() - start:.0f} s", flush=True)
    table = render(rows)
    RESULTS.mkdir(exist_ok=True)
    artifacts.write_json(RESULTS / "predict_photos.json",
                         {"checkpoints": [str(c) for c in args.checkpoints], "n": args.n,
                          "n_other": args.n_other, "old_n": args.old_n, "seed": args.seed,
                          "rows": rows})
    artifacts.write_bytes(RESULTS / "predict_photos.md", table.encode())
    print(table)


def render(rows: list[dict]) -> str:
    def cell(model: str, lighting: str, pipeline: str) -> dict:
        return next(r for r in rows if (r["model"], r["lighting"], r["pipeline"])
                    == (model, lighting, pipeline))

    lines = ["| model | lighting | clean | new | new, whole-pixel centring | clean (first n_old) | old |",
             "|---|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        for lighting in dict.fromkeys(r["lighting"] for r in rows):
            new, whole, old = (cell(model, lighting, p) for p in ("new", "whole-pixel", "old"))

            def pct(r: dict, key: str = "accuracy") -> str:
                refused = f", {r['refused']} refused" if key == "accuracy" and r["refused"] else ""
                return f"{100 * r[key]:.2f}{refused}"

            lines.append(f"| {model} | {lighting} | {pct(new, 'clean_accuracy')} (n={new['n']}) | "
                         f"{pct(new)} | {pct(whole)} | {pct(old, 'clean_accuracy')} (n={old['n']}) | "
                         f"{pct(old)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
