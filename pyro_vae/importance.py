"""Per-datapoint importance weights for ANY Pyro model/guide pair.

For a model p(x, z) and a guide q(z | x) whose per-datapoint sites sit in a plate (``"data"`` by
default), :func:`log_weights` draws K particles z_nk ~ q(z | x_n) in one vectorized pass and returns

    log_w[k, n] = log p(x_n, z_nk) - log q(z_nk | x_n)                         shape [K, N]

(every log-density read from the Pyro traces, ``site["fn"].log_prob``).  Everything built on top,
the IWAE objectives (:mod:`pyro_vae.objectives`) and the importance-sampled log-likelihood
(:mod:`pyro_vae.evaluation`), is a reduction of this tensor over k, e.g. the IWAE bound
``logsumexp_k log_w[k, n] - log K``.

Conventions (shape legend: K particles, N data points in the batch, M other plate dims):

* Particles are an outer plate (``"_num_particles_vectorized"``) to the left of all model plates.
* Plates other than the data plate (e.g. pixels) are summed out inside each datapoint's weight.
* Scales are **not** applied inside the weights: the data plate's subsample scale N_total / B and any
  ``poutine.scale`` factor common to all sites are returned separately (:class:`ImportanceWeights`)
  and are applied *after* the log-sum-exp, because ``log sum_k (s w_k) != s log sum_k w_k``.  (This is
  what Pyro's ``RenyiELBO`` gets wrong on subsampled plates.)  A factor that differs between sites,
  such as the KL warm-up weight beta on the latent sites only, has no meaning after the log-sum-exp;
  it is applied per site inside the weights (tempered weights ``log p(x|z) + beta (log p(z) - log q)``).
* Masks (``poutine.mask``, ``.mask()``) are applied inside the weights.
* Sites outside the data plate (global latents) have no per-datapoint weight: each datapoint's weight
  carries a 1/N_total share of their log-density ratio.  With K = 1 the sum over the data set is then
  exactly the ELBO; with K > 1 it is a heuristic, not a bound.  Models without global latents (every VAE
  here) are unaffected.
"""
import copy
import dataclasses
import math
from typing import Callable, Dict, Optional

import torch
import pyro
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

PARTICLE_PLATE = "_num_particles_vectorized"


class ModelGuideContractError(ValueError):
    """A model/guide pair that breaks the contract (per-datapoint sites in the data plate, reparameterized
    guide), named with the site and what to change."""


@dataclasses.dataclass
class ImportanceWeights:
    """The output of :func:`importance_weights`.

    Attributes:
        log_w: ``[K, N]`` log importance weights, unscaled (higher is better).
        scale: the factor to apply after reducing over particles: data-plate subsample scale
            N_total / B times any ``poutine.scale`` common to every site (1.0 for a full batch).
        num_data: N_total, the data plate's full size.
        guide_trace, model_trace: the vectorized traces (for gradient estimators that need the
            guide's sample values, e.g. DReG).
        max_plate_nesting: number of plates to the right of the particle plate.
        guide_factors: per guide site, the factor its log q carries inside the weights (1 unless a
            site-specific scale such as the KL warm-up beta tempers it).
    """
    log_w: torch.Tensor
    scale: float
    num_data: int
    guide_trace: poutine.Trace
    model_trace: poutine.Trace
    max_plate_nesting: int
    guide_factors: Dict[str, float]


def guess_max_plate_nesting(model: Callable, guide: Callable, *args, **kwargs) -> int:
    """How many plates the model and guide nest (one run of both, without gradients and without
    disturbing the random stream, so a seeded computation that follows is unaffected)."""
    with poutine.block(), torch.no_grad(), torch.random.fork_rng():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    dims = [frame.dim for trace in (guide_trace, model_trace) for site in trace.nodes.values()
            if site["type"] == "sample" for frame in site["cond_indep_stack"] if frame.vectorized]
    return -min(dims) if dims else 0


def _vectorized(fn: Callable, num_particles: int, max_plate_nesting: int) -> Callable:
    def wrapped(*args, **kwargs):
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=-max_plate_nesting - 1):
            return fn(*args, **kwargs)
    return wrapped


def detach_distribution(fn):
    """A shallow copy of a distribution whose parameter tensors are detached (recursively through
    wrappers such as ``Independent``, expanded and masked distributions): its ``log_prob`` then depends
    on the guide's parameters only through the value (the "sticking the landing" / DReG device)."""
    new = copy.copy(fn)
    for name, value in vars(fn).items():
        if torch.is_tensor(value) and value.requires_grad:
            setattr(new, name, value.detach())
        elif isinstance(value, torch.distributions.Distribution):
            setattr(new, name, detach_distribution(value))
    return new


def _data_frame(site, plate: str):
    for frame in site["cond_indep_stack"]:
        if frame.name == plate:
            return frame
    return None


