"""Figures for VAE experiments: training curves, image grids, reconstructions, latent space.

This module knows nothing about models, guides or Pyro. Every plotting function
takes plain arrays (numpy arrays, torch tensors or nested sequences) plus an
output path, writes a PNG (dpi 120), releases the figure and returns the path as
a :class:`pathlib.Path`. Parent directories are created as needed.

Shape conventions
-----------------
``N``  number of points (images, latent codes).
``D``  data dimension of one flattened image, ``D == prod(image_shape)``.
``Z``  latent dimension.
``image_shape`` is ``(C, H, W)`` with ``C`` in {1, 3}, or ``(H, W)`` for
greyscale. Image values are expected in [0, 1] and are clipped to [0, 1] for
display (e.g. Bernoulli means, or Gaussian means that overshoot slightly).

Figures
-------
:func:`plot_training_curves`
    Per-epoch learning curves in nats per datapoint, higher is better: the
    training objective (``-train_loss``; under KL warm-up it is the
    beta-weighted objective, not the ELBO) and the validation bound under its name
    (the ELBO, IWAE_K, ...; the ELBO dashed beside another bound), with the best
    validation epoch marked, plus the KL weight ``beta`` on a twin axis when it
    is not constantly 1. Use it to spot divergence, over-fitting and the effect
    of warm-up.
:func:`plot_image_grid`
    ``[N, D]`` images tiled in a grid, e.g. samples from the prior
    ``p(x | z), z ~ p(z)`` or latent traversals.
:func:`plot_reconstructions`
    Inputs and their reconstructions ``E[x | z = mean of q(z | x)]`` as alternating row
    pairs (input row, reconstruction row), at most 10 images per row.
:func:`plot_latent_space`
    ``[N, Z]`` latent codes (typically encoder means) coloured by class label:
    a jittered strip plot for Z == 1, a scatter for Z == 2, and a PCA projection
    (see :func:`pca_2d`) for Z > 2.
:func:`plot_prior_density`
    Contours of a 2-D density with points on top (a prior and the encoded data).

The figures that ask a model for these arrays are in :mod:`pyro_vae.figures`.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas
directly, never through ``pyplot``: no global figure registry, no GUI backend,
safe to call from worker threads or headless jobs.
"""

from __future__ import annotations

import math
import os
import textwrap
import warnings
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from .data import chw

__all__ = [
    "plot_training_curves",
    "plot_image_grid",
    "plot_reconstructions",
    "plot_latent_space",
    "pca_2d",
]

PathLike = Union[str, os.PathLike]

