"""Matplotlib figures (Agg backend, PNG written atomically). Figures only render given data."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from robustmnist import __version__, artifacts

#: The PNG text chunk robustmnist signs its images with (``Software``): a file that holds it
#: is one robustmnist may replace (`artifacts.check_replaceable`).
PNG_MARK = b"Software\x00robustmnist"


def save(fig: plt.Figure, path: Path) -> Path:
    with artifacts.atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight",
                    metadata={"Software": f"robustmnist {__version__}"})
    plt.close(fig)
    return Path(path)


def digit_grid(images: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
               title: str) -> plt.Figure:
    """A (rows, cols, 28, 28) grid of digits, white on black, labelled."""
    rows, cols = images.shape[:2]
    width = 1.0 * cols + 0.6
    # ~12 characters an inch at 10 pt: a long title wraps to the grid's width, not past it
    lines = textwrap.wrap(title, max(20, int(width * 12)), break_on_hyphens=False) or [""]
    fig, axes = plt.subplots(rows, cols, figsize=(width, 1.0 * rows + 0.6 + 0.17 * (len(lines) - 1)),
                             squeeze=False, layout="constrained")  # the title above the grid
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(images[r, c], cmap="gray", vmin=0, vmax=255 if images.max() > 1 else 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_labels[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=8)
    fig.suptitle("\n".join(lines), fontsize=10)
    return fig


def accuracy_curves(table: pd.DataFrame, x: str, xlabel: str, title: str,
                    reference_x: float | None = None) -> plt.Figure:
    """Mean accuracy vs `x` per variant with a 95 % CI band (columns: variant, x, mean, lo, hi)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, g in table.groupby("variant", sort=False):
        g = g.sort_values(x)
        xs = g[x].to_numpy(float)
        line = ax.plot(xs, 100 * g["mean"].to_numpy(float), marker="o", ms=3,
                       label=f"{variant} (n={int(g['n'].max())})")
        ax.fill_between(xs, 100 * g["lo"].to_numpy(float), 100 * g["hi"].to_numpy(float),
                        alpha=0.2, color=line[0].get_color())
    if reference_x is not None:
        ax.axvline(reference_x, color="grey", ls=":", lw=1)
        ax.text(reference_x, ax.get_ylim()[0], " MNIST mean", color="grey", fontsize=8, va="bottom")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def binned_accuracy(table: pd.DataFrame, title: str) -> plt.Figure:
    """Clean accuracy per bin of each digit's own thickness (columns: variant, bin, mean, count)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    variants = list(dict.fromkeys(table["variant"]))
    bins = list(dict.fromkeys(table["bin"]))
    width = 0.8 / max(1, len(variants))
    for i, variant in enumerate(variants):
        g = table[table["variant"] == variant].set_index("bin").reindex(bins)
        ax.bar(np.arange(len(bins)) + i * width, 100 * (1 - g["mean"].to_numpy(float)), width,
               label=variant)
    counts = table.drop_duplicates("bin").set_index("bin").reindex(bins)["count"]
    ax.set_xticks(np.arange(len(bins)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{b}\n(n={int(c)})" for b, c in zip(bins, counts, strict=True)], fontsize=8)
    ax.set_xlabel("measured thickness of the clean test digit (px)")
    ax.set_ylabel("test error (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return fig


def class_heatmap(matrix: pd.DataFrame, title: str) -> plt.Figure:
    """Rows: variant x level; columns: digit classes; values: accuracy in [0, 1]."""
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(matrix) + 1.5))
    im = ax.imshow(100 * matrix.to_numpy(), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(matrix.shape[1]))
    ax.set_xticklabels([c.replace("acc_class_", "") for c in matrix.columns])
    ax.set_yticks(range(len(matrix)))
    ax.set_yticklabels(list(matrix.index), fontsize=8)
    for (r, c), value in np.ndenumerate(100 * matrix.to_numpy()):
        ax.text(c, r, f"{value:.0f}", ha="center", va="center", fontsize=7,
                color="white" if value < 60 else "black")
    ax.set_xlabel("digit class")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    return fig


def preview_figure(images_u8: Any, config: Any, draws: int, seed: int) -> tuple[plt.Figure, Any]:
    """The `augment preview` grid: each digit, then `draws` draws of the policy; and the
    (digits, draws) stroke levels drawn."""
    from robustmnist.augmentation import preview
    from robustmnist.photobank import PHOTO_BANDS

    grid, deltas = preview(images_u8, config, draws, seed)
    col_labels = ["original"] + [f"draw {i + 1}" for i in range(draws)]
    row_labels = [f"#{i}" for i in range(len(images_u8))]
    parts = []
    if config.p_photo:
        low, high = PHOTO_BANDS[0][0], PHOTO_BANDS[-1][1]
        parts.append(f"photos, pen {low:g}-{high:g} of the height (p {config.p_photo:g})")
    if config.delta_min_px or config.delta_max_px:
        parts.append(f"stroke change [{config.delta_min_px:g}, {config.delta_max_px:g}] px")
    if config.p_pen:
        rest = " of the rest" if config.p_photo else ""  # the pens draw among the digits left
        parts.append(f"pen {config.pen_min_px:g}-{config.pen_max_px:g} px (p {config.p_pen:g}{rest})")
        if config.pen_refit:
            parts.append(f"re-fitted (p {config.pen_refit:g})")
        if config.pen_fine:
            parts.append(f"fine pens < 1 px (p {config.pen_fine:g})")
    if config.affine:
        parts.append("affine")
    fig = digit_grid(grid.numpy(), row_labels, col_labels,
                     f"--aug {config.policy}: {', '.join(parts) or 'identity'}; "
                     f"p_untouched {config.p_untouched:g}")
    return fig, deltas
