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
  carries a 1/N_total share of their log-density ratio, where N_total is the data plate's full size (pass
  ``num_data``).  With K = 1 the sum over the data set is then exactly the ELBO; with K > 1 the per-point
  log-sum-exp is *not* a bound, so the objectives and evaluators refuse it (:attr:`ImportanceWeights.global_latents`
  names the sites; :mod:`pyro_vae.global_latents` gives the exact alternatives).  Models without global
  latents (every VAE here) are unaffected.
* ``stop_guide_params=True`` (the STL, DReG and PIWAE estimators): log q(z|x) is re-scored by running the
  guide again on the sampled values with every parameter stopped (:class:`stopped_parameters`; a guide with
  one latent site and no transforms gets the same numbers by detaching that site's distribution), so its
  gradient reaches the guide only through the sampled z, along the whole sampling path (z2 = f(z1, eps)
  in a hierarchical guide keeps its dependence on z1; transformed distributions work too).  The model and
  the re-scored guide read copies of the sampled values (:attr:`ImportanceWeights.values`), on which an
  estimator may hook the gradient that reaches each use without touching the sampling path.
"""
import copy
import dataclasses
import math
from typing import Callable, Dict, Optional, Tuple

import torch
import pyro
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

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
        guide_trace, model_trace: the vectorized traces (``guide_trace`` is the one that drew the samples).
        max_plate_nesting: number of plates to the right of the particle plate.
        guide_factors: per guide site, the factor its log q carries inside the weights (1 unless a
            site-specific scale such as the KL warm-up beta tempers it).
        values: per latent site, the value tensor the model and log q read (with ``stop_guide_params``:
            a copy of the sample, so a hook on it sees only the gradient of the weights, not the
            sampling path; otherwise the sample itself).
        global_latents: names of the model's latent sites outside the data plate.
        sampled_trace: the unpruned trace that drew the samples (for running the guide again on them).
    """
    log_w: torch.Tensor
    scale: float
    num_data: int
    guide_trace: poutine.Trace
    model_trace: poutine.Trace
    max_plate_nesting: int
    guide_factors: Dict[str, float]
    values: Dict[str, torch.Tensor]
    global_latents: Tuple[str, ...]
    sampled_trace: poutine.Trace


def _plate_nesting(*traces) -> int:
    dims = [frame.dim for trace in traces for site in trace.nodes.values()
            if site["type"] == "sample" for frame in site["cond_indep_stack"] if frame.vectorized]
    return -min(dims) if dims else 0


def program_structure(model: Callable, guide: Callable, *args, plate: str = "data",
                      **kwargs) -> Tuple[int, Tuple[str, ...]]:
    """``(max plate nesting, global latent site names)`` of a model/guide pair, from one run of both without
    gradients and without disturbing the random stream (a seeded computation that follows is unaffected)."""
    with poutine.block(), torch.no_grad(), torch.random.fork_rng():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return _plate_nesting(guide_trace, model_trace), global_latent_sites(prune_subsample_sites(model_trace), plate)


def guess_max_plate_nesting(model: Callable, guide: Callable, *args, **kwargs) -> int:
    """How many plates the model and guide nest (see :func:`program_structure`)."""
    return program_structure(model, guide, *args, **kwargs)[0]


def guide_plate_nesting(guide: Callable, *args, **kwargs) -> int:
    """How many plates the guide alone nests (as :func:`guess_max_plate_nesting`, for guide-only work)."""
    with poutine.block(), torch.no_grad(), torch.random.fork_rng():
        return _plate_nesting(poutine.trace(guide).get_trace(*args, **kwargs))


def vectorized(fn: Callable, num_particles: int, max_plate_nesting: int) -> Callable:
    """``fn`` run inside the particle plate (K draws in one pass, to the left of ``max_plate_nesting``
    plates)."""
    def wrapped(*args, **kwargs):
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=-max_plate_nesting - 1):
            return fn(*args, **kwargs)
    return wrapped


class stopped_parameters(TorchFunctionMode):
    """Inside this context every parameter (a leaf tensor that requires grad: ``nn.Parameter``, a
    ``pyro.param``'s unconstrained value) enters torch operations detached, while every other tensor keeps
    its gradient path.  Running a guide under it on given values gives log q(z | x) with the guide's
    parameters stopped but its inputs live, whatever the guide is (several latent sites, transforms, an
    ``nn.Module`` or ``pyro.param``s).  Code that bypasses torch functions (a custom
    ``torch.autograd.Function``, a TorchScript module) is not seen; :func:`score_guide` checks the result."""

    @staticmethod
    def _is_parameter(value) -> bool:
        return isinstance(value, torch.Tensor) and value.is_leaf and value.requires_grad

    def _stop(self, value):
        return value.detach() if self._is_parameter(value) else value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) == "__get__":
            # an attribute: p.requires_grad and p.shape as they are, a tensor view (p.T, p.mT) stopped
            out = func(*args, **kwargs)
            return out.detach() if isinstance(out, torch.Tensor) and any(map(self._is_parameter, args)) else out
        return func(*tree_map(self._stop, args), **tree_map(self._stop, kwargs))


