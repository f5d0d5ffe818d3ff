"""Annealed importance sampling (AIS) of log p(x) for ANY Pyro model/guide pair, with HMC transitions.

For each data point x_n, C independent chains anneal along the geometric path between a normalised start
density pi_0 (the guide q(z | x_n), or the prior p(z)) and the unnormalised posterior p(x_n, z)::

    f_t(z) = pi_0(z)^(1 - b_t) p(x_n, z)^(b_t),      0 = b_0 < b_1 < ... < b_T = 1

    z_0 ~ pi_0;   for t = 1 .. T:   log w += log f_t(z_{t-1}) - log f_{t-1}(z_{t-1})
                                            = (b_t - b_{t-1}) (log p(x_n, z_{t-1}) - log pi_0(z_{t-1}))
                                    z_t = HMC transition of z_{t-1} leaving f_t invariant   (t < T)

    log p(x_n) ~= log (1/C) sum_c w_c                                                   shape [C, N] -> [N]

Each w_c is unbiased for p(x_n) (Neal 2001), so the estimate is a stochastic lower bound (Jensen), and it
converges to log p(x_n) as T grows, whatever pi_0: unlike importance sampling with the guide (IWAE_S, a
special case: T = 1, b = [0, 1], C = S, with the same draws), it does not need q to cover the posterior.
Higher is better.  :mod:`pyro_vae.bdmc` runs the same chains backwards from an exact posterior sample for
a stochastic *upper* bound.

How it is done here (Wu et al. 2017, "On the Quantitative Analysis of Decoder-Based Generative Models",
Sec. 4 and App. A, which this follows):

* The chains move every latent site of the model at once, in unconstrained space: a site with support S
  is written z = biject_to(S)(u), and the log-det-Jacobian log|dz/du| joins log f_t (it cancels in the
  weights).  Discrete latent sites are refused.
* Every density comes from the Pyro traces: the model is replayed on the chains' values inside the same
  vectorized particle plate as :mod:`pyro_vae.importance` (the particles are the chains), so log p(x, z)
  and log q(z | x) are ``[C, B]`` per data point, with one fused gradient over all chains and points per
  leapfrog step (:mod:`pyro_vae.hmc`).  The chains start from :func:`pyro_vae.importance.importance_weights`'
  own draws, so T = 1 reproduces IWAE_C exactly.
* One HMC transition (``leapfrog_steps`` L) per intermediate temperature; L + 1 gradient evaluations per
  temperature (the extra one re-evaluates the gradient at the new temperature).
* The step size is one per data point (shared by its chains), adapted from the previous transition's mean
  acceptance probability over the point's chains: multiplied by 1 + ``adapt_rate`` above ``target_accept``,
  by 1 - ``adapt_rate`` below, within [1e-4, 1] (Wu et al.'s scheme, 0.65 and 2 %).  Each transition's
  step size is fixed before it runs (it reads only acceptances already observed), so every transition
  leaves its own f_t invariant.  Strictly, the unbiasedness proof of AIS wants kernels fixed in advance;
  with ``adapt_step_size=False`` (or a recorded ``step_sizes`` schedule, which is what the reverse chains of
  :mod:`pyro_vae.bdmc` use) it holds exactly.  The closed-form tests show no bias from the adaptation at
  the Monte-Carlo error of 16 chains.
* Log weights accumulate in float64; memory grows with ``num_chains * batch_size`` (the points are done
  ``batch_size`` at a time), not with T or N.

Sites outside the data plate (global latents) have no per-point log p(x_n) and are refused, as by
:func:`pyro_vae.log_likelihood` (condition the programs on fixed globals with
:func:`pyro_vae.global_latents.condition_on` first).  Modules run in eval mode.

Shape legend: ``C`` chains, ``B`` data points in a batch, ``N`` all data points, ``P`` the flattened
unconstrained latent dimension of one data point, ``T`` annealing steps.

References: R. Neal, "Annealed importance sampling", Statistics and Computing 11 (2001); Y. Wu, Y. Burda,
R. Salakhutdinov, R. Grosse, "On the Quantitative Analysis of Decoder-Based Generative Models", ICLR 2017;
R. Grosse, C. Maddison, R. Salakhutdinov, "Annealing between distributions by averaging moments", NIPS 2013
(the sigmoid schedule).
"""
import dataclasses
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import biject_to
from tqdm.auto import tqdm

