"""Speed of ``robustmnist predict`` on photos: the current pipeline against the old one, same run.

Measured on this machine, one process, old and new alternated ``--repeats`` times (medians):

1. **300x300 JPEGs** (MNIST test digits photographed with `synthetic.mnist_photo`, quality
   85): photos per second for decode + preprocessing + one model. Old: one model call per
   photo, as the old ``predict`` did; new: through `predict.predict_files` itself (model
   loading included; it asks the model once per 32 photos), and, to separate the two
   changes, the new preprocessing with one model call per photo. Plus the median split per
   stage (decode / preprocess / one model call, ms a photo).
2. **One 12-megapixel photo** (4000x3000), as JPEG and as PNG: seconds from file to digit.

The old pipeline is `old_predict.py` (the code before the rewrite, kept only here).

Usage: ``python benchmarks/predict_speed.py CKPT [--photos 200] [--repeats 3]``
Writes ``benchmarks/results/predict-speed-<machine>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import old_predict
import PIL
import torch

from robustmnist import artifacts, predict
from robustmnist.checkpoint import Classifier, load_checkpoint
from robustmnist.data import load_split
from robustmnist.synthetic import mnist_photo, save_jpeg

RESULTS = Path(__file__).parent / "results"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return re.search(r"Model name:\s*(.+)", out).group(1).strip()  # type: ignore[union-attr]
    except (OSError, subprocess.CalledProcessError, AttributeError):
        return platform.processor() or platform.machine()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def stages(paths: list[Path], load: Callable, prepare: Callable, model: Classifier) -> dict[str, float]:
    """Median ms per photo of each stage, one photo at a time."""
    decode, preprocess, infer = [], [], []
    for path in paths:
        t0 = time.perf_counter()
        gray = load(path)
        t1 = time.perf_counter()
        image = prepare(gray).image
        t2 = time.perf_counter()
        model.log_proba(torch.from_numpy(image)[None, None])
        t3 = time.perf_counter()
        decode.append(t1 - t0)
        preprocess.append(t2 - t1)
        infer.append(t3 - t2)
    return {"decode_ms": 1e3 * float(np.median(decode)),
            "preprocess_ms": 1e3 * float(np.median(preprocess)),
            "model_ms": 1e3 * float(np.median(infer))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--photos", type=int, default=200, help="300x300 JPEGs per pass")
    parser.add_argument("--repeats", type=int, default=3, help="alternating passes per pipeline")
    args = parser.parse_args()
    model = Classifier.from_checkpoint(load_checkpoint(args.checkpoint))
    digits = load_split("test").images[:args.photos, 0].numpy()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        small = [save_jpeg(folder / f"{i:04d}.jpg", mnist_photo(d, rng)) for i, d in enumerate(digits)]
        big = mnist_photo(digits[0], rng, size=(3000, 4000))
        big_jpeg = save_jpeg(folder / "big.jpg", big, quality=90)
        big_png = folder / "big.png"
        cv2.imwrite(str(big_png), big)

        def one_by_one(load: Callable, prepare: Callable) -> Callable[[], None]:
            def run() -> None:
                for path in small:
                    model.log_proba(torch.from_numpy(prepare(load(path)).image)[None, None])
            return run

        def new_pass() -> None:
            for result in predict.predict_files([args.checkpoint], [str(p) for p in small]):
                assert result.error is None, result.error

        def one(load: Callable, prepare: Callable, path: Path) -> Callable[[], object]:
            return lambda: model.log_proba(torch.from_numpy(prepare(load(path)).image)[None, None])

        readers = {"old": (old_predict.load_gray, old_predict.mnistify),
                   "new": (predict.load_gray, predict.mnistify)}
        runs = {"old": one_by_one(*readers["old"]), "new": new_pass,
                "new_one_model_call_per_photo": one_by_one(*readers["new"])}
        passes: dict[str, list[float]] = {name: [] for name in runs}
        big_times: dict[str, dict[str, list[float]]] = {p: {"jpeg": [], "png": []} for p in readers}
        load_before = os.getloadavg()
        for _ in range(args.repeats):
            for name, run in runs.items():
                passes[name].append(timed(run))
            for name, (load, prepare) in readers.items():
                big_times[name]["jpeg"].append(timed(one(load, prepare, big_jpeg)))
                big_times[name]["png"].append(timed(one(load, prepare, big_png)))
        split = {name: stages(small, load, prepare, model) for name, (load, prepare) in readers.items()}

    machine = cpu_model()
    results = {
        "machine": machine, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "opencv": cv2.__version__, "pillow": PIL.__version__,
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
        "checkpoint": str(args.checkpoint), "photos": args.photos, "repeats": args.repeats,
        "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
        "new_one_model_call_per_photo": {
            "photos_per_s_300px": args.photos / float(np.median(passes["new_one_model_call_per_photo"])),
            "pass_s": passes["new_one_model_call_per_photo"]},
        "pipelines": {name: {"photos_per_s_300px": args.photos / float(np.median(passes[name])),
                             "pass_s": passes[name], **split[name],
                             "megapixel12_jpeg_s": float(np.median(big_times[name]["jpeg"])),
                             "megapixel12_png_s": float(np.median(big_times[name]["png"])),
                             "megapixel12_all_s": big_times[name]}
                      for name in readers},
    }
    old, new = results["pipelines"]["old"], results["pipelines"]["new"]
    table = "\n".join([
        f"Measured {results['measured']} on {machine} ({results['torch_threads']} torch threads; torch "
        f"{torch.__version__}, OpenCV {cv2.__version__}, Pillow {PIL.__version__}); medians of "
        f"{args.repeats} alternating passes; load average {load_before[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (other jobs share the machine).",
        "",
        "| measurement | old pipeline | new pipeline |",
        "|---|---|---|",
        f"| 300x300 JPEGs: decode + preprocess + model, photos/s ({args.photos} photos) | "
        f"{old['photos_per_s_300px']:.1f} | **{new['photos_per_s_300px']:.0f}** |",
        f"| the same, new preprocessing but one model call per photo, photos/s | | "
        f"{results['new_one_model_call_per_photo']['photos_per_s_300px']:.0f} |",
        *(f"| {stage}, ms a photo | {old[key]:.1f} | {new[key]:.2f} |"
          for stage, key in (("decode", "decode_ms"), ("preprocessing", "preprocess_ms"),
                             ("one model call for one photo", "model_ms"))),
        f"| one 12-megapixel photo (4000x3000 JPEG), s | {old['megapixel12_jpeg_s']:.2f} | "
        f"**{new['megapixel12_jpeg_s']:.2f}** |",
        f"| one 12-megapixel photo (4000x3000 PNG), s | {old['megapixel12_png_s']:.2f} | "
        f"{new['megapixel12_png_s']:.2f} |",
    ]) + "\n"
    slug = re.sub(r"[^a-z0-9]+", "-", machine.lower()).strip("-") or "cpu"
    RESULTS.mkdir(exist_ok=True)
    artifacts.write_json(RESULTS / f"predict-speed-{slug}.json", results)
    artifacts.write_bytes(RESULTS / f"predict-speed-{slug}.md", table.encode())
    print(table)


if __name__ == "__main__":
    main()
