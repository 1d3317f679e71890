"""Accuracy of `robustmnist predict` on synthetic digit photos, by pen width.

Photos: 10 digits x 3 Hershey fonts x 4 random draws (position, size, lighting, noise; every
second one with a faint grid) per pen width, dark ink on light paper, saved as JPEG and read
back through the same path as ``robustmnist predict``. Each checkpoint is scored on the
MNIST-style preprocessed image, with and without ``--normalize-thickness``.

Usage: ``python benchmarks/predict_photos.py CKPT [CKPT ...] [--normalize 2.5]``
Writes ``benchmarks/results/predict_photos.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from robustmnist import artifacts
from robustmnist.predict import load_gray, mnistify, predict_images
from robustmnist.synthetic import FONTS, draw_photo, save_jpeg
from robustmnist.training import load_checkpoint, model_from_checkpoint

PENS = {"thin (1 px)": 1.0, "medium (2.5 px)": 2.5, "thick (4.5 px)": 4.5}
RESULTS = Path(__file__).parent / "results"


def photos(pen: float, folder: Path, draws: int = 4) -> list[tuple[Path, int]]:
    out = []
    rng = np.random.default_rng(int(pen * 100))
    for digit in range(10):
        for f, font in enumerate(FONTS):
            for k in range(draws):
                image = draw_photo(digit, pen, rng, font=font, grid=k % 2 == 1)
                out.append((save_jpeg(folder / f"{pen}-{digit}-{f}-{k}.jpg", image), digit))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--normalize", type=float, default=2.5,
                        help="thickness for the --normalize-thickness column, px")
    args = parser.parse_args()
    ckpts = [load_checkpoint(c) for c in args.checkpoints]
    models = [(model_from_checkpoint(c), c["config"]["mean"], c["config"]["std"]) for c in ckpts]
    names = [f"{c['meta'].get('variant', c['config']['aug']['policy'])} "
             f"(seed {c['config']['seed']})" for c in ckpts]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pen_name, pen in PENS.items():
            items = photos(pen, Path(tmp))
            labels = np.array([d for _, d in items])
            grays = [load_gray(p) for p, _ in items]
            for mode, norm in (("as drawn", None), (f"--normalize-thickness {args.normalize:g}",
                                                    args.normalize)):
                images = np.stack([mnistify(g, norm).image for g in grays])
                probs = predict_images(models, images)
                for name, p in zip(names, probs, strict=True):
                    rows.append({"pen": pen_name, "preprocessing": mode, "model": name,
                                 "n": len(labels),
                                 "accuracy": float(np.mean(p.argmax(1) == labels))})
    RESULTS.mkdir(exist_ok=True)
    artifacts.write_json(RESULTS / "predict_photos.json",
                         {"checkpoints": [str(c) for c in args.checkpoints], "rows": rows})
    print("| pen | preprocessing | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for pen_name in PENS:
        for mode in dict.fromkeys(r["preprocessing"] for r in rows):
            accs = [r for r in rows if r["pen"] == pen_name and r["preprocessing"] == mode]
            print(f"| {pen_name} | {mode} | " + " | ".join(
                f"{100 * r['accuracy']:.1f} % (n={r['n']})" for r in accs) + " |")
    print(json.dumps({"written": str(RESULTS / "predict_photos.json")}))


if __name__ == "__main__":
    main()