def latent_sites(trace: Trace):
    """``(name, site)`` of every unobserved sample site of ``trace``, in execution order."""
    return [(name, site) for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]]


def with_values(trace: Trace, values: Dict[str, torch.Tensor]) -> Trace:
    """A copy of ``trace`` whose sample sites named in ``values`` hold those values (for ``poutine.replay``)."""
    new = trace.copy()
    for name, value in values.items():
        new.nodes[name] = dict(trace.nodes[name], value=value)
    return new


def score_guide(guide: Callable, sampled: Trace, values: Dict[str, torch.Tensor], *args, num_particles: int,
                max_plate_nesting: int, stop_params: bool, **kwargs) -> Trace:
    """The guide's latent sites holding ``values`` (the sampled values, or copies or detached copies of
    them), each with the distribution to score it under: the guide's parameters stopped when ``stop_params``,
    its inputs (x, the upstream latents' values) live.

    A guide with one latent site of a plain distribution (no transforms) is scored with the distribution that
    drew the sample, detached when ``stop_params``: no second run, and the very q that drew z.  Any other guide
    runs again, vectorized as ``sampled`` was, replaying ``values`` (q(z2 | z1) recomputed from the given z1),
    under :class:`stopped_parameters` when ``stop_params``; while Pyro's validation is on (a trainer's first
    step) the result is checked: the same densities as the sampling run, and no parameter reached other than
    through ``values``.  ``sampled`` is the unpruned sampling trace (its subsample sites are replayed too).
    """
    pruned = prune_subsample_sites(sampled)
    if _self_contained(pruned):
        trace = with_values(pruned, values)
        if stop_params:
            for name in values:
                trace.nodes[name]["fn"] = detach_distribution(trace.nodes[name]["fn"])
        return trace
    program = poutine.replay(vectorized(guide, num_particles, max_plate_nesting), trace=with_values(sampled, values))
    if stop_params:
        with stopped_parameters():
            trace = prune_subsample_sites(poutine.trace(program).get_trace(*args, **kwargs))
    else:
        trace = prune_subsample_sites(poutine.trace(program).get_trace(*args, **kwargs))
    if is_validation_enabled():
        _check_rescore(pruned, trace, values if stop_params else None)
    return trace


def _data_frame(site, plate: str):
    for frame in site["cond_indep_stack"]:
        if frame.name == plate:
            return frame
    return None


def global_latent_sites(model_trace: Trace, plate: str = "data") -> Tuple[str, ...]:
    """Names of the model's latent sample sites outside the data plate ``plate`` (shared by all points)."""
    return tuple(name for name, site in latent_sites(model_trace) if _data_frame(site, plate) is None)


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


def masked_log_prob(site, value=None) -> torch.Tensor:
    log_p = site["fn"].log_prob(site["value"] if value is None else value)
    mask = site["mask"]
    if mask is not None:
        mask = mask.bool() if torch.is_tensor(mask) else torch.tensor(bool(mask), device=log_p.device)
        log_p = torch.where(mask, log_p, torch.zeros_like(log_p))     # masked out, even a -inf
    return log_p