from .compiled import CompiledFunction
from .contract import checked_once, eval_mode, slice_data
from .evaluation import _check_x, _set_size
from .hmc import HMCState, hmc_transition
from .importance import (ModelGuideContractError, _data_frame, importance_weights, latent_sites, masked_log_prob,
                         per_datapoint_sum, program_structure, score_guide, vectorized, with_values)
from .signals import bar_settings

SCHEDULES = ("sigmoid", "linear")
INITS = ("guide", "prior")
MIN_STEP, MAX_STEP = 1e-4, 1.0


def annealing_schedule(num_steps: int, kind: Union[str, Sequence[float], torch.Tensor] = "sigmoid",
             sharpness: float = 4.0) -> torch.Tensor:
    """Inverse temperatures ``b: [T + 1]`` float64 from 0 to 1.

    ``"sigmoid"``: b_t proportional to sigmoid(sharpness (2t/T - 1)), shifted and scaled to [0, 1], which
    spends more steps near both ends (Grosse et al. 2013; Wu et al. 2017 use it with sharpness 4);
    ``"linear"``: t / T.  A sequence is taken as given (it must rise from 0 to 1).
    """
    if not isinstance(kind, str):
        betas = torch.as_tensor(kind, dtype=torch.float64).flatten()
        if betas.numel() < 2 or betas[0] != 0 or betas[-1] != 1 or (betas[1:] < betas[:-1]).any():
            raise ValueError(f"an explicit schedule must rise from 0 to 1, got {betas.tolist()[:5]}...")
        return betas
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if kind == "linear":
        return torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
    if kind == "sigmoid":
        if num_steps == 1:
            return torch.tensor([0.0, 1.0], dtype=torch.float64)
        s = torch.sigmoid(sharpness * torch.linspace(-1, 1, num_steps + 1, dtype=torch.float64))
        return (s - s[0]) / (s[-1] - s[0])
    raise ValueError(f"schedule must be one of {SCHEDULES} or a sequence of inverse temperatures, got {kind!r}")


@dataclasses.dataclass
class _Site:
    """A latent site's map between its constrained values ``[C, ..., B, ...]`` and its block of u ``[C, B, P_s]``."""
    name: str
    transform: torch.distributions.Transform
    frame: object                     # the data plate's frame
    data_axis: int                    # where the data dim sits in the unconstrained value
    moved_shape: torch.Size           # the unconstrained value with the data dim moved to position 1
    size: int                         # P_s


