"""Images in data space: grids of ``[N, D]`` images and inputs above their reconstructions.

Like every plotting module (see :mod:`pyro_vae.plots` for the shared conventions) this knows no model:
it takes arrays and an output path, writes a PNG and returns its path.

Figures
-------
:func:`plot_image_grid`
    ``[N, D]`` images tiled in a grid, e.g. samples from the prior
    ``p(x | z), z ~ p(z)`` or latent traversals.
:func:`plot_reconstructions`
    Inputs and their reconstructions ``E[x | z = mean of q(z | x)]`` as alternating row
    pairs (input row, reconstruction row, each labelled), at most 10 images per row.

``image_shape`` is ``(C, H, W)`` with ``C`` in {1, 3}, or ``(H, W)`` for greyscale
(read by :func:`pyro_vae.data.chw`); ``D == prod(image_shape)``. Values are clipped to
[0, 1] for display.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from .data import chw
from .plots import PathLike, new_figure, save_figure, to_numpy

__all__ = [
    "plot_image_grid",
    "plot_reconstructions",
]

_MAX_PER_ROW = 10  # images per row in plot_reconstructions


# --------------------------------------------------------------------------- #
# mosaics
# --------------------------------------------------------------------------- #
def _wrap_title(title: str, fig_width_in: float, fontsize: float) -> str:
    # Roughly 0.55 em per character; keep explicit line breaks.
    width = max(12, int(fig_width_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, width) or line for line in str(title).split("\n"))


def _parse_image_shape(image_shape: Sequence[int]) -> Tuple[int, int, int]:
    """:func:`pyro_vae.data.chw`, for a picture: grey (C = 1) or colour (C = 3)."""
    c, h, w = chw(image_shape)
    if c not in (1, 3):
        raise ValueError(f"image_shape channel count C must be 1 or 3, got C={c} in {tuple(image_shape)}")
    return c, h, w


def _as_images(images: Any, image_shape: Sequence[int], name: str = "images") -> np.ndarray:
    """[N, D] (or [D]) values -> [N, H, W, C] float64 clipped to [0, 1]."""
    c, h, w = _parse_image_shape(image_shape)
    arr = to_numpy(images).astype(np.float64, copy=False)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a [N, D] array, got shape {arr.shape}")
    n, d = arr.shape
    expected = c * h * w
    if d != expected:
        raise ValueError(
            f"{name} have data dimension D={d} but image_shape={tuple(image_shape)} "
            f"implies prod(image_shape)={expected}"
        )
    if n == 0:
        raise ValueError(f"{name} is empty (N=0); nothing to plot")
    arr = np.clip(np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    return arr.reshape(n, c, h, w).transpose(0, 2, 3, 1)


def _mosaic(
    imgs: np.ndarray,
    nrows: int,
    ncols: int,
    pad: int,
    fill: float = 1.0,
    row_gaps: Optional[Sequence[int]] = None,
) -> Tuple[np.ndarray, List[float]]:
    """Tile [N, H, W, C] images row-major into one array.

    ``row_gaps[r]`` is extra padding (pixels) inserted above row ``r``. Empty
    tiles and padding use ``fill``. Returns the mosaic and each row's centre y.
    """
    n, h, w, c = imgs.shape
    gaps = list(row_gaps) if row_gaps is not None else [0] * nrows
    total_h = pad + nrows * (h + pad) + sum(gaps)
    total_w = pad + ncols * (w + pad)
    out = np.full((total_h, total_w, c), fill, dtype=np.float64)
    centres: List[float] = []
    y = pad
    for r in range(nrows):
        y += gaps[r]
        centres.append(y + (h - 1) / 2.0)
        for col in range(ncols):
            i = r * ncols + col
            if i >= n:
                break
            x = pad + col * (w + pad)
            out[y : y + h, x : x + w] = imgs[i]
        y += h + pad
    return out, centres


def _show_mosaic(ax, mosaic: np.ndarray) -> None:
    if mosaic.shape[-1] == 1:
        ax.imshow(mosaic[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _mosaic_figure(
    mosaic: np.ndarray,
    ncols: int,
    title: Optional[str],
    left_in: float = 0.0,
):
    """Figure whose single axes shows ``mosaic`` at its native aspect, no wasted space."""
    mh, mw = mosaic.shape[:2]
    content_w = float(min(10.0, max(2.0, 0.9 * ncols)))
    content_h = content_w * mh / mw
    if content_h > 14.0:  # very tall grids: shrink to keep the figure sane
        content_w *= 14.0 / content_h
        content_h = 14.0
    fontsize = 11.0
    fig_w = left_in + content_w + 0.05
    wrapped = _wrap_title(title, fig_w, fontsize) if title else None
    n_lines = wrapped.count("\n") + 1 if wrapped else 0
    top_in = 0.12 + 0.24 * n_lines if wrapped else 0.05
    bottom_in = 0.05
    fig_h = bottom_in + content_h + top_in
    fig = new_figure((fig_w, fig_h))
    ax = fig.add_axes([left_in / fig_w, bottom_in / fig_h, content_w / fig_w, content_h / fig_h])
    _show_mosaic(ax, mosaic)
    if wrapped:
        fig.text(
            0.5,
            1.0 - 0.06 / fig_h,
            wrapped,
            ha="center",
            va="top",
            fontsize=fontsize,
        )
    return fig, ax


# --------------------------------------------------------------------------- #
# image grids
# --------------------------------------------------------------------------- #
def plot_image_grid(
    images: Any,
    image_shape: Sequence[int],
    path: PathLike,
    title: Optional[str] = None,
    ncols: Optional[int] = None,
) -> Path:
    """Tile ``[N, D]`` images (values in [0, 1]) in a grid of ``ncols`` columns.

    ``ncols`` defaults to ``ceil(sqrt(N))``. Raises ValueError if
    ``D != prod(image_shape)``.
    """
    imgs = _as_images(images, image_shape)
    n, h, w, _ = imgs.shape
    if ncols is None:
        ncols = int(math.ceil(math.sqrt(n)))
    ncols = int(ncols)
    if ncols <= 0:
        raise ValueError(f"ncols must be positive, got {ncols}")
    ncols = min(ncols, n)
    nrows = int(math.ceil(n / ncols))
    pad = max(1, round(min(h, w) / 14))
    mosaic, _ = _mosaic(imgs, nrows, ncols, pad)
    fig, _ = _mosaic_figure(mosaic, ncols, title)
    return save_figure(fig, path)


def plot_reconstructions(
    inputs: Any,
    reconstructions: Any,
    image_shape: Sequence[int],
    path: PathLike,
    title: str = "Inputs above their reconstructions, in pairs of rows",
    labels: Sequence[str] = ("input", "reconstruction"),
) -> Path:
    """Show inputs and reconstructions as alternating rows, at most 10 per row.

    Row pair ``k`` holds inputs ``10k .. 10k+9`` above their reconstructions;
    each row is labelled on the left with ``labels`` (input row, reconstruction
    row; a label may have two lines). Raises ValueError if the two arrays differ
    in shape or ``D != prod(image_shape)``.
    """
    x = to_numpy(inputs)
    r = to_numpy(reconstructions)
    if x.shape != r.shape:
        raise ValueError(
            f"inputs and reconstructions must have the same shape, got "
            f"inputs {tuple(x.shape)} vs reconstructions {tuple(r.shape)}"
        )
    xi = _as_images(x, image_shape, "inputs")
    ri = _as_images(r, image_shape, "reconstructions")
    n, h, w, c = xi.shape
    ncols = min(n, _MAX_PER_ROW)
    n_pairs = int(math.ceil(n / ncols))
    # Interleave: pair k -> input row (2k), reconstruction row (2k+1).
    blank = np.ones((1, h, w, c))
    tiles = []
    for k in range(n_pairs):
        for src in (xi, ri):
            chunk = src[k * ncols : (k + 1) * ncols]
            if len(chunk) < ncols:
                chunk = np.concatenate([chunk, np.repeat(blank, ncols - len(chunk), 0)])
            tiles.append(chunk)
    tiles_arr = np.concatenate(tiles, axis=0)
    pad = max(1, round(min(h, w) / 14))
    pair_gap = max(2, round(h / 3))
    gaps = [pair_gap if (i % 2 == 0 and i > 0) else 0 for i in range(2 * n_pairs)]
    mosaic, centres = _mosaic(tiles_arr, 2 * n_pairs, ncols, pad, row_gaps=gaps)
    longest = max(len(line) for label in labels for line in str(label).split("\n"))
    fig, ax = _mosaic_figure(mosaic, ncols, title, left_in=max(1.15, 0.075 * longest + 0.15))
    for i, yc in enumerate(centres):
        ax.text(
            -pad - 0.5,
            yc,
            labels[i % 2],
            ha="right",
            va="center",
            fontsize=9,
            clip_on=False,
        )
    return save_figure(fig, path)
