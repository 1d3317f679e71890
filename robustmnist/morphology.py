"""Stroke-width operations: the one stroke-width scale, at 28x28 (Kornia, any device).

A level is a signed change of total stroke width, ``stroke_delta_px``, in pixels at 28x28:
negative thins (erosion), positive thickens (dilation). At 28x28 a flat structuring element
changes the width by a whole number of pixels, so the training-time ladder has integer rungs
and levels in between are linear blends of the two neighbouring rungs (a grey-level
interpolation of the two morphological results). The upsampled, sub-pixel version used to
build the cached test sets lives in ``perturb.py`` and shares the elements defined here.

Conventions (checked against OpenCV in tests/test_morphology.py): elements are flat; an even
element (2x2) is anchored like OpenCV's default anchor ``(k // 2, k // 2)``, i.e. dilation
takes the max over the pixel and its up/left neighbours; pixels outside the image are ignored
(Kornia's geodesic border = OpenCV's default border for dilate/erode).

Kornia does the morphology on every device; on the CPU, flat squares (the whole training
ladder) take a direct path, the same running max/min over the same shifted views without
Kornia's generic buffers: ~4x cheaper on a 512-digit batch, bit-identical (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
from kornia.morphology import dilation, erosion

Shape = Literal["square", "disk"]
# Kornia's "shift" engine takes a running max over shifted views: ~8x faster than "unfold"
# on a 28x28 batch on the CPU (benchmarks/README.md) and it never materialises B*H*W*k*k.
_ENGINE = "shift"


def element(shape: Shape, size: int) -> np.ndarray:
    """A flat structuring element (size, size) of 0/1 uint8: OpenCV's rect or ellipse."""
    if size < 1:
        raise ValueError(f"element size must be >= 1, got {size}")
    kinds = {"square": cv2.MORPH_RECT, "disk": cv2.MORPH_ELLIPSE}
    if shape not in kinds:
        raise ValueError(f"element shape must be one of {sorted(kinds)}, got {shape!r}")
    return cv2.getStructuringElement(kinds[shape], (size, size))