class AnnealingPath:
    """The geometric path from pi_0 (the guide or the prior) to p(x, z) for one batch of data, as a function
    of the chains' unconstrained latents ``u: [C, B, P]``.

    Built from one vectorized draw of the guide (:func:`pyro_vae.importance.importance_weights`, which also
    checks the model/guide contract); :attr:`start` holds the chains' starting positions (that draw, or a
    draw from the prior for ``base="prior"``, or the given ``start`` values).
    """

    def __init__(self, model: Callable, guide: Callable, *args, num_chains: int, base: str = "guide",
                 start: Optional[Dict[str, torch.Tensor]] = None, plate: str = "data",
                 max_plate_nesting: Optional[int] = None, compile: str = "auto",
                 note: Callable[[str], None] = lambda line: None, **kwargs):
        if base not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {base!r}")
        # recorded from its 20th call on: a path of T temperatures evaluates it about T (L + 1) times
        self.density = CompiledFunction(self._log_f_and_grad, compile, note, "the AIS gradient", argname="u",
                                        after=20)
        self.model, self.guide, self.args, self.kwargs = model, guide, args, kwargs
        self.base, self.plate, self.num_chains = base, plate, num_chains
        with torch.no_grad():
            weights = importance_weights(model, guide, *args, num_particles=num_chains, plate=plate,
                                         max_plate_nesting=max_plate_nesting, **kwargs)
        if weights.global_latents:
            raise ValueError(f"the model's latent site(s) {list(weights.global_latents)} sit outside the data plate "
                             f"{plate!r} (global latents): there is no per-point log p(x_n) to anneal to. Fix them "
                             f"first: pyro_vae.global_latents.condition_on(model, guide, values)")
        self.nesting, self.drawn = weights.max_plate_nesting, weights.sampled_trace
        self.vectorized_model = vectorized(model, num_chains, self.nesting)
        self.num_data = weights.num_data
        self.batch = weights.log_w.shape[1]
        self.sites: List[_Site] = []
        for name, site in latent_sites(weights.model_trace):
            support = site["fn"].support
            if support.is_discrete or site["infer"].get("enumerate"):
                raise ModelGuideContractError(
                    f"latent site {name!r} is discrete ({type(site['fn']).__name__}, support {support}): AIS moves the "
                    f"latents with Hamiltonian Monte Carlo, which needs continuous ones. Sum it out in the model (a "
                    f"mixture distribution), or estimate log p(x) by importance sampling (pyro_vae.log_likelihood)")
            transform = biject_to(support)
            u = transform.inv(weights.values[name])
            data_axis = u.dim() - transform.domain.event_dim + _data_frame(site, plate).dim
            moved = u.movedim(data_axis, 1)
            self.sites.append(_Site(name, transform, _data_frame(site, plate), data_axis, moved.shape,
                                    moved[0, 0].numel()))
        if not self.sites:
            raise ModelGuideContractError("the model has no latent sites: log p(x) needs no estimator")
        self.dim = sum(s.size for s in self.sites)                                          # P
        # the densities read here must be the ones importance sampling reads (no site-specific scales)
        u_guide = self.flatten(weights.values)
        with torch.no_grad():
            log_p, log_pi0, _ = self.components(u_guide, base="guide")
        if not torch.allclose((log_p - log_pi0).double(), weights.log_w.double(), rtol=1e-4, atol=1e-3):
            raise ModelGuideContractError(
                "the model's log-densities differ from those in its importance weights: a poutine.scale that "
                "differs between sites (a KL warm-up factor?) has no place in log p(x); evaluate without it")
        if start is not None:
            self.start = self.flatten(start)
        elif base == "prior":
            with torch.no_grad():
                prior = poutine.trace(self.vectorized_model).get_trace(*args, **kwargs)
            self.start = self.flatten({s.name: prior.nodes[s.name]["value"] for s in self.sites})
        else:
            self.start = u_guide

    # -- u [C, B, P] <-> the sites' values ------------------------------------------------------------

    def flatten(self, values: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Constrained values (each ``[C, ..., B, ...]``, or without the chain dim: then shared by every chain)
        -> ``u: [C, B, P]``."""
        blocks = []
        for s in self.sites:
            u = s.transform.inv(values[s.name])
            missing = len(s.moved_shape) - u.dim()
            if missing:                                  # no chain dim (an exact posterior draw): one per chain
                u = u.reshape((1,) * missing + u.shape)
                u = u.expand((self.num_chains,) + u.shape[1:])
            blocks.append(u.movedim(s.data_axis, 1).reshape(self.num_chains, self.batch, s.size))   # [C, B, P_s]
        return torch.cat(blocks, -1).detach()

    def constrain(self, u: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """``u: [C, B, P]`` -> (each site's value ``[C, ..., B, ...]``, log|dz/du| summed per point ``[C, B]``)."""
        values, log_det, start = {}, 0.0, 0
        for s in self.sites:
            block = u[..., start:start + s.size].reshape(s.moved_shape).movedim(1, s.data_axis)
            start += s.size
            z = s.transform(block)
            ld = s.transform.log_abs_det_jacobian(block, z)
            batch_dims = block.dim() - s.transform.domain.event_dim
            if ld.dim() > batch_dims:
                ld = ld.sum(tuple(range(batch_dims, ld.dim())))
            log_det = log_det + per_datapoint_sum(ld, s.frame, self.nesting, self.num_chains, self.batch,
                                                  self.num_data)
            values[s.name] = z
        return values, log_det

    # -- the densities ------------------------------------------------------------------------------

    def _sum(self, trace, latent_only: bool = False) -> torch.Tensor:
        total = 0.0
        for site in trace.nodes.values():
            if site["type"] == "sample" and not (latent_only and site["is_observed"]):
                total = total + per_datapoint_sum(masked_log_prob(site), _data_frame(site, self.plate), self.nesting,
                                                  self.num_chains, self.batch, self.num_data)
        return total

    def components(self, u: torch.Tensor, base: Optional[str] = None):
        """``(log p(x, z), log pi_0(z), log|dz/du|)``, each ``[C, B]``, at ``u: [C, B, P]`` (differentiable)."""
        values, log_det = self.constrain(u)
        with pyro.validation_enabled(False):
            model_trace = prune_subsample_sites(poutine.trace(poutine.replay(
                self.vectorized_model, trace=with_values(self.drawn, values))).get_trace(*self.args, **self.kwargs))
            log_p = self._sum(model_trace)
            if (base or self.base) == "prior":
                log_pi0 = self._sum(model_trace, latent_only=True)
            else:
                guide_trace = score_guide(self.guide, self.drawn, values, *self.args, num_particles=self.num_chains,
                                          max_plate_nesting=self.nesting, stop_params=False, **self.kwargs)
                log_pi0 = self._sum(guide_trace, latent_only=True)
        return log_p, log_pi0, log_det

    def _log_f_and_grad(self, u: torch.Tensor, beta: torch.Tensor):
        """``(log f_b, its gradient, log p, log pi_0)`` at ``u: [C, B, P]`` for the inverse temperature ``beta: []``
        (a tensor: one recording serves every temperature)."""
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            log_p, log_pi0, log_det = self.components(u)
            log_f = log_pi0 + log_det + beta * (log_p - log_pi0)
            grad, = torch.autograd.grad(log_f.sum(), u)
        return log_f.detach(), grad, log_p.detach(), log_pi0.detach()

    def log_density(self, beta: float):
        """log f_b(u) = (1 - b) log pi_0 + b log p(x, z) + log|dz/du| as an :data:`pyro_vae.hmc.LogDensity`:
        ``u: [C, B, P] -> (log f: [C, B], grad: [C, B, P], {"log_p", "log_pi0"}: [C, B])``.  The density and its
        gradient are recorded once per path and replayed (:mod:`pyro_vae.compiled`) unless ``compile="off"``."""
        beta = torch.tensor(beta, dtype=self.start.dtype, device=self.start.device)

        def fn(u: torch.Tensor):
            log_f, grad, log_p, log_pi0 = self.density(u, beta)
            return log_f, grad, {"log_p": log_p, "log_pi0": log_pi0}
        return fn


@dataclasses.dataclass
class AnnealingRun:
    """One batch annealed: ``log_w: [C, B]`` float64, mean acceptance probability ``[B]``, the step sizes
    used at each transition ``[T - 1, B]`` and the chains' final positions ``[C, B, P]``."""
    log_w: torch.Tensor
    acceptance: torch.Tensor
    step_sizes: torch.Tensor
    final: torch.Tensor


@torch.no_grad()
def anneal(path: AnnealingPath, betas: torch.Tensor, *, leapfrog_steps: int = 10, step_size: float = 0.05,
           step_sizes: Optional[torch.Tensor] = None, adapt_step_size: bool = True, target_accept: float = 0.65,
           adapt_rate: float = 0.02, start: Optional[torch.Tensor] = None, bar=None) -> AnnealingRun:
    """Run the chains of ``path`` through the inverse temperatures ``betas: [T + 1]`` (rising for AIS,
    falling for the reverse chains of BDMC, whose weights then estimate 1 / p(x)).

    ``step_sizes: [T - 1, B]`` fixes every transition's step size (no adaptation); otherwise they start at
    ``step_size`` and adapt per point (module docstring).  ``start: [C, B, P]`` overrides ``path.start``.
    """
    betas = betas.to(torch.float64)
    position = path.start if start is None else start
    state = HMCState.at(position, path.log_density(float(betas[0])))
    num_steps = betas.numel() - 1
    dtype, device = position.dtype, position.device
    eps = torch.full((path.batch,), float(step_size), dtype=dtype, device=device)                    # [B]
    log_w = torch.zeros(path.num_chains, path.batch, dtype=torch.float64, device=device)            # [C, B]
    accept_sum = torch.zeros(path.batch, dtype=torch.float64, device=device)
    used = torch.empty(max(num_steps - 1, 0), path.batch, dtype=dtype, device=device)               # [T - 1, B]
    for t in range(1, num_steps + 1):
        log_w += (betas[t] - betas[t - 1]) * (state.aux["log_p"].double() - state.aux["log_pi0"].double())
        if t < num_steps:
            target = path.log_density(float(betas[t]))
            state = HMCState.at(state.position, target)               # the gradient at the new temperature
            if step_sizes is not None:
                eps = step_sizes[t - 1].to(dtype)
            used[t - 1] = eps
            state, accept_prob = hmc_transition(state, target, eps.unsqueeze(0), leapfrog_steps)   # eps: [1, B]
            accept = accept_prob.mean(0)                                                            # [B]
            accept_sum += accept.double()
            if adapt_step_size and step_sizes is None:
                eps = torch.where(accept > target_accept, eps * (1 + adapt_rate), eps * (1 - adapt_rate))
                eps = eps.clamp(MIN_STEP, MAX_STEP)
        if bar is not None:
            bar.update(1)
    acceptance = accept_sum / max(num_steps - 1, 1) if num_steps > 1 else torch.full_like(accept_sum, math.nan)
    return AnnealingRun(log_w, acceptance, used, state.position)


def log_mean_exp(log_w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``log_w: [C, N]`` -> (log (1/C) sum_c w_c ``[N]``, its Monte-Carlo standard error ``[N]``, the
    effective sample size ``[N]``).  The standard error is the delta method for the log of a mean,
    sd(w) / (sqrt(C) mean(w)) = sqrt((C / ESS - 1) / (C - 1)), with the unbiased variance (C is small)."""
    log_w = log_w.double()
    num = log_w.shape[0]
    lse = torch.logsumexp(log_w, 0)
    ess = torch.exp(2 * lse - torch.logsumexp(2 * log_w, 0))
    se = ((num / ess - 1).clamp(min=0) / max(num - 1, 1)).sqrt() if num > 1 else torch.full_like(lse, math.nan)
    return lse - math.log(num), se, ess


@dataclasses.dataclass
class AISSummary:
    """AIS estimate of held-out log p(x) per data point (nats, higher is better).

    Attributes:
        log_likelihood: ``[N]`` log (1/C) sum_c w_c, a stochastic lower bound converging to log p(x_n).
        mean, stderr: their mean and standard error over data points (the error bar for comparing models).
        stderr_mc_per_point: ``[N]`` Monte-Carlo standard error of each estimate over its C chains (delta
            method; optimistic when one chain dominates, see ``effective_sample_size``); ``stderr_mc`` is that
            of ``mean``, sqrt(sum_n se_n^2) / N.
        effective_sample_size: ``[N]`` (sum w)^2 / sum w^2 over the chains, in [1, C].
        acceptance_rate: ``[N]`` mean HMC acceptance probability over transitions and chains.
        step_size: ``[N]`` the last step size of each point; ``step_size_range`` its min and max over the run.
        log_weights: ``[C, N]`` the chains' log weights (float64).
        num_chains, num_steps, leapfrog_steps, schedule, init: the settings.
    """
    log_likelihood: torch.Tensor
    mean: float
    stderr: float
    stderr_mc_per_point: torch.Tensor
    stderr_mc: float
    effective_sample_size: torch.Tensor
    acceptance_rate: torch.Tensor
    step_size: torch.Tensor
    step_size_range: Tuple[float, float]
    log_weights: torch.Tensor
    num_chains: int
    num_steps: int
    leapfrog_steps: int
    schedule: str
    init: str
    quantity: str = "log p(x)"

    def headline(self) -> str:
        return (f"{self.quantity} = {self.mean:.2f} ± {self.stderr:.2f} nats (AIS, {self.num_steps} steps x "
                f"{self.num_chains} chains from the {self.init}; Monte-Carlo error of the mean {self.stderr_mc:.3f})")

    def to_dict(self) -> Dict:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if torch.is_tensor(value):
                out[key] = value.tolist()
        return out


def summarize(log_w: torch.Tensor, acceptance: torch.Tensor, step_sizes: torch.Tensor, last_step: torch.Tensor,
              **settings) -> AISSummary:
    """An :class:`AISSummary` from ``log_w: [C, N]``, acceptance ``[N]``, all step sizes used and the last ones."""
    log_px, se, ess = log_mean_exp(log_w)
    n = log_px.shape[0]
    used = step_sizes if step_sizes.numel() else last_step
    return AISSummary(
        log_likelihood=log_px, mean=float(log_px.mean()),
        stderr=float(log_px.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan"),
        stderr_mc_per_point=se, stderr_mc=float(se.pow(2).sum().sqrt() / n), effective_sample_size=ess,
        acceptance_rate=acceptance, step_size=last_step, step_size_range=(float(used.min()), float(used.max())),
        log_weights=log_w, **settings)


def _describe(kind) -> str:
    return kind if isinstance(kind, str) else "explicit"


def ais_log_likelihood(model: Callable, guide: Callable, x: torch.Tensor, *args, num_chains: int = 16,
                       num_steps: int = 1000, schedule: Union[str, Sequence[float]] = "sigmoid",
                       leapfrog_steps: int = 10, target_accept: float = 0.65, init: str = "guide",
                       batch_size: int = 100, step_size: float = 0.05, adapt_step_size: bool = True,
                       adapt_rate: float = 0.02, plate: str = "data", progress: bool = False,
                       compile: str = "auto", **kwargs) -> AISSummary:
    """Annealed-importance-sampled ``log p(x_n)`` of every point of ``x: [N, ...]`` (module docstring).

    Args:
        model, guide: any Pyro programs on the contract (per-datapoint sites in ``pyro.plate(plate, ...)``);
            ``*args, **kwargs`` go to both, tensor keyword arguments with one row per point are batched.
        num_chains: C, independent chains per point (vectorized).
        num_steps: T, annealing steps (T + 1 inverse temperatures, T - 1 HMC transitions); T = 1 is
            importance sampling with C samples from pi_0.
        schedule: ``"sigmoid"``, ``"linear"`` or an explicit increasing sequence from 0 to 1 (then
            ``num_steps`` is its length - 1).
        leapfrog_steps: L per HMC transition.
        target_accept, adapt_rate, step_size, adapt_step_size: the per-point step-size adaptation (module
            docstring); ``step_size`` is where it starts.
        init: ``"guide"`` (pi_0 = q(z | x), the default) or ``"prior"`` (pi_0 = p(z): needs no guide to be
            any good, but more steps).
        batch_size: points annealed at once; memory grows with ``num_chains * batch_size``.
        compile: record each batch's density gradient once and replay it (``"auto"``; the same numbers, checked
            on its first replay), or not (``"off"``); ``"on"`` makes a model that cannot be recorded an error.

    Returns:
        :class:`AISSummary` (``log_likelihood: [N]`` float64 with its errors and HMC diagnostics).
    """
    if num_chains < 1 or leapfrog_steps < 1 or batch_size < 1:
        raise ValueError(f"num_chains, leapfrog_steps and batch_size must be >= 1, got {num_chains}, "
                         f"{leapfrog_steps}, {batch_size}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
    _check_x(x)
    betas = annealing_schedule(num_steps, schedule)
    passed = _set_size(model, guide, x, kwargs)
    n = x.shape[0]
    runs = []
    with eval_mode(model, guide):
        nesting, _ = program_structure(model, guide, x[:1], *args, plate=plate, **passed,
                                       **slice_data(kwargs, n, 0, 1))
        batches = range(0, n, batch_size)
        with tqdm(total=len(batches) * (betas.numel() - 1), desc="AIS log p(x)", unit="temperature",
                  disable=not progress, dynamic_ncols=True, **bar_settings()) as bar:
            for start in batches:
                path = AnnealingPath(model, guide, x[start:start + batch_size], *args, num_chains=num_chains,
                                     base=init, plate=plate, max_plate_nesting=nesting, compile=compile,
                                     note=bar.write if progress else (lambda line: None), **passed,
                                     **slice_data(kwargs, n, start, start + batch_size))
                with checked_once(model, guide):      # checked once, by the path's first run
                    run = anneal(path, betas, leapfrog_steps=leapfrog_steps, step_size=step_size,
                                 adapt_step_size=adapt_step_size, target_accept=target_accept,
                                 adapt_rate=adapt_rate, bar=bar)
                last = run.step_sizes[-1] if run.step_sizes.numel() else torch.full((path.batch,), step_size)
                runs.append((run, last))
    return summarize(torch.cat([r.log_w for r, _ in runs], 1), torch.cat([r.acceptance for r, _ in runs]),
                     torch.cat([r.step_sizes for r, _ in runs], 1), torch.cat([last.double() for _, last in runs]),
                     num_chains=num_chains, num_steps=betas.numel() - 1, leapfrog_steps=leapfrog_steps,
                     schedule=_describe(schedule), init=init)