DPI = 120
_MAX_PER_ROW = 10  # images per row in plot_reconstructions


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _to_numpy(x: Any) -> np.ndarray:
    """Convert a torch tensor / array-like to a numpy array (detached, on CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _new_figure(figsize: Tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)  # attach the Agg canvas; no pyplot involved
    return fig


def _save(fig: Figure, path: PathLike, tight: bool = False) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"bbox_inches": "tight", "pad_inches": 0.1} if tight else {}
    try:
        fig.savefig(path, dpi=DPI, format="png", **kwargs)
    finally:
        fig.clear()  # release artists; the Figure is not registered anywhere else
    return path


def _get_cmap(name: str):
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except AttributeError:  # matplotlib < 3.5
        import matplotlib.cm as cm

        return cm.get_cmap(name)


def _finite_float(v: Any) -> Optional[float]:
    """``float(v)`` if it is a finite number (python, numpy or 0-d tensor), else None."""
    if v is None:
        return None
    try:
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                return None
            v = v.item()
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


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
    arr = _to_numpy(images).astype(np.float64, copy=False)
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
    fig = _new_figure((fig_w, fig_h))
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
# training curves
# --------------------------------------------------------------------------- #
def _series(history: Sequence[Mapping[str, Any]], key: str, negate: bool = False):
    xs, ys = [], []
    for i, entry in enumerate(history):
        if not isinstance(entry, Mapping):
            continue
        y = _finite_float(entry.get(key))
        if y is None:
            continue
        x = _finite_float(entry.get("epoch"))
        if x is None:
            x = float(i + 1)  # fall back to the position (1-based)
        xs.append(x)
        ys.append(-y if negate else y)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def plot_training_curves(
    history: Sequence[Mapping[str, float]],
    path: PathLike,
    title: str = "Training curves",
) -> Path:
    """Plot per-epoch training objective and validation bound (nats per datapoint).

    ``history`` holds one dict per epoch with keys ``"epoch"``, ``"train_loss"``
    (per-datapoint loss minimised; plotted negated as "train objective (-loss)"),
    ``"val_bound"`` (the objective's per-datapoint validation bound, higher is
    better, named by ``"val_bound_name"``: "ELBO", "IWAE_5", ...; the best epoch
    is marked on it), ``"val_elbo"`` (the validation ELBO, drawn dashed where
    the bound is another one; a history with only ``val_elbo`` plots that as the
    bound) and optionally ``"beta"`` (KL warm-up weight) and ``"lr"`` (ignored).
    Missing or non-finite values are skipped. The best validation epoch is
    marked and annotated; ``beta`` is drawn on a twin axis if it is ever != 1.
    If the first epochs are far below the rest, the y-axis is clipped to the
    bulk of the curve (noted in the figure) so the later epochs stay readable.
    """
    history = list(history)
    tx, ty = _series(history, "train_loss", negate=True)
    named = any("val_bound" in row for row in history)
    vx, vy = _series(history, "val_bound" if named else "val_elbo")
    name = next((row["val_bound_name"] for row in history if row.get("val_bound_name")), "ELBO") if named else "ELBO"
    label = "ELBO" if name == "ELBO" else f"{name} bound"
    ex, ey = _series(history, "val_elbo") if named and name != "ELBO" else (np.zeros(0), np.zeros(0))
    bx, by = _series(history, "beta")

    fig = _new_figure((7.0, 4.3))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint (higher is better)")
    ax.grid(True, alpha=0.3)

    n_max = max(len(tx), len(vx), 1)
    marker = "o" if n_max <= 40 else None
    handles = []
    if len(tx):
        (h,) = ax.plot(tx, ty, color="tab:blue", marker=marker, ms=3, lw=1.5,
                       label="train objective (-loss)")
        handles.append(h)
    if len(vx):
        (h,) = ax.plot(vx, vy, color="tab:orange", marker=marker, ms=3, lw=1.5,
                       label=f"validation {label}")
        handles.append(h)
        best = int(np.argmax(vy))
        bx_best, by_best = vx[best], vy[best]
        ax.axvline(bx_best, color="tab:orange", ls=":", lw=1.0, alpha=0.8)
        (h,) = ax.plot([bx_best], [by_best], marker="*", ms=13, color="tab:red",
                       ls="none", zorder=5, label=f"best validation {label}")
        handles.append(h)
        epoch_txt = f"{bx_best:g}"
        # put the label on the side with more room, below the point
        xmin = min(tx.min() if len(tx) else bx_best, vx.min())
        xmax = max(tx.max() if len(tx) else bx_best, vx.max())
        right_half = xmax > xmin and (bx_best - xmin) > 0.5 * (xmax - xmin)
        ax.annotate(
            f"best val {label} {by_best:.2f}\n(epoch {epoch_txt})",
            xy=(bx_best, by_best),
            xytext=(-10 if right_half else 10, -28),
            textcoords="offset points",
            ha="right" if right_half else "left",
            va="top",
            fontsize=8.5,
            bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="0.7", alpha=0.9),
            arrowprops=dict(arrowstyle="-", color="0.5", lw=0.8),
            zorder=6,
        )

    if len(ex):
        (h,) = ax.plot(ex, ey, color="tab:purple", ls="--", lw=1.2, label="validation ELBO")
        handles.append(h)

    all_y = np.concatenate([ty, vy, ey])
    if all_y.size == 0:
        ax.text(0.5, 0.5, "no finite train_loss / validation values to plot",
                transform=ax.transAxes, ha="center", va="center", color="0.4")
    elif all_y.size >= 8:
        # Robust y-limits: ignore a far-off start (e.g. epoch-1 ELBO of -500 vs -100 later).
        lo_all, hi = float(all_y.min()), float(all_y.max())
        lo = float(np.percentile(all_y, 5))
        span = hi - lo
        if span > 0 and (lo - lo_all) > 0.5 * span:
            ax.set_ylim(lo - 0.15 * span, hi + 0.1 * span)
            ax.text(0.01, 0.01, "y-axis clipped: early epochs lie below",
                    transform=ax.transAxes, fontsize=7.5, color="0.4", va="bottom")

    if len(bx) and not np.all(by == 1.0):
        ax2 = ax.twinx()
        (h,) = ax2.plot(bx, by, color="tab:green", ls="--", lw=1.2, label="KL weight beta")
        handles.append(h)
        ax2.set_ylabel("KL weight beta", color="tab:green")
        ax2.tick_params(axis="y", colors="tab:green")
        top = max(1.0, float(by.max()))
        ax2.set_ylim(min(0.0, float(by.min())) - 0.03 * top, 1.05 * top)

    all_x = np.concatenate([tx, vx, bx])
    if all_x.size and np.all(all_x == np.round(all_x)):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if all_x.size and all_x.min() == all_x.max():  # single epoch: avoid a 0.96..1.04 axis
        ax.set_xlim(all_x.min() - 1.0, all_x.max() + 1.0)

    if handles:
        ax.legend(handles=handles, loc="best", fontsize=8.5, framealpha=0.85)
    fig.tight_layout()
    return _save(fig, path)


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
    return _save(fig, path)


def plot_reconstructions(
    inputs: Any,
    reconstructions: Any,
    image_shape: Sequence[int],
    path: PathLike,
    title: str = "Inputs (top) and reconstructions (bottom)",
) -> Path:
    """Show inputs and reconstructions as alternating rows, at most 10 per row.

    Row pair ``k`` holds inputs ``10k .. 10k+9`` above their reconstructions;
    each row is labelled "input" / "reconstruction" on the left. Raises
    ValueError if the two arrays differ in shape or ``D != prod(image_shape)``.
    """
    x = _to_numpy(inputs)
    r = _to_numpy(reconstructions)
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
    fig, ax = _mosaic_figure(mosaic, ncols, title, left_in=1.15)
    for i, yc in enumerate(centres):
        ax.text(
            -pad - 0.5,
            yc,
            "input" if i % 2 == 0 else "reconstruction",
            ha="right",
            va="center",
            fontsize=9,
            clip_on=False,
        )
    return _save(fig, path)


# --------------------------------------------------------------------------- #
# latent space
# --------------------------------------------------------------------------- #
def pca_2d(z: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Project ``[N, Z]`` points onto their first two principal components.

    Centres the data and uses ``numpy.linalg.svd``. Returns ``(projected [N, 2],
    explained_variance_ratio [2])``, ratios relative to the total variance (so
    they sum to <= 1, exactly 1 when the data span at most 2 dimensions) and
    sorted descending. Component signs are fixed so the largest-magnitude
    loading is positive (deterministic output). If fewer than two components
    exist (Z == 1) the missing column is zeros with ratio 0. Raises ValueError
    for fewer than 2 points or non-finite values.
    """
    x = _to_numpy(z).astype(np.float64, copy=False)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"z must be a [N, Z] array, got shape {x.shape}")
    n, d = x.shape
    if n < 2:
        raise ValueError(f"pca_2d needs at least 2 points, got N={n}")
    if d < 1:
        raise ValueError(f"pca_2d needs Z >= 1, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("pca_2d: z contains non-finite values")
    xc = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(2, vt.shape[0])
    comps = vt[:k]
    # deterministic signs
    idx = np.argmax(np.abs(comps), axis=1)
    signs = np.sign(comps[np.arange(k), idx])
    signs[signs == 0] = 1.0
    comps = comps * signs[:, None]
    proj = xc @ comps.T
    var = s**2
    total = var.sum()
    ratio = var[:k] / total if total > 0 else np.zeros(k)
    if k < 2:
        proj = np.concatenate([proj, np.zeros((n, 2 - k))], axis=1)
        ratio = np.concatenate([ratio, np.zeros(2 - k)])
    return proj, ratio


def plot_latent_space(
    z: Any,
    labels: Any,
    path: PathLike,
    title: Optional[str] = None,
) -> Path:
    """Scatter ``[N, Z]`` latent codes, coloured by ``labels`` ([N] ints or None).

    Z == 1: jittered strip plot (one strip per class when labelled);
    Z == 2: direct scatter with axes "z1", "z2";
    Z > 2: PCA projection with axes "PC1 (xx% var)", "PC2 (yy% var)".
    Up to 20 classes get a discrete palette (tab10 / tab20) and a legend; more
    get a continuous colormap and a colorbar. Rows with non-finite coordinates
    are dropped with a warning.
    """
    x = _to_numpy(z).astype(np.float64, copy=False)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"z must be a [N, Z] array with Z >= 1, got shape {x.shape}")
    n, zdim = x.shape
    lab = None
    if labels is not None:
        lab = _to_numpy(labels).reshape(-1)
        if lab.shape[0] != n:
            raise ValueError(f"labels has {lab.shape[0]} entries but z has N={n} rows")
    keep = np.all(np.isfinite(x), axis=1)
    if not keep.all():
        warnings.warn(f"plot_latent_space: dropping {int((~keep).sum())} points with non-finite z")
        x = x[keep]
        lab = lab[keep] if lab is not None else None
        n = x.shape[0]
    if n == 0:
        raise ValueError("plot_latent_space: no points to plot")

    rng = np.random.default_rng(0)
    classes = np.unique(lab) if lab is not None else None
    class_idx = np.searchsorted(classes, lab) if lab is not None else None

    default_title: str
    if zdim == 1:
        xs = x[:, 0]
        if lab is not None:
            ys = class_idx + rng.uniform(-0.3, 0.3, size=n)
        else:
            ys = rng.uniform(-0.3, 0.3, size=n)
        xlabel, ylabel = "z1", ("class" if lab is not None else "jitter")
        default_title = "1-dim latent means (jittered strip plot)"
    elif zdim == 2:
        xs, ys = x[:, 0], x[:, 1]
        xlabel, ylabel = "z1", "z2"
        default_title = "2-dim latent means"
    else:
        if n < 2:
            raise ValueError("plot_latent_space: PCA of Z > 2 latents needs at least 2 points")
        proj, ratio = pca_2d(x)
        xs, ys = proj[:, 0], proj[:, 1]
        xlabel = f"PC1 ({100 * ratio[0]:.1f}% var)"
        ylabel = f"PC2 ({100 * ratio[1]:.1f}% var)"
        default_title = f"PCA of {zdim}-dim latent means"
    if title is None:
        full_title = default_title
    elif zdim > 2:
        full_title = f"{title}\n{default_title}"
    else:
        full_title = title

    fig = _new_figure((6.4, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    size = float(np.clip(6000.0 / n, 2.0, 16.0))
    order = rng.permutation(n)  # random draw order so no class systematically hides another
    if lab is None:
        ax.scatter(xs, ys, s=size, alpha=0.7, color="tab:blue", linewidths=0)
    else:
        n_cls = len(classes)
        if n_cls <= 20:
            cmap = _get_cmap("tab10" if n_cls <= 10 else "tab20")
            palette = [cmap(i % cmap.N) for i in range(n_cls)]
            colours = np.asarray(palette)[class_idx]
            ax.scatter(xs[order], ys[order], s=size, alpha=0.7, c=colours[order], linewidths=0)
            handles = [
                Line2D([], [], ls="none", marker="o", ms=6, color=palette[i], label=str(c))
                for i, c in enumerate(classes)
            ]
            ax.legend(handles=handles, title="label", loc="center left",
                      bbox_to_anchor=(1.02, 0.5), fontsize=8, title_fontsize=8.5,
                      frameon=False)
        else:
            sc = ax.scatter(xs[order], ys[order], s=size, alpha=0.7,
                            c=class_idx[order], cmap=_get_cmap("viridis"), linewidths=0)
            cbar = fig.colorbar(sc, ax=ax)
            cbar.set_label(f"label index (0..{n_cls - 1})")
    if zdim == 1:
        if lab is not None:
            ax.set_yticks(np.arange(len(classes)))
            ax.set_yticklabels([str(c) for c in classes])
        else:
            ax.set_yticks([])
            ax.set_ylim(-1, 1)
    elif zdim == 2:
        pass
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(full_title)
    ax.grid(True, alpha=0.25)
    return _save(fig, path, tight=True)


def plot_prior_density(log_density: Any, z: Any, labels: Any, path: PathLike, extent: Optional[float] = None,
                       title: str = "Prior density p(z) and the aggregate posterior") -> Path:
    """Contours of a 2-D prior density with encoded points on top (the aggregate posterior).

    ``log_density``: a callable ``[G, 2] tensor -> [G]`` log p(z) (e.g. ``prior().log_prob``);
    ``z``: ``[N, 2]`` encoder means; ``labels``: ``[N]`` or None.  Holes in latent space show up as
    prior mass without points, over-regularisation as points squeezed inside the prior's mode.
    """
    pts = _to_numpy(z).astype(np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"plot_prior_density needs 2-D latent codes [N, 2], got shape {pts.shape}")
    half = extent if extent is not None else max(3.0, float(np.nanmax(np.abs(pts))) * 1.1)
    grid = np.linspace(-half, half, 200)
    zz1, zz2 = np.meshgrid(grid, grid)
    flat = torch.tensor(np.stack([zz1.ravel(), zz2.ravel()], -1), dtype=torch.float32)
    with torch.no_grad():
        density = np.exp(_to_numpy(log_density(flat)).reshape(zz1.shape))
    fig = _new_figure((6.4, 5.4))
    ax = fig.add_subplot(1, 1, 1)
    filled = ax.contourf(zz1, zz2, density, levels=20, cmap="Greys")
    fig.colorbar(filled, ax=ax, label="p(z)")
    lab = None if labels is None else _to_numpy(labels).reshape(-1)
    ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.7, c=lab if lab is not None else "tab:red",
               cmap="tab10" if lab is not None else None, linewidths=0)
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.set_title(title)
    return _save(fig, path, tight=True)
