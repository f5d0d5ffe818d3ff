"""Drawing arrays: what every figure of pyro_vae shares, and the training curves.

The plotting modules know nothing about models, guides or Pyro. Every plotting function
takes plain arrays (numpy arrays, torch tensors or nested sequences) plus an
output path, writes a PNG (dpi 120), releases the figure and returns the path as
a :class:`pathlib.Path`. Parent directories are created as needed.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas
directly, never through ``pyplot``: no global figure registry, no GUI backend,
safe to call from worker threads or headless jobs. :func:`new_figure` and
:func:`save_figure` are that recipe, for the other plotting modules and for a
study's own plots.

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
:func:`plot_training_curves` (here)
    Per-epoch learning curves in nats per datapoint, higher is better: the
    training objective (``-train_loss``; under KL warm-up it is the
    beta-weighted objective, not the ELBO) and the validation bound under its name
    (the ELBO, IWAE_K, ...; the ELBO dashed beside another bound), with the best
    validation epoch marked, plus the KL weight ``beta`` on a twin axis when it
    is not constantly 1. Use it to spot divergence, over-fitting and the effect
    of warm-up.
:func:`~pyro_vae.image_plots.plot_image_grid`, :func:`~pyro_vae.image_plots.plot_reconstructions`
    Images in data space, in :mod:`pyro_vae.image_plots`.
:func:`~pyro_vae.latent_plots.plot_latent_space`, :func:`~pyro_vae.latent_plots.plot_prior_density`
    Points in latent space (and :func:`~pyro_vae.latent_plots.pca_2d`), in :mod:`pyro_vae.latent_plots`.

The figures that ask a model for these arrays are in :mod:`pyro_vae.figures`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "plot_training_curves",
    "training_curves_figure",
    "new_figure",
    "save_figure",
    "to_numpy",
]

PathLike = Union[str, os.PathLike]

DPI = 120


# --------------------------------------------------------------------------- #
# the canvas
# --------------------------------------------------------------------------- #
def to_numpy(x: Any) -> np.ndarray:
    """Convert a torch tensor / array-like to a numpy array (detached, on CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def new_figure(figsize: Tuple[float, float]) -> Figure:
    """A matplotlib ``Figure`` of ``figsize`` inches at :data:`DPI`, drawn on the Agg canvas (no pyplot)."""
    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)  # attach the Agg canvas; no pyplot involved
    return fig


def save_figure(fig: Figure, path: PathLike, tight: bool = False) -> Path:
    """Write ``fig`` to ``path`` as a PNG (creating parent folders; ``tight`` trims the margins), release its
    artists, and return the path."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"bbox_inches": "tight", "pad_inches": 0.1} if tight else {}
    try:
        fig.savefig(path, dpi=DPI, format="png", **kwargs)
    finally:
        fig.clear()  # release artists; the Figure is not registered anywhere else
    return path


# --------------------------------------------------------------------------- #
# training curves
# --------------------------------------------------------------------------- #
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
    """Plot per-epoch training objective and validation bound (nats per datapoint) to ``path``
    (:func:`training_curves_figure`, saved)."""
    return save_figure(training_curves_figure(history, title), path)


def training_curves_figure(
    history: Sequence[Mapping[str, float]],
    title: str = "Training curves",
) -> Figure:
    """The figure of :func:`plot_training_curves`, not yet saved.

    ``history`` holds one dict per epoch with keys ``"epoch"``, ``"train_loss"``
    (per-datapoint loss minimised; plotted negated as "train objective (-loss)"),
    ``"val_bound"`` (the objective's per-datapoint validation bound, higher is
    better, named by ``"val_bound_name"``: "ELBO", "IWAE_5", ...; the best epoch
    is marked on it), ``"val_elbo"`` (the validation ELBO, drawn dashed where
    the bound is another one; a history with only ``val_elbo`` plots that as the
    bound) and optionally ``"beta"`` (KL warm-up weight) and ``"lr"`` (ignored).
    Missing or non-finite values are skipped. The best validation epoch is
    marked, and its value and epoch are named in the legend; ``beta`` is drawn
    on a twin axis if it is ever != 1. If the first epochs are far below the
    rest, the y-axis is clipped to the bulk of the curve so the later epochs
    stay readable, and a note says so.  The legend and the note sit below the
    axes, never on the data.
    """
    history = list(history)
    tx, ty = _series(history, "train_loss", negate=True)
    named = any("val_bound" in row for row in history)
    vx, vy = _series(history, "val_bound" if named else "val_elbo")
    name = next((row["val_bound_name"] for row in history if row.get("val_bound_name")), "ELBO") if named else "ELBO"
    label = "ELBO" if name == "ELBO" else f"{name} bound"
    ex, ey = _series(history, "val_elbo") if named and name != "ELBO" else (np.zeros(0), np.zeros(0))
    bx, by = _series(history, "beta")

    fig = new_figure((7.0, 4.3))
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
        (h,) = ax.plot([bx_best], [by_best], marker="*", ms=13, color="tab:red", ls="none", zorder=5,
                       label=f"best validation {label}: {by_best:.2f} at epoch {bx_best:g}")
        handles.append(h)

    if len(ex):
        (h,) = ax.plot(ex, ey, color="tab:purple", ls="--", lw=1.2, label="validation ELBO")
        handles.append(h)

    notes = []
    all_y = np.concatenate([ty, vy, ey])
    if all_y.size == 0:
        notes.append("no finite train_loss / validation values to plot")
    elif all_y.size >= 8:
        # Robust y-limits: ignore a far-off start (e.g. epoch-1 ELBO of -500 vs -100 later).
        lo_all, hi = float(all_y.min()), float(all_y.max())
        lo = float(np.percentile(all_y, 5))
        span = hi - lo
        if span > 0 and (lo - lo_all) > 0.5 * span:
            ax.set_ylim(lo - 0.15 * span, hi + 0.1 * span)
            notes.append(f"y-axis clipped to show the later epochs: the lowest value, {lo_all:.2f}, lies below it")

    if len(bx) and not np.all(by == 1.0):
        ax2 = ax.twinx()
        (h,) = ax2.plot(bx, by, color="tab:green", ls="--", lw=1.2, label="KL weight beta (right axis)")
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

    # the legend and the notes go in a band below the axes, so they never cover a curve
    legend_rows = math.ceil(len(handles) / 2)
    band_in = 0.08 + 0.22 * legend_rows + 0.2 * len(notes)
    width_in, height_in = fig.get_size_inches()
    fig.set_size_inches(width_in, height_in + band_in)
    band = band_in / (height_in + band_in)
    fig.tight_layout(rect=(0.0, band, 1.0, 1.0))
    if handles:
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, band), ncol=2, fontsize=8.5,
                   frameon=False)
    for i, note in enumerate(notes):
        fig.text(0.5, 0.02 + 0.2 * (len(notes) - 1 - i) / (height_in + band_in), note, ha="center", va="bottom",
                 fontsize=8, color="0.35")
    return fig