def importance_weights(model: Callable, guide: Callable, *args, num_particles: int = 1, plate: str = "data",
                       max_plate_nesting: Optional[int] = None, stop_guide_params: bool = False,
                       **kwargs) -> ImportanceWeights:
    """Vectorized importance weights with their scale and traces; see :func:`log_weights`.

    Args:
        stop_guide_params: re-score log q(z|x) with the guide's parameters stopped and its sampled values
            live (gradients reach the guide only through the reparameterized z): the STL, DReG and PIWAE
            estimators.  Costs one more run of the guide.
    """
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, *args, **kwargs)
    # the unpruned trace is replayed (its subsample sites give the model the guide's subsample)
    drawn = poutine.trace(vectorized(guide, num_particles, max_plate_nesting)).get_trace(*args, **kwargs)
    guide_trace = prune_subsample_sites(drawn)
    values = {name: site["value"] for name, site in latent_sites(guide_trace)}
    score_trace = guide_trace
    if stop_guide_params:
        values = {name: value.clone() for name, value in values.items()}    # the uses: z, not its sampling path
        score_trace = score_guide(guide, drawn, values, *args, num_particles=num_particles,
                                  max_plate_nesting=max_plate_nesting, stop_params=True, **kwargs)
    model_trace = prune_subsample_sites(poutine.trace(poutine.replay(
        vectorized(model, num_particles, max_plate_nesting), trace=with_values(drawn, values))).get_trace(
            *args, **kwargs))

    terms = []      # (site name, sign, unscaled log-density, site scale, data-plate frame or None)
    for trace, sign in ((model_trace, 1.0), (score_trace, -1.0)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or (sign < 0 and site["is_observed"]):
                continue
            if sign < 0 and name in model_trace.nodes and model_trace.nodes[name]["is_observed"]:
                raise ModelGuideContractError(f"site {name!r} is sampled in the guide but observed in the model")
            if sign > 0 and not site["is_observed"] and name not in values:
                raise ModelGuideContractError(
                    f"latent site {name!r} of the model is not sampled by the guide: importance weights need "
                    f"q for every latent (add it to the guide)")
            if sign > 0 and not site["is_observed"] and \
                    (_data_frame(site, plate) is None) != (_data_frame(guide_trace.nodes[name], plate) is None):
                inside = "model" if _data_frame(site, plate) is not None else "guide"
                raise ModelGuideContractError(
                    f"latent site {name!r} is inside the data plate {plate!r} in the {inside} only: sample it in "
                    f"the same plate in the model and the guide")
            terms.append((name, sign, masked_log_prob(site), site["scale"], _data_frame(site, plate)))
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
                             guide_factors, values, global_latent_sites(model_trace, plate), drawn)


def detach_distribution(fn):
    """A shallow copy of a distribution whose tensors are detached (recursively through wrappers such as
    ``Independent``, expanded and masked distributions)."""
    new = copy.copy(fn)
    for name, value in vars(fn).items():
        if torch.is_tensor(value) and value.requires_grad:
            setattr(new, name, value.detach())
        elif isinstance(value, torch.distributions.Distribution):
            setattr(new, name, detach_distribution(value))
    return new


_PLAIN = ("torch.distributions", "pyro.distributions", "pyro_vae.distributions")


def _self_contained(guide_trace: Trace) -> bool:
    """Whether stopping the guide's parameters in log q is detaching its one latent site's distribution: with
    no other latent site upstream, the distribution's tensors depend only on x and the parameters.  Only for
    torch's, Pyro's and pyro_vae's own distributions without transforms, which hold their parameters as tensors
    (a flow keeps them in its transforms)."""
    sites = latent_sites(guide_trace)
    if len(sites) != 1:
        return False
    fn = sites[0][1]["fn"]
    while fn is not None:
        if isinstance(fn, torch.distributions.TransformedDistribution) or not type(fn).__module__.startswith(_PLAIN):
            return False
        fn = getattr(fn, "base_dist", None)
    return True


def _reaches_a_parameter(tensors, through) -> bool:
    """Whether the autograd graph of ``tensors`` reaches a leaf that requires grad other than through the
    nodes ``through``."""
    stack, seen = [t.grad_fn for t in tensors if t.grad_fn is not None], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in through:
            continue
        seen.add(node)
        if hasattr(node, "variable"):         # AccumulateGrad: a parameter
            return True
        stack.extend(n for n, _ in node.next_functions)
    return False


def _check_rescore(sampled: Trace, scored: Trace, stopped_values: Optional[Dict[str, torch.Tensor]]) -> None:
    """A guide run again on its own samples must give the densities the sampling run gave (a guide that draws
    randomness outside its sample sites, dropout in training mode, would score z under another q), and, with
    its parameters stopped, reach no parameter other than through the values (a custom autograd Function or
    a TorchScript module bypasses :class:`stopped_parameters`)."""
    log_qs = []
    for name, site in latent_sites(sampled):
        again = masked_log_prob(scored.nodes[name])
        log_qs.append(again)
        drawn = masked_log_prob(site).detach()
        if not torch.allclose(drawn, again.detach(), rtol=1e-5, atol=1e-5 * (1 + drawn.abs().max().item())):
            raise ModelGuideContractError(
                f"re-running the guide on its own samples changed log q of site {name!r}: the guide must be a "
                f"deterministic function of x and of its sampled values (no dropout or other randomness outside "
                f"sample sites in training mode) for the estimators that re-score it (stl, dreg, piwae)")
    if stopped_values is not None:
        through = {v.grad_fn for v in stopped_values.values() if v.grad_fn is not None}
        if _reaches_a_parameter(log_qs, through):
            raise ModelGuideContractError(
                "log q with the guide's parameters stopped still reaches a parameter: part of the guide bypasses "
                "torch functions (a custom torch.autograd.Function or a TorchScript module), which "
                "stopped_parameters cannot see; use gradient='standard' for this guide")


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
