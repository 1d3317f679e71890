"""Would a fused kernel make the affine warp cheaper? A probe of issue 13's last floor.

The affine policies spend most of their augmentation in ``augmentation.warp`` (the sampling
grid, built in one broadcast add, then ``F.grid_sample``) and the ``clamp_`` after it. This
script writes the whole of it as one loop, compiled by Numba: the grid, the bilinear sample and
the clamp per output pixel, with no grid in memory. It must give *the same bits* as the trainer's
warp, or a committed study would no longer replay; ATen's CPU kernel sums the four neighbours
with fused multiply-adds (``fma(se, ., fma(sw, ., fma(ne, ., nw * .)))``, found by matching its
output), so the loop calls LLVM's ``fma`` too. Checked on one epoch of ``thickness+affine``
draws over the 60,000 training digits, then timed on one 512-digit batch against the
trainer's warp at 2 and 1 torch threads (alternated rounds, medians). It also counts the
vector gathers in the compiled loop (0: LLVM left it scalar).

Numba is not a robustmnist dependency: ``python -m pip install numba``, then::

    python benchmarks/fused_warp.py [--rounds 7]

Writes ``benchmarks/results/fused-warp.{json,md}``. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustmnist import artifacts
from robustmnist.augmentation import sample, warp
from robustmnist.config import AugConfig
from robustmnist.data import load_split

RESULTS = Path(__file__).resolve().parent / "results"
POLICY = "thickness+affine"
BATCH = 512


def grid_terms(matrix: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """`warp`'s per-digit grid coefficients (B, 6): l00, l10, l01, l11, o0, o1, in float32 by
    `warp`'s own arithmetic (source = L @ output + o, in normalised coordinates): a shift of
    2 px right and 1 px up samples 2/13.5 to the left and 1/13.5 below, of a 28x28 image.

    >>> shift = torch.tensor([[[1.0, 0, 2], [0, 1, -1], [0, 0, 1]]])
    >>> [round(v, 4) for v in grid_terms(shift, 28, 28)[0].tolist()]
    [1.0, -0.0, -0.0, 1.0, -0.1481, 0.0741]
    """
    a, b, tx, c, d, ty = matrix.float()[:, :2].reshape(-1, 6).unbind(1)
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    kx, ky = (w - 1) / 2, (h - 1) / 2
    o0 = (ia * (kx - tx) + ib * (ky - ty)) / kx - 1
    o1 = (ic * (kx - tx) + id_ * (ky - ty)) / ky - 1
    return torch.stack([ia, ic * kx / ky, ib * ky / kx, id_, o0, o1], 1).contiguous()


def compile_kernel() -> Any:
    """The fused warp + clamp, compiled (imports Numba)."""
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic

    @intrinsic
    def fma32(typingctx, a, b, c):
        def codegen(context, builder, signature, args):
            f = ir.FloatType()
            return builder.call(builder.module.declare_intrinsic(
                "llvm.fma", [f], ir.FunctionType(f, [f, f, f])), args)
        return types.float32(types.float32, types.float32, types.float32), codegen

    @njit(nogil=True, boundscheck=False)
    def fused(x, coef, out, xs, ys):
        n_img, h, w = x.shape
        sx, sy = np.float32((w - 1) / 2), np.float32((h - 1) / 2)
        one, zero = np.float32(1.0), np.float32(0.0)
        for k in range(n_img):
            l00, l10, l01, l11, o0, o1 = (coef[k, 0], coef[k, 1], coef[k, 2], coef[k, 3],
                                          coef[k, 4], coef[k, 5])
            for i in range(h):
                row0 = l01 * ys[i] + o0  # the grid's per-row term, as warp adds it
                row1 = l11 * ys[i] + o1
                for j in range(w):
                    ix = (l00 * xs[j] + row0 + one) * sx  # grid_sample's unnormalisation
                    iy = (l10 * xs[j] + row1 + one) * sy
                    fx, fy = np.floor(ix), np.floor(iy)
                    east, north = ix - fx, iy - fy
                    west, south = one - east, one - north
                    xw, yn = int(fx), int(fy)
                    nw = ne = sw = se = zero  # outside the image: zeros
                    if -1 < fy < h:
                        if -1 < fx < w:
                            nw = x[k, yn, xw]
                        if -2 < fx < w - 1:
                            ne = x[k, yn, xw + 1]
                    if -2 < fy < h - 1:
                        if -1 < fx < w:
                            sw = x[k, yn + 1, xw]
                        if -2 < fx < w - 1:
                            se = x[k, yn + 1, xw + 1]
                    v = fma32(se, north * east, fma32(sw, north * west,
                                                      fma32(ne, south * east, nw * (south * west))))
                    out[k, i, j] = min(max(v, zero), one)
        return out

    return fused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternated timing rounds")
    args = parser.parse_args()
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    try:
        t0 = time.perf_counter()
        fused = compile_kernel()
    except ImportError:
        raise SystemExit("this probe needs Numba: python -m pip install numba") from None
    images = load_split("train").images
    h, w = images.shape[-2:]
    xs, ys = (torch.linspace(-1, 1, n).numpy() for n in (w, h))

    def run_fused(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        out = np.empty((len(x), h, w), np.float32)
        fused(x[:, 0].numpy(), grid_terms(matrix, h, w).numpy(), out, xs, ys)
        return torch.from_numpy(out).unsqueeze(1)

    config = AugConfig.from_policy(POLICY)
    generator = torch.Generator().manual_seed(0)
    first = images[:BATCH].float() / 255
    run_fused(first, sample(config, BATCH, generator).affine)
    compile_s = time.perf_counter() - t0
    asm = "".join(fused.inspect_asm().values())
    gathers = len(re.findall(r"\bvgather|\bvpgather", asm))

    torch.set_num_threads(2)
    differing = total = 0
    generator = torch.Generator().manual_seed(0)
    for start in range(0, len(images), BATCH):
        x = images[start:start + BATCH].float() / 255
        matrix = sample(config, len(x), generator).affine
        ref = warp(x, matrix.float()).clamp_(0, 1)
        got = run_fused(x, matrix)
        differing += int((got.view(torch.int32) != ref.view(torch.int32)).sum())  # bits, not ==
        total += ref.numel()

    matrix = sample(config, BATCH, generator).affine
    ways = {"robustmnist warp, 2 threads": (2, lambda: warp(first, matrix.float()).clamp_(0, 1)),
            "robustmnist warp, 1 thread": (1, lambda: warp(first, matrix.float()).clamp_(0, 1)),
            "fused Numba loop, 1 thread": (1, lambda: run_fused(first, matrix))}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, (threads, call) in ways.items():
            torch.set_num_threads(threads)
            call()
            t = time.perf_counter()
            for _ in range(20):
                call()
            times[name].append((time.perf_counter() - t) / 20 * 1e3)
    torch.set_num_threads(2)
    medians = {name: statistics.median(v) for name, v in times.items()}

    machine = artifacts.machine_info("cpu")
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    record = {"measured": stamp, "machine": machine, "git": artifacts.git_revision(),
              "policy": POLICY, "batch": BATCH, "rounds": args.rounds,
              "bits_differing": differing, "values": total, "compile_s": compile_s,
              "vector_gathers": gathers, "ms_per_batch": medians, "all_ms": times}
    lines = [f"`python benchmarks/fused_warp.py --rounds {args.rounds}` ({stamp}, "
             f"{machine['host_cpu']}, {machine['cpu_count']} cores, torch {torch.__version__}, "
             f"tree {record['git']})", "",
             f"- Same bits as the trainer's warp: {total - differing:,} of {total:,} values "
             f"over one epoch of `{POLICY}` draws ({differing:,} differ).",
             f"- Compiled in {compile_s:.1f} s; vector gather instructions in the loop: {gathers}"
             + (" (LLVM left it scalar)." if gathers == 0 else "."),
             "", f"| warp + clamp of one {BATCH}-digit batch | ms (median of {args.rounds}) |",
             "|---|---|"]
    lines += [f"| {name} | {ms:.2f} |" for name, ms in medians.items()]
    RESULTS.mkdir(exist_ok=True)
    artifacts.write_text(RESULTS / "fused-warp.md", "\n".join(lines) + "\n")
    artifacts.write_json(RESULTS / "fused-warp.json", record)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
