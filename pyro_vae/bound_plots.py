"""Figures of log-likelihood estimators (:mod:`pyro_vae.bdmc`, :mod:`pyro_vae.gaps`), drawn from plain arrays
like every figure of :mod:`pyro_vae.plots`: nothing here knows a model.

:func:`plot_bdmc_bounds`
    The BDMC sandwich (forward- and reverse-AIS bounds on log p(x)) against the number of annealing steps,
    and its width.
:func:`plot_inference_gaps`
    The approximation and amortization gaps as stacked bars, one per model (nats per point).
"""
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from .plots import PathLike, new_figure, save_figure

__all__ = ["plot_bdmc_bounds", "plot_inference_gaps"]


def plot_bdmc_bounds(num_steps: Sequence[int], lower: Sequence[float], upper: Sequence[float], path: PathLike,
                     gap_err: Optional[Sequence[float]] = None, reference: Optional[Mapping[str, float]] = None,
                     title: str = "BDMC: log p(x) between forward and reverse AIS") -> Path:
    """The BDMC sandwich against the number of annealing steps (log x axis).  Left: the forward-AIS lower bound
    and the reverse-AIS upper bound per step count (means over points, nats), the band between them shaded;
    ``reference`` adds horizontal lines (e.g. ``{"IWAE_1000": -95.1}``).  Right: the gap upper - lower with
    ``gap_err`` (its standard error over points) as error bars.  Where the gap is small, AIS at that many steps
    is accurate for data like the model's own."""
    steps = np.asarray(num_steps, dtype=np.float64)
    lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    if not (steps.shape == lo.shape == hi.shape) or steps.ndim != 1 or steps.size == 0:
        raise ValueError(f"num_steps, lower and upper must be 1-D of one length, got {steps.shape}, {lo.shape}, "
                         f"{hi.shape}")
    fig = new_figure((10.0, 4.0))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    left.fill_between(steps, lo, hi, color="tab:blue", alpha=0.15, label="gap")
    left.plot(steps, lo, "o-", color="tab:blue", label="lower bound (forward AIS)")
    left.plot(steps, hi, "s-", color="tab:red", label="upper bound (reverse AIS)")
    for i, (name, value) in enumerate((reference or {}).items()):
        left.axhline(value, color=f"C{i + 2}", linestyle="--", linewidth=1, label=name)
    left.set_ylabel("log p(x) per point (nats)")
    left.legend()
    right.errorbar(steps, hi - lo, yerr=None if gap_err is None else np.asarray(gap_err, dtype=np.float64),
                   fmt="o-", color="black", capsize=4)
    right.axhline(0, color="gray", linewidth=0.8)
    right.set_ylabel("upper - lower (nats)")
    for ax in (left, right):
        if steps.min() > 0:
            ax.set_xscale("log")
            ax.set_xticks(steps, [str(int(s)) for s in steps])
            ax.minorticks_off()
        ax.set_xlabel("annealing steps T")
        ax.grid(True, alpha=0.25)
    fig.suptitle(title)
    return save_figure(fig, path, tight=True)


def plot_inference_gaps(names: Sequence[str], approximation: Sequence[float], amortization: Sequence[float],
                        path: PathLike, approximation_err: Optional[Sequence[float]] = None,
                        amortization_err: Optional[Sequence[float]] = None,
                        title: str = "Inference gap = approximation + amortization") -> Path:
    """Stacked bars, one per model: the approximation gap log p(x) - ELBO[q*] and on top of it the amortization
    gap ELBO[q*] - ELBO[q] (nats; their sum, the bar's height, is the inference gap log p(x) - ELBO[q])."""
    approx, amort = np.asarray(approximation, dtype=np.float64), np.asarray(amortization, dtype=np.float64)
    if approx.shape != amort.shape or approx.shape != (len(names),):
        raise ValueError(f"one approximation and one amortization gap per name, got {approx.shape}, {amort.shape} "
                         f"for {len(names)} names")
    fig = new_figure((max(4.0, 1.6 * len(names) + 2), 4.2))
    ax = fig.add_subplot(1, 1, 1)
    where = np.arange(len(names))
    ax.bar(where, approx, 0.6, color="tab:blue", label="approximation gap",
           yerr=None if approximation_err is None else np.asarray(approximation_err), capsize=4)
    ax.bar(where, amort, 0.6, bottom=approx, color="tab:orange", label="amortization gap",
           yerr=None if amortization_err is None else np.asarray(amortization_err), capsize=4)
    ax.set_xticks(where, list(names))
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("nats per point")
    ax.set_title(title)
    ax.legend()
    ax.grid(True, axis="y", alpha=0.25)
    return save_figure(fig, path, tight=True)
