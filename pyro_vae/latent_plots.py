"""Points in latent space: encoder means coloured by label, and a 2-D prior density beneath them.

Like every plotting module (see :mod:`pyro_vae.plots` for the shared conventions) this knows no model:
it takes arrays (and, for the prior, a log-density callable) and an output path, writes a PNG and
returns its path.

Figures
-------
:func:`plot_latent_space`
    ``[N, Z]`` latent codes (typically encoder means) coloured by class label:
    a jittered strip plot for Z == 1, a scatter for Z == 2, and a PCA projection
    (see :func:`pca_2d`) for Z > 2.
:func:`plot_prior_density`
    Contours of a 2-D density with points on top (a prior and the encoded data).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np
import torch
from matplotlib.lines import Line2D

from .plots import PathLike, new_figure, save_figure, to_numpy

__all__ = [
    "pca_2d",
    "plot_latent_space",
    "plot_prior_density",
]


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _get_cmap(name: str):
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except AttributeError:  # matplotlib < 3.5
        import matplotlib.cm as cm

        return cm.get_cmap(name)


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
    x = to_numpy(z).astype(np.float64, copy=False)
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
    x = to_numpy(z).astype(np.float64, copy=False)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"z must be a [N, Z] array with Z >= 1, got shape {x.shape}")
    n, zdim = x.shape
    lab = None
    if labels is not None:
        lab = to_numpy(labels).reshape(-1)
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

    fig = new_figure((6.4, 5.0))
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
    return save_figure(fig, path, tight=True)


def plot_prior_density(log_density: Any, z: Any, labels: Any, path: PathLike, extent: Optional[float] = None,
                       title: str = "Prior density p(z) and the aggregate posterior") -> Path:
    """Contours of a 2-D prior density with encoded points on top (the aggregate posterior).

    ``log_density``: a callable ``[G, 2] tensor -> [G]`` log p(z) (e.g. ``prior().log_prob``);
    ``z``: ``[N, 2]`` encoder means; ``labels``: ``[N]`` or None.  Holes in latent space show up as
    prior mass without points, over-regularisation as points squeezed inside the prior's mode.
    """
    pts = to_numpy(z).astype(np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"plot_prior_density needs 2-D latent codes [N, 2], got shape {pts.shape}")
    half = extent if extent is not None else max(3.0, float(np.nanmax(np.abs(pts))) * 1.1)
    grid = np.linspace(-half, half, 200)
    zz1, zz2 = np.meshgrid(grid, grid)
    flat = torch.tensor(np.stack([zz1.ravel(), zz2.ravel()], -1), dtype=torch.float32)
    with torch.no_grad():
        density = np.exp(to_numpy(log_density(flat)).reshape(zz1.shape))
    fig = new_figure((6.4, 5.4))
    ax = fig.add_subplot(1, 1, 1)
    filled = ax.contourf(zz1, zz2, density, levels=20, cmap="Greys")
    fig.colorbar(filled, ax=ax, label="p(z)")
    lab = None if labels is None else to_numpy(labels).reshape(-1)
    ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.7, c=lab if lab is not None else "tab:red",
               cmap="tab10" if lab is not None else None, linewidths=0)
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.set_title(title)
    return save_figure(fig, path, tight=True)