def _kernel(shape: Shape, size: int, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(element(shape, size)).to(device=like.device, dtype=like.dtype)


def _check_batch(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"expected a float tensor (B, C, H, W), got {x.dtype} {tuple(x.shape)}")


def _square_on_cpu(x: torch.Tensor, shape: Shape) -> bool:
    """Whether the square fast path serves this call: a flat square on a CPU tensor outside
    autograd. There Kornia's generic shift engine (a two-plane buffer, an index_select per
    cell) costs ~4x the arithmetic; on CUDA, and for disks, Kornia does the work."""
    return shape == "square" and x.device.type == "cpu" and not (
        torch.is_grad_enabled() and x.requires_grad)


def _square(x: torch.Tensor, size: int, anchor: int, dilating: bool) -> torch.Tensor:
    """OpenCV's flat square dilation/erosion with anchor (`anchor`, `anchor`), geodesic border:
    the running max (min) of the shifted views, rows then columns (exact: max is separable
    over a square). Bit-identical to the Kornia path (tests/test_morphology.py)."""
    op = torch.maximum if dilating else torch.minimum
    out = x
    for dim in (-2, -1):
        src, out = out, out.clone()
        n = src.shape[dim]
        for shift in range(-anchor, size - anchor):  # out[i] = op over src[i + shift]
            m = n - abs(shift)
            if shift == 0 or m <= 0:
                continue
            to, frm = (0, shift) if shift > 0 else (-shift, 0)
            dst = out.narrow(dim, to, m)
            op(dst, src.narrow(dim, frm, m), out=dst)
    return out


def dilate(x: torch.Tensor, shape: Shape, size: int, mirrored: bool = False) -> torch.Tensor:
    """Grey dilation of a batch (B, C, H, W) by a flat element, on x's device. `mirrored`
    anchors an even element on the other side (a 2x2 then its mirror = the 3x3 square).

    >>> dilate(torch.zeros(1, 1, 5, 5), "square", 3).shape
    torch.Size([1, 1, 5, 5])
    """
    _check_batch(x)
    if _square_on_cpu(x, shape):
        return _square(x, size, size - 1 - size // 2 if mirrored else size // 2, dilating=True)
    # Kornia's dilation reflects the element (the textbook definition); OpenCV's does not.
    # Handing Kornia the reflected element and the reflected anchor gives OpenCV's result.
    k = _kernel(shape, size, x).flip((0, 1))
    anchor = size // 2 if mirrored else size - 1 - size // 2
    return dilation(x, k, origin=[anchor, anchor], border_type="geodesic", engine=_ENGINE)


def erode(x: torch.Tensor, shape: Shape, size: int, mirrored: bool = False) -> torch.Tensor:
    """Grey erosion of a batch (B, C, H, W) by a flat element, on x's device."""
    _check_batch(x)
    if _square_on_cpu(x, shape):
        return _square(x, size, size - 1 - size // 2 if mirrored else size // 2, dilating=False)
    k = _kernel(shape, size, x)
    anchor = size - 1 - size // 2 if mirrored else size // 2
    return erosion(x, k, origin=[anchor, anchor], border_type="geodesic", engine=_ENGINE)


@dataclass(frozen=True)
class Rung:
    """One integer level of the 28x28 ladder: `stroke_delta_px` -> one morphological op."""

    stroke_delta_px: int
    op: Literal["dilate", "erode"]
    shape: Shape
    size: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (dilate if self.op == "dilate" else erode)(x, self.shape, self.size)


#: The 28x28 ladder. A k x k flat element moves each edge by (k-1)/2 px, so the width
#: changes by k-1 px: 2x2 -> 1 px, 3x3 -> 2 px, 4x4 -> 3 px, 5x5 -> 4 px. Measured effect on
#: the MNIST test set (robustmnist measure, Morpho-MNIST definition) is in docs/README
#: "Stroke-width scale". The thickness policies train on -1..+2 by default; +3 and +4 (the
#: ``ladder`` test family's thickest rungs) only where a variant's range reaches them.
LADDER: dict[int, Rung] = {
    -2: Rung(-2, "erode", "square", 3),
    -1: Rung(-1, "erode", "square", 2),
    1: Rung(1, "dilate", "square", 2),
    2: Rung(2, "dilate", "square", 3),
    3: Rung(3, "dilate", "square", 4),
    4: Rung(4, "dilate", "square", 5),
}
LADDER_RANGE = (min(LADDER), max(LADDER))


def next_step(rung: Rung, previous: torch.Tensor) -> torch.Tensor:
    """Rung ``k`` (|k| >= 2) from the output of the rung one nearer 0: one more 2x2 op,
    anchored so the windows add up to the |k|+1 square's (OpenCV anchor ``s // 2``: a 3x3 is a 2x2 then its
    mirror, a 4x4 the 3x3 then a 2x2, a 5x5 the 4x4 then a mirrored 2x2). Max/min over the
    same pixels, geodesic border: exact, at a fraction of the cost of the big square.

    >>> x = torch.rand(4, 1, 9, 9)
    >>> torch.equal(next_step(LADDER[2], LADDER[1](x)), LADDER[2](x))
    True
    >>> torch.equal(next_step(LADDER[4], next_step(LADDER[3], LADDER[2](x))), LADDER[4](x))
    True
    """
    assert rung.shape == "square", "rungs are squares: the 2x2 steps compose only those"
    op = dilate if rung.op == "dilate" else erode
    return op(previous, "square", 2, mirrored=rung.size % 2 == 1)


def _hat(level: torch.Tensor, rung: int | torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, 1) linear-interpolation weight of integer `rung` at each `level` (B,)."""
    return (1 - (level - rung).abs()).clamp(min=0).view(-1, 1, 1, 1)


def apply_stroke_delta(x: torch.Tensor, stroke_delta_px: torch.Tensor) -> torch.Tensor:
    """Change each sample's stroke width by its own level, one Kornia call per rung used.

    Args:
        x: images in [0, 1], (B, 1, H, W), any device.
        stroke_delta_px: (B,) signed levels within ``LADDER_RANGE``; 0 leaves a sample as is.
            A fractional level blends the two neighbouring integer rungs linearly.

    Returns:
        (B, 1, H, W) tensor, same device, dtype and memory format, values in [0, 1].

    >>> x = torch.zeros(2, 1, 8, 8); x[:, :, 4, 4] = 1
    >>> apply_stroke_delta(x, torch.tensor([0.0, 2.0]))[:, 0].sum((1, 2)).tolist()
    [1.0, 9.0]
    """
    _check_batch(x)
    if stroke_delta_px.shape != (x.shape[0],):
        raise ValueError(f"need one level per sample: {x.shape[0]} samples, "
                         f"levels of shape {tuple(stroke_delta_px.shape)}")
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else None
    # Row gathers and puts (index_select, index_copy_) of a channels_last batch take slow
    # strided paths: work contiguous.
    x = x.contiguous()
    lo, hi = LADDER_RANGE
    delta = stroke_delta_px.to(device=x.device, dtype=x.dtype).clamp(lo, hi)
    # Hat-function weights on the integer rungs (linear interpolation); identity weight first.
    out = x * _hat(delta, 0)  # a new tensor: safe in place
    for sign in (-1, 1):
        # A row needs rung k of this side when its level goes past k - 1 (its hat weight is
        # then non-zero on rung k or on a deeper one); each rung's weight is computed on the
        # rows that need it, the same floats as on the whole batch.
        depth = max(k * sign for k in LADDER if k * sign > 0)
        idx = torch.nonzero(delta * sign > 0).flatten()
        if idx.numel() == 0:
            continue
        level = delta.index_select(0, idx)
        rung = LADDER[sign](x.index_select(0, idx))
        # The rows' sums gathered, added and put back: the same float adds as index_add_,
        # which takes a generic scatter path on the CPU. Each deeper rung is one more 2x2 op
        # on the previous rung's rows that go deeper, added to those rows in rung order.
        rows = out.index_select(0, idx).add_(rung * _hat(level, sign))
        pos = None   # positions within idx of the rows still going deeper (None: all)
        for k in range(2, depth + 1):
            deep = torch.nonzero(level * sign > k - 1).flatten()
            if deep.numel() == 0:
                break
            pos = deep if pos is None else pos.index_select(0, deep)
            level = level.index_select(0, deep)
            rung = next_step(LADDER[k * sign], rung.index_select(0, deep))
            rows.index_copy_(0, pos, rows.index_select(0, pos).add_(rung * _hat(level, k * sign)))
        out.index_copy_(0, idx, rows)
    out = out.clamp_(0, 1)
    return out.contiguous(memory_format=fmt) if fmt is not None else out


@dataclass(frozen=True)
class RungTable:
    """The integer rungs ``lo..hi`` (0 = the digit itself) of a set of uint8 digits, computed
    once, so that a batch's stroke change is a gather and a blend of two rungs per row
    (`blend`) instead of the rung chain of `apply_stroke_delta`: the same floats (each rung of
    a [0, 1] digit is a max or min of its pixels, so it is a uint8 image over 255 too; the
    blend has at most two non-zero terms; tests/test_morphology.py compares bit for bit).

    Indexed with a batch's positions in the set (``table[idx]``) it keeps the whole table and
    those positions: `blend` then takes rows of that batch.
    """

    rungs: torch.Tensor                 # uint8 (N, hi - lo + 1, H, W): rung lo + k at [:, k]
    lo: int
    index: torch.Tensor | None = None   # (B,) positions in the set of a batch's digits (None: all)

    @property
    def hi(self) -> int:
        return self.lo + self.rungs.shape[1] - 1

    def __len__(self) -> int:
        return int(self.rungs.shape[0] if self.index is None else self.index.shape[0])

    def __getitem__(self, idx: torch.Tensor) -> RungTable:
        if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32) or idx.ndim != 1:
            raise TypeError("a rung table is indexed with a 1-d integer tensor of positions")
        return RungTable(self.rungs, self.lo, idx if self.index is None else self.index.index_select(0, idx))

    def blend(self, rows: torch.Tensor, stroke_delta_px: torch.Tensor,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``apply_stroke_delta(x[rows], levels)`` for ``x`` = the digits over 255 (as
        ``checkpoint.to_unit`` makes them): (R, 1, H, W) in `dtype`, levels (R,) within the
        table's range."""
        lo, hi = LADDER_RANGE
        delta = stroke_delta_px.to(dtype).clamp(lo, hi)
        if rows.numel() and (float(delta.min()) < self.lo or float(delta.max()) > self.hi):
            raise ValueError(f"stroke levels [{float(delta.min()):g}, {float(delta.max()):g}] "
                             f"outside the rung table's [{self.lo}, {self.hi}]")
        digits = rows if self.index is None else self.index.index_select(0, rows)
        below = delta.floor().clamp_(self.lo, max(self.hi - 1, self.lo))  # blend rungs below, below + 1
        k = self.rungs.shape[1]
        first = digits * k + (below - self.lo).long()
        flat = self.rungs.flatten(0, 1).unsqueeze(1)                         # (N * K, 1, H, W)
        low = _unit(flat.index_select(0, first), dtype)
        out = low.mul_(_hat(delta, below))
        if k > 1:
            high = _unit(flat.index_select(0, first + 1), dtype)  # below <= hi - 1
            out.add_(high.mul_(_hat(delta, below + 1)))
        return out.clamp_(0, 1)


def _unit(pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 pixels over 255 in `dtype`, ``pixels.to(dtype) / 255.0``; for the default dtype
    in one pass (the division converts them)."""
    return torch.div(pixels, 255.0) if dtype == torch.get_default_dtype() else pixels.to(dtype) / 255.0


def rung_table(images_u8: torch.Tensor, lo: int, hi: int, chunk: int = 1024) -> RungTable:
    """The `RungTable` of uint8 digits (N, 1, H, W) for rungs ``lo..hi`` (``lo <= 0 <= hi``,
    within ``LADDER_RANGE``), on the images' device: each rung one 2x2 step from the one nearer
    0, as `apply_stroke_delta` chains them (`next_step`), on the uint8 pixels themselves (max
    and min commute with dividing by 255; 0.02-0.7 s for the 60,000 training digits on the
    CPU, by the number of rungs: ``benchmarks/results/cpu-2026-12-02-1639.json``).

    >>> digits = torch.zeros(2, 1, 8, 8, dtype=torch.uint8); digits[:, :, 4, 4] = 255
    >>> table = rung_table(digits, -1, 2)
    >>> table.rungs.shape, table.rungs[0].flatten(1).sum(1).div(255).tolist()
    (torch.Size([2, 4, 8, 8]), [0.0, 1.0, 4.0, 9.0])
    """
    if not LADDER_RANGE[0] <= lo <= 0 <= hi <= LADDER_RANGE[1]:
        raise ValueError(f"rungs {lo}..{hi}: need {LADDER_RANGE[0]} <= lo <= 0 <= hi <= {LADDER_RANGE[1]}")
    if images_u8.dtype != torch.uint8 or images_u8.ndim != 4:
        raise ValueError("expected uint8 digits (N, 1, H, W), got "
                         f"{images_u8.dtype} {tuple(images_u8.shape)}")
    n, _, h, w = images_u8.shape
    out = torch.empty((n, hi - lo + 1, h, w), dtype=torch.uint8, device=images_u8.device)
    for start in range(0, n, chunk):  # a chunk's rungs stay in cache
        digits = images_u8[start:start + chunk].contiguous()
        part = out[start:start + chunk]
        part[:, -lo] = digits[:, 0]
        for sign, depth in ((-1, -lo), (1, hi)):
            rung = digits
            for k in range(1, depth + 1):
                square = LADDER[k * sign]
                assert square.shape == "square" and square.size == k + 1  # a 2x2 step a rung
                # LADDER[+-1] is the 2x2 with OpenCV's anchor; each deeper rung a 2x2 step
                # anchored as `next_step` anchors it (mirrored when the side is odd).
                mirrored = k > 1 and square.size % 2 == 1
                rung = _square(rung, 2, 0 if mirrored else 1, dilating=sign > 0)
                part[:, k * sign - lo] = rung[:, 0]
    return RungTable(out, lo)