def per_datapoint_sum(log_p: torch.Tensor, frame, max_plate_nesting: int, num_particles: int, batch: int,
                      num_data: float) -> torch.Tensor:
    """A site's log-density (batch shape ``[P, ..., N, ...]``, broadcastable) summed to ``[P, N]``.

    ``frame`` is the site's data-plate frame, or None for a site outside the data plate, whose log-density
    (summed to ``[P]``) is shared out as ``1 / num_data`` to each datapoint (see the module docstring).
    """
    ndim = max_plate_nesting + 1
    log_p = log_p.reshape((1,) * (ndim - log_p.dim()) + log_p.shape)        # left-pad to [P?, ..., N?, ...]
    keep = [0] if frame is None else [0, ndim + frame.dim]                  # positions of P (and N)
    summed = [d for d in range(ndim) if d not in keep]
    if summed:
        log_p = log_p.sum(summed, keepdim=True)
    if frame is None:
        return (log_p.reshape(log_p.shape[0], 1) / num_data).expand(num_particles, batch)
    return log_p.reshape(log_p.shape[0], -1).expand(num_particles, batch)


def importance_weights(model: Callable, guide: Callable, *args, num_particles: int = 1, plate: str = "data",
                       max_plate_nesting: Optional[int] = None, detach_guide_params: bool = False,
                       **kwargs) -> ImportanceWeights:
    """Vectorized importance weights with their scale and traces; see :func:`log_weights`.

    Args:
        detach_guide_params: evaluate log q(z|x) with the guide distributions' parameters detached
            (gradients reach the guide only through the reparameterized z): the STL and DReG estimators.
    """
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, *args, **kwargs)
    guide_trace = poutine.trace(_vectorized(guide, num_particles, max_plate_nesting)).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(_vectorized(model, num_particles, max_plate_nesting),
                                               trace=guide_trace)).get_trace(*args, **kwargs)
    guide_trace, model_trace = prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)

    guide_latents = {name for name, site in guide_trace.nodes.items()
                     if site["type"] == "sample" and not site["is_observed"]}
    terms = []      # (site name, sign, unscaled log-density, site scale, data-plate frame or None)
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or (sign < 0 and site["is_observed"]):
                continue
            if sign < 0 and name in model_trace.nodes and model_trace.nodes[name]["is_observed"]:
                raise ModelGuideContractError(f"site {name!r} is sampled in the guide but observed in the model")
            if sign > 0 and not site["is_observed"] and name not in guide_latents:
                raise ModelGuideContractError(
                    f"latent site {name!r} of the model is not sampled by the guide: importance weights need "
                    f"q for every latent (add it to the guide)")
            fn = detach_distribution(site["fn"]) if sign < 0 and detach_guide_params else site["fn"]
            log_p = fn.log_prob(site["value"])
            mask = site["mask"]
            if mask is not None:
                mask = mask.bool() if torch.is_tensor(mask) else torch.tensor(bool(mask), device=log_p.device)
                log_p = torch.where(mask, log_p, torch.zeros_like(log_p))     # masked out, even a -inf
            terms.append((name, sign, log_p, site["scale"], _data_frame(site, plate)))
    frames = [frame for *_, frame in terms if frame is not None]
    if not frames:
        raise ModelGuideContractError(
            f"no sample site is inside a plate named {plate!r}: per-datapoint weights need the per-datapoint "
            f"sites in pyro.plate({plate!r}, ...) (pass plate=... if yours has another name)")
    batch, num_data = frames[0].size, frames[0].full_size or frames[0].size
    plate_scale = num_data / batch

    # Each site's scale is (plate subsample scale, inside the plate) x (a poutine.scale factor).
    if any(torch.is_tensor(scale) for _, _, _, scale, _ in terms):
        raise ModelGuideContractError("tensor-valued poutine.scale factors are not supported by importance weights")
    factors = [scale / (plate_scale if frame is not None else 1.0) for _, _, _, scale, frame in terms]
    common = factors[0] if all(math.isclose(f, factors[0], rel_tol=1e-12) for f in factors) else 1.0

    log_w, guide_factors = 0.0, {}
    for (name, sign, log_p, _, frame), factor in zip(terms, factors):
        log_w = log_w + (sign * factor / common) * per_datapoint_sum(
            log_p, frame, max_plate_nesting, num_particles, batch, num_data)
        if sign < 0:
            guide_factors[name] = factor / common
    return ImportanceWeights(log_w, plate_scale * common, num_data, guide_trace, model_trace, max_plate_nesting,
                             guide_factors)


def log_weights(model: Callable, guide: Callable, *args, num_particles: int = 1, plate: str = "data",
                max_plate_nesting: Optional[int] = None, **kwargs) -> torch.Tensor:
    """Per-datapoint log importance weights ``log p(x_n, z_nk) - log q(z_nk | x_n)``, shape ``[K, N]``.

    Args:
        model, guide: any Pyro programs taking ``(*args, **kwargs)`` whose per-datapoint sites sit
            inside ``pyro.plate(plate, ...)``.
        num_particles: K, drawn in one vectorized pass (an outer plate; no Python loop over K).
        plate: the name of the data plate.
        max_plate_nesting: plates nested in the model (guessed by one extra run when not given).

    Returns:
        ``log_w: [K, N]``, unscaled: no plate subsample scale and no ``poutine.scale`` factor inside.

    Example: the IWAE bound of each datapoint, higher is better::

        lw = log_weights(model, guide, x, num_particles=50)
        iwae = torch.logsumexp(lw, 0) - math.log(50)          # [N]
    """
    return importance_weights(model, guide, *args, num_particles=num_particles, plate=plate,
                              max_plate_nesting=max_plate_nesting, **kwargs).log_w
