"""What a fine pen (below the 1-px measurement floor) looks like to the thickness measure.

The first ``--n`` MNIST test digits are redrawn along their skeletons (their `PenAtlas`) at
render widths 0-1 px, each scaled to full ink as the ``pen_fine`` augmentation does, and at the
calibrated 1, 1.5 and 2 px pens as drawn; each set is measured the Morpho-MNIST way. With
``--photo`` the ``photo`` family's thinnest levels (0.03, 0.05 of the digit's height, built or
read from the cache) are measured too: what the fine pens are meant to cover.

Usage: ``python benchmarks/fine_pens.py [--n 1000] [--photo]``. Writes
``benchmarks/results/fine-pens.json`` and ``.md`` (the table, also printed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np
import torch

from robustmnist import artifacts
from robustmnist.data import load_split
from robustmnist.measure import measure_thickness
from robustmnist.pen import FINE_PEN_PX, PEN_RANGE, build_atlas, draw

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="test digits (the first n)")
    parser.add_argument("--photo", action="store_true", help="also measure photo 0.03 and 0.05")
    args = parser.parse_args()
    t0 = time.perf_counter()
    test = load_split("test")
    images = test.images[: args.n, 0].numpy()
    atlas = build_atlas(images)
    rows = []
    for width in (0.0, FINE_PEN_PX, 0.5, 0.75, 0.99, PEN_RANGE[0], 1.5, 2.0):  # 0: why the floor
        ink = draw(atlas, torch.full((len(atlas),), width))
        raw_peak = float(ink.amax((-2, -1)).median())
        kind = ("fine (full ink)" if width >= FINE_PEN_PX else "render, below FINE_PEN_PX (not drawn)"
                ) if width < PEN_RANGE[0] else "calibrated (as drawn)"
        if width < PEN_RANGE[0]:
            ink = ink / ink.amax((-2, -1), keepdim=True).clamp(min=1e-6)
        u8 = ink[:, 0].mul(255).round().clamp(0, 255).to(torch.uint8).numpy()
        m = measure_thickness(u8)
        rows.append({"pen": f"{width:g} px {kind}", "median_px": float(np.nanmedian(m)),
                     "mean_px": float(np.nanmean(m)), "render_peak_median": raw_peak})
    clean = measure_thickness(images)
    rows.append({"pen": "clean MNIST digits", "median_px": float(np.nanmedian(clean)),
                 "mean_px": float(np.nanmean(clean)), "render_peak_median": float("nan")})
    if args.photo:
        from robustmnist.evaluation import test_set

        for level in (0.03, 0.05):
            pset = test_set("photo", level, test=test)[0]
            m = pset.thickness[: args.n]
            rows.append({"pen": f"photo {level:g} (first n)", "median_px": float(np.nanmedian(m)),
                         "mean_px": float(np.nanmean(m)), "render_peak_median": float("nan")})
    meta = artifacts.provenance(torch.device("cpu"))
    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    result = {"date": date, "digits": len(images), "seconds": time.perf_counter() - t0,
              "rows": rows, **meta}
    lines = [f"Measured {date} on {meta['machine'].get('host_cpu', '?')}: the first "
             f"{len(images)} MNIST test digits, {result['seconds']:.0f} s "
             "(`python benchmarks/fine_pens.py" + (" --photo" if args.photo else "") + "`).", "",
             "| pen | measured thickness, median (mean), px | render's strongest pixel, median |",
             "|---|---|---|"]
    for r in rows:
        peak = "" if np.isnan(r["render_peak_median"]) else f"{r['render_peak_median']:.2f}"
        lines.append(f"| {r['pen']} | {r['median_px']:.2f} ({r['mean_px']:.2f}) | {peak} |")
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    artifacts.write_json(RESULTS / "fine-pens.json", result)
    artifacts.write_text(RESULTS / "fine-pens.md", table)


if __name__ == "__main__":
    main()
