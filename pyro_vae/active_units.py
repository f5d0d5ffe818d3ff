"""Active units (Burda et al. 2016, sec. 5.2): how many latent dimensions the guide actually uses, for ANY guide.

Unit d is active if ``Cov_x(E_q[z_d | x]) > threshold`` (0.01 in the paper): its posterior mean moves with x.
The posterior mean of each latent site in the data plate is taken per datapoint as

    E_q[z | x] = E_{q(u | x)} [ E_q[z | u, x] ],       u: the latents sampled before z (upstream),

* analytically when the guide has one latent site (its distribution's ``mean``);
* by Monte Carlo over the upstream latents otherwise: the mean of ``q(z | u_m, x)`` averaged over M draws
  ``u_m ~ q(u | x)`` (a hierarchical guide's q(z2 | z1): the mean given one sampled z1 is *not* E_q[z2 | x],
  and its spread over x overstates the units in use).  A site whose distribution has no ``mean`` (a
  transformed distribution) is averaged over its own samples.

Shape legend: ``N`` data points, ``B`` a batch, ``M`` Monte-Carlo draws (``C`` at a time), ``E`` a site's
flattened event size.
"""
from typing import Callable, List

import torch
from pyro import poutine

from .contract import eval_mode, slice_data
from .importance import guide_plate_nesting, latent_sites, vectorized


def _site_mean(site) -> torch.Tensor:
    """E[z | upstream values] of a traced site: its distribution's mean, or the sample where there is none."""
    try:
        return site["fn"].mean.expand(site["value"].shape)
    except NotImplementedError:
        return site["value"]


def _per_point(site, plate: str, nesting: int, num: int, batch: int) -> torch.Tensor:
    """A site's mean ``[C, ..., B, ..., event]`` as ``[C, B, E]`` (other plate dims count as units)."""
    mean = _site_mean(site)
    batch_ndim = mean.dim() - len(site["fn"].event_shape)
    mean = mean.reshape((1,) * (nesting + 1 - batch_ndim) + tuple(mean.shape))      # left-pad to [C, plates..]
    frame = next(f for f in site["cond_indep_stack"] if f.name == plate)
    mean = mean.movedim(nesting + 1 + frame.dim, 1)                                      # [C?, B, ...]
    return mean.expand(num, *mean.shape[1:]).reshape(num, batch, -1)


def _in_plate(site, plate: str) -> bool:
    return any(f.name == plate for f in site["cond_indep_stack"])


@torch.no_grad()
def latent_means(guide: Callable, x: torch.Tensor, *args, num_samples: int = 500, particle_chunk: int = 100,
                 batch_size: int = 100, plate: str = "data", **kwargs) -> torch.Tensor:
    """E_q[z | x_n] of every latent site in the data plate, concatenated: ``x: [N, ...] -> [N, sum of E]``.

    Exact for a guide with one latent site (its distribution's mean); otherwise the Monte-Carlo average over
    ``num_samples`` draws of the upstream latents (see the module docstring).  The guide runs in eval mode.
    """
    if num_samples < 1 or particle_chunk < 1 or batch_size < 1:
        raise ValueError(f"num_samples, particle_chunk and batch_size must be >= 1, got {num_samples}, "
                         f"{particle_chunk}, {batch_size}")
    with eval_mode(guide), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        first = slice_data(kwargs, x.shape[0], 0, 1)
        probe = poutine.trace(guide).get_trace(x[:1], *args, **first)
        sites = [name for name, site in latent_sites(probe) if _in_plate(site, plate)]
        if not sites:
            raise ValueError(f"the guide has no latent sample site in plate {plate!r}")
        analytic = len(latent_sites(probe)) == 1 and _has_mean(probe.nodes[sites[0]])
        draws = 1 if analytic else num_samples
        nesting = guide_plate_nesting(guide, x[:1], *args, **first)
        parts: List[torch.Tensor] = []
        for start in range(0, x.shape[0], batch_size):
            xb, data = x[start:start + batch_size], slice_data(kwargs, x.shape[0], start, start + batch_size)
            total = None
            for done in range(0, draws, particle_chunk):
                c = min(particle_chunk, draws - done)
                trace = poutine.trace(vectorized(guide, c, nesting)).get_trace(xb, *args, **data)
                means = torch.cat([_per_point(trace.nodes[name], plate, nesting, c, xb.shape[0])
                                   for name in sites], -1).double().sum(0)                 # [B, sum E]
                total = means if total is None else total + means
            parts.append(total / draws)
    return torch.cat(parts)


def _has_mean(site) -> bool:
    try:
        site["fn"].mean
        return True
    except NotImplementedError:
        return False


def active_units(means: torch.Tensor, threshold: float = 0.01):
    """Burda et al. (2016): unit d is active if Cov_x(E_q[z_d | x]) > threshold.
    ``means: [N, Z] -> (count, variances [Z])``."""
    if means.shape[0] < 2:
        raise ValueError("active units need the encoder means of at least 2 data points")
    variances = means.double().var(0, unbiased=True)
    return int((variances > threshold).sum()), variances
