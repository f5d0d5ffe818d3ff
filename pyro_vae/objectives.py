"""Training objectives: ``pyro.infer.ELBO`` instances chosen by name.

Every objective here is a ``pyro.infer.ELBO``, so it works in a plain ``pyro.infer.SVI`` loop and in
:mod:`pyro_vae.training`, on any model/guide pair.  Its ``loss`` is minimised (lower is better) and
equals minus the bound summed over the data plate, scaled to the full data set by the plate.

=============  ============================================================================================
name           estimator of the per-datapoint bound (higher is better), with z_k ~ q(z | x)
=============  ============================================================================================
``elbo``       Trace_ELBO: (1/K) sum_k [log p(x, z_k) - log q(z_k | x)]   (Monte-Carlo KL; any prior)
``meanfield``  TraceMeanField_ELBO: E_q[log p(x | z)] - KL(q(z | x) || p(z)), with the KL in closed
               form where Pyro has one (e.g. Gaussian q and standard normal p); lower-variance gradients.
=============  ============================================================================================

K (``num_particles``) particles are vectorized in an outer plate (no Python loop over K).

Reference: Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
"""
import math
from collections import OrderedDict
from typing import Callable, Optional, Tuple

import torch
from pyro.infer import (ELBO, JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO,
                        Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO)

from .importance import (ImportanceWeights, ModelGuideContractError, guess_max_plate_nesting,
                         importance_weights, latent_sites, masked_log_prob, per_datapoint_sum,
                         score_guide)
from .wording import usage_error

OBJECTIVES = ("elbo", "meanfield", "iwae", "miwae", "ciwae", "piwae")


def build_objective(name: str, num_particles: int = 1, gradient: str = "standard", num_outer: int = 1,
                    ciwae_beta: float = 0.5) -> ELBO:
    """The objective called ``name`` (one of :data:`OBJECTIVES`).

    ``num_particles`` is K (per group for miwae/piwae, which draw ``num_outer * K``); ``gradient`` is the
    guide-gradient estimator of iwae/miwae (standard, stl, dreg).
    """
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    if gradient != "standard" and name not in ("iwae", "miwae"):
        raise usage_error(ValueError, f"gradient={gradient!r} applies to the iwae and miwae losses, not to {name!r}",
                          f"--gradient {gradient} applies to the iwae and miwae losses, not to {name!r}")
    if num_outer != 1 and name not in ("miwae", "piwae"):
        raise usage_error(ValueError, f"num_outer applies to the miwae and piwae losses, not to {name!r}",
                          f"--num-outer applies to the miwae and piwae losses, not to {name!r}")
    vectorize = num_particles > 1
    if name == "elbo":
        return Trace_ELBO(num_particles=num_particles, vectorize_particles=vectorize)
    if name == "meanfield":
        return TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=vectorize)
    if name == "iwae":
        return IWAE_ELBO(num_particles, gradient)
    if name == "miwae":
        return MIWAE_ELBO(num_particles, num_outer, gradient)
    if name == "ciwae":
        return CIWAE_ELBO(num_particles, ciwae_beta)
    if name == "piwae":
        return PIWAE_ELBO(num_particles, num_outer)
    raise ValueError(f"unknown loss {name!r}; choose one of {OBJECTIVES}")


# -- the importance-weighted family -------------------------------------------------------------------
#
# Shape legend: K particles per group, M groups (outer particles), N data points in the batch.
# All of these reduce the per-datapoint log weights log_w [M*K, N] of pyro_vae.importance; the plate's
# subsample scale N_total / B is applied after the reduction, so a subsampled loss is exactly
# (N_total / B) times minus the sum of per-datapoint bounds.

GRADIENTS = ("standard", "stl", "dreg")
# Pyro's estimators of the ELBO itself (exact types: a subclass such as TraceTailAdaptive_ELBO is another objective)
_ELBO_ESTIMATORS = (Trace_ELBO, TraceMeanField_ELBO, TraceGraph_ELBO, TraceEnum_ELBO, JitTrace_ELBO,
                    JitTraceMeanField_ELBO, JitTraceGraph_ELBO, JitTraceEnum_ELBO)


def bound_name(objective: ELBO) -> str:
    """The name of the bound an objective's loss is minus of, for reports: ``"ELBO"`` for Pyro's ELBO
    estimators (any number of particles: they estimate the same bound), ``"IWAE_5"``, ``"MIWAE_3,5"``, ...;
    another ``pyro.infer.ELBO`` is named by its class."""
    name = getattr(objective, "bound_name", None)
    if isinstance(name, str):
        return name
    if type(objective) in _ELBO_ESTIMATORS:
        return "ELBO"
    return f"{type(objective).__name__} bound"


def _program_key(fn: Callable) -> tuple:
    """The objects that identify a program: a bound method by its instance and function (attribute access
    makes a new bound-method object every time), anything else by itself."""
    owner = getattr(fn, "__self__", None)
    return (owner, fn.__func__) if owner is not None and hasattr(fn, "__func__") else (fn,)


class _ImportanceWeightedELBO(ELBO):
    """Shared machinery: weights, scaling, ``loss`` (no grad), ``differentiable_loss``, ``loss_and_grads``.

    Subclasses define :meth:`per_datapoint_bound` (``log_w [P, N] -> [N]``, higher is better),
    :attr:`bound_name` and :attr:`pools_particles`, and may override :meth:`_surrogate` for gradient
    estimators other than differentiating the bound itself.
    """

    _CACHE_SIZE = 8

    def __init__(self, num_particles: int, gradient: str = "standard", plate: str = "data",
                 max_plate_nesting: Optional[int] = None):
        if num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, got {num_particles}")
        if gradient not in GRADIENTS:
            raise ValueError(f"unknown gradient estimator {gradient!r}; choose one of {GRADIENTS}")
        super().__init__(num_particles=num_particles, vectorize_particles=True)
        self.gradient, self.plate = gradient, plate
        self._fixed_nesting = max_plate_nesting
        # plate nesting per (model, guide): found by one extra run the first time a pair is seen, then reused
        # (holding the programs, so an id is never reused by another program while its entry lives)
        self._nesting_cache: "OrderedDict[tuple, Tuple[tuple, int]]" = OrderedDict()

    def per_datapoint_bound(self, log_w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    bound_name = "importance-weighted bound"

    @property
    def pools_particles(self) -> bool:
        """Whether the bound averages the weights of several particles inside a log (then a latent shared by
        all data points has no per-point weight, and the bound of a batch is not a bound on log p(x))."""
        return self.num_particles > 1

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("importance-weighted objectives draw all particles at once; see _weights")

    def _max_plate_nesting(self, model, guide, args, kwargs) -> int:
        if self._fixed_nesting is not None:
            return self._fixed_nesting
        programs = _program_key(model) + _program_key(guide)
        key = tuple(id(p) for p in programs)
        cached = self._nesting_cache.get(key)
        if cached is not None and all(a is b for a, b in zip(cached[0], programs)):
            return cached[1]
        nesting = guess_max_plate_nesting(model, guide, *args, **kwargs)
        self._nesting_cache[key] = (programs, nesting)
        while len(self._nesting_cache) > self._CACHE_SIZE:
            self._nesting_cache.popitem(last=False)
        return nesting

    def _weights(self, model, guide, args, kwargs, stop_guide_params: bool) -> ImportanceWeights:
        iw = importance_weights(model, guide, *args, num_particles=self.num_particles, plate=self.plate,
                                max_plate_nesting=self._max_plate_nesting(model, guide, args, kwargs),
                                stop_guide_params=stop_guide_params, **kwargs)
        if iw.global_latents and self.pools_particles:
            raise ModelGuideContractError(
                f"{self.bound_name} averages the weights of several particles per data point inside a log, but "
                f"the model's latent site(s) {list(iw.global_latents)} sit outside the data plate {self.plate!r} "
                f"(shared by all points): per-point importance-weighted bounds of a batch are then not a bound "
                f"on log p(x). Train with loss='elbo' or 'meanfield' (exact for global latents), or with one "
                f"particle per group")
        return iw

    def loss(self, model, guide, *args, **kwargs) -> float:
        """Minus the bound summed over the batch and scaled to the full data set (lower is better)."""
        with torch.no_grad():
            iw = self._weights(model, guide, args, kwargs, stop_guide_params=False)
            return -iw.scale * self.per_datapoint_bound(iw.log_w).sum().item()

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The loss as a tensor whose gradient is the chosen estimator (value: minus the scaled bound)."""
        iw = self._weights(model, guide, args, kwargs, stop_guide_params=self.gradient in ("stl", "dreg"))
        _check_reparameterized(iw.guide_trace, type(self).__name__)
        bound = self.per_datapoint_bound(iw.log_w).sum()
        surrogate = self._surrogate(iw)
        loss = -iw.scale * bound
        if surrogate is None:
            return loss
        surrogate = -iw.scale * surrogate
        return loss.detach() + (surrogate - surrogate.detach())

    def _surrogate(self, iw: ImportanceWeights) -> Optional[torch.Tensor]:
        """A scalar whose gradient is the estimator's (None: the bound's own gradient)."""
        return None

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()


def _check_reparameterized(guide_trace, name: str) -> None:
    for site_name, site in latent_sites(guide_trace):
        if not site["fn"].has_rsample:
            raise ModelGuideContractError(
                f"{name} needs reparameterized guide sites, but {site_name!r} ({type(site['fn']).__name__}) "
                f"has no rsample; use Trace_ELBO (score-function gradients) for discrete latents")


def _reshape_for_site(weights: torch.Tensor, site, plate: str, max_plate_nesting: int,
                      event_dim: int) -> torch.Tensor:
    """Broadcast per-particle, per-datapoint factors ``[P, N]`` onto a site value ``[P, ..., N, ..., event]``."""
    frame = next((f for f in site["cond_indep_stack"] if f.name == plate), None)
    if frame is None:
        raise ModelGuideContractError(
            f"DReG weights each datapoint's particles; latent site {site['name']!r} is outside the "
            f"{plate!r} plate (a global latent): use gradient='standard' or 'stl'")
    shape = [1] * (max_plate_nesting + 1)
    shape[0] = weights.shape[0]
    shape[max_plate_nesting + 1 + frame.dim] = weights.shape[1]
    return weights.reshape(shape + [1] * event_dim)


def _scale_use_gradients(iw: ImportanceWeights, factor: Callable[[str], torch.Tensor], plate: str) -> None:
    """Multiply the gradient that reaches each use of a latent site's value (``iw.values``: what the model
    and the re-scored log q read, not the sampling path) by ``factor(site name): [P, N]``.  A hierarchical
    guide's z1 then gets the factor once on its own uses and, unscaled, what z2's sampling path passes on."""
    for name, value in iw.values.items():
        if not value.requires_grad:
            continue
        site = iw.guide_trace.nodes[name]
        f = _reshape_for_site(factor(name), site, plate, iw.max_plate_nesting, len(site["fn"].event_shape))
        value.register_hook(lambda grad, f=f: grad * f)


class MIWAE_ELBO(_ImportanceWeightedELBO):
    r"""Multiply importance-weighted bound (Rainforth et al. 2018), with IWAE and the ELBO as special cases:

    .. math::

        \mathrm{MIWAE}_{M,K}(x) = \frac{1}{M} \sum_{m=1}^{M} \log \frac{1}{K} \sum_{k=1}^{K}
            \frac{p(x, z_{mk})}{q(z_{mk} \mid x)}, \qquad z_{mk} \sim q(z \mid x),

    ``log_w: [M*K, N] -> [N]``, higher is better, ``<= log p(x)``.  M = 1 is IWAE_K (Burda et al. 2016);
    K = 1 is the ELBO averaged over M particles.  ``loss = -(N_total / B) * sum_n MIWAE(x_n)``, the same
    scaling as ``Trace_ELBO``, so the two are comparable.

    Gradient estimators for the guide (the model always gets the reparameterized gradient):

    * ``"standard"``: differentiate the bound (reparameterized).  Its signal-to-noise ratio for the guide
      decays as K grows (Rainforth et al. 2018).
    * ``"stl"``: "sticking the landing" (Roeder et al. 2017): log q evaluated with the guide's
      parameters stopped, dropping the score term.  Unbiased for K = 1 only.
    * ``"dreg"``: doubly reparameterized (Tucker et al. 2019, eq. 8): guide gradient
      ``sum_k w~_k^2 d log w_k / dz_k dz_k/dphi`` with w~ the normalized weights; unbiased for any K,
      with lower variance.  With several latent sites z = (z1, z2, ...) the same formula holds with
      d/dz over every site and dz/dphi the whole sampling path (z2 = f(z1, eps2; phi)).  Needs every latent
      site inside the data plate.

    STL and DReG stop the guide's *parameters* in log q, not its inputs (the sampled upstream latents):
    the guide is run again on its samples under :class:`~pyro_vae.importance.stopped_parameters`, so
    any reparameterized guide works (several latent sites, transformed distributions, a user's module).
    All estimators need reparameterized guide sites; particles are vectorized in an outer plate.

    References: [1] Burda, Grosse, Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    [2] Rainforth et al., "Tighter Variational Bounds are Not Necessarily Better", ICML 2018.
    [3] Roeder, Wu, Duvenaud, "Sticking the Landing", NeurIPS 2017.
    [4] Tucker, Lawson, Gu, Maddison, "Doubly Reparameterized Gradient Estimators", ICLR 2019.
    """

    def __init__(self, num_inner: int = 1, num_outer: int = 1, gradient: str = "standard", plate: str = "data",
                 max_plate_nesting: Optional[int] = None):
        if num_inner < 1 or num_outer < 1:
            raise ValueError(f"num_inner and num_outer must be >= 1, got {num_inner}, {num_outer}")
        super().__init__(num_inner * num_outer, gradient, plate, max_plate_nesting)
        self.num_inner, self.num_outer = num_inner, num_outer

    @property
    def bound_name(self) -> str:
        if self.num_inner == 1:
            return "ELBO"
        return f"IWAE_{self.num_inner}" if self.num_outer == 1 else f"MIWAE_{self.num_outer},{self.num_inner}"

    @property
    def pools_particles(self) -> bool:
        return self.num_inner > 1

    def _groups(self, log_w: torch.Tensor) -> torch.Tensor:
        return log_w.reshape(self.num_outer, self.num_inner, log_w.shape[-1])        # [M, K, N]

    def per_datapoint_bound(self, log_w):
        return (torch.logsumexp(self._groups(log_w), 1) - math.log(self.num_inner)).mean(0)   # [N]

    def _surrogate(self, iw):
        if self.gradient != "dreg":
            return None
        if len({iw.guide_factors[name] for name in iw.values}) > 1:
            raise ModelGuideContractError(
                f"DReG needs the same factor on every guide site's log q, got {iw.guide_factors} (a per-site KL "
                f"weight breaks the doubly reparameterized identity along z2 = f(z1)); use gradient='standard'")
        with torch.no_grad():
            w = torch.softmax(self._groups(iw.log_w), 1).reshape(iw.log_w.shape)      # [M*K, N], per group
        # guide: w~ on the loss below times ((1 - c) + c w~) at the uses of z, with c the factor a site's log q
        # carries in the weights: w~^2 d log w / dz for c = 1; under KL warm-up's tempered weights (c = beta)
        # the doubly reparameterized identity gives ((1 - beta) w~ + beta w~^2) d log w / dz
        _scale_use_gradients(iw, lambda name: (1 - iw.guide_factors[name]) + iw.guide_factors[name] * w, self.plate)
        return (w * iw.log_w).sum() / self.num_outer       # model: w~ d log w / d theta


class IWAE_ELBO(MIWAE_ELBO):
    r"""The importance-weighted bound (Burda et al. 2016) as a ``pyro.infer.ELBO``:

    .. math::

        \mathrm{IWAE}_K(x) = \mathbb{E}\Big[\log \frac{1}{K} \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k \mid x)}\Big]
        \le \mathrm{IWAE}_{K+1}(x) \le \log p(x), \qquad \mathrm{IWAE}_1 = \mathrm{ELBO}.

    ``log_w: [K, N] -> [N]`` (higher is better); ``loss = -(N_total / B) sum_n IWAE_K(x_n)`` (lower is
    better), scaled like ``Trace_ELBO``.  ``gradient`` is ``"standard"``, ``"stl"`` or ``"dreg"``
    (see :class:`MIWAE_ELBO`).  Works in a plain ``pyro.infer.SVI`` loop::

        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), IWAE_ELBO(num_particles=5, gradient="dreg"))
    """

    def __init__(self, num_particles: int = 1, gradient: str = "standard", plate: str = "data",
                 max_plate_nesting: Optional[int] = None):
        super().__init__(num_particles, 1, gradient, plate, max_plate_nesting)


class CIWAE_ELBO(_ImportanceWeightedELBO):
    r"""Combination IWAE (Rainforth et al. 2018): a convex combination of the ELBO and IWAE_K,

    .. math::

        \mathrm{CIWAE}_\beta(x) = \beta\, \frac{1}{K}\sum_k \log w_k + (1 - \beta)\, \log \frac{1}{K}\sum_k w_k,

    ``log_w: [K, N] -> [N]``, higher is better, a lower bound on log p(x) for beta in [0, 1]: the ELBO
    term keeps the guide's gradient signal strong, the IWAE term keeps the bound tight.
    Standard (reparameterized) gradient only.
    """

    def __init__(self, num_particles: int = 1, beta: float = 0.5, plate: str = "data",
                 max_plate_nesting: Optional[int] = None):
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"CIWAE needs beta in [0, 1], got {beta}")
        super().__init__(num_particles, "standard", plate, max_plate_nesting)
        self.beta = beta

    @property
    def bound_name(self) -> str:
        return "ELBO" if not self.pools_particles else f"CIWAE_{self.num_particles}(beta={self.beta:g})"

    @property
    def pools_particles(self) -> bool:
        return self.num_particles > 1 and self.beta < 1

    def per_datapoint_bound(self, log_w):
        iwae = torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])
        return self.beta * log_w.mean(0) + (1 - self.beta) * iwae


class PIWAE_ELBO(MIWAE_ELBO):
    r"""Partially importance-weighted (Rainforth et al. 2018): the model is trained on the tight
    IWAE_{M K} bound and the guide on MIWAE_{M, K}, whose gradient has a better signal-to-noise ratio.

    ``loss`` reports minus IWAE_{M K} (the model's objective; ``log_w: [M*K, N] -> [N]``).  With a
    VampPrior the encoder is part of the model too (it defines p(z)): it then receives the IWAE_{M K}
    gradient through the prior and the MIWAE gradient through the guide.

    The guide's gradient is the standard reparameterized MIWAE gradient, split as the derivation does:

    * path term ``sum_mk (w~_mk / M) d log w_mk / dz dz/dphi`` (w~ normalized within group m), with log q's
      parameters stopped: the gradient reaching each use of z is replaced by dMIWAE/dz (one extra backward
      pass through the model, to the sampled values only);
    * score term ``-sum_mk (w~_mk / M) d log q(z_mk) / dphi`` at fixed z (a hierarchical guide's q(z2 | z1)
      scored at the fixed z1).

    Any reparameterized guide works (several latent sites, transformed distributions); global latents do not
    (the weights are per data point).
    """

    def __init__(self, num_inner: int = 1, num_outer: int = 1, plate: str = "data",
                 max_plate_nesting: Optional[int] = None):
        super().__init__(num_inner, num_outer, "standard", plate, max_plate_nesting)

    @property
    def bound_name(self) -> str:
        return "ELBO" if self.num_particles == 1 else f"IWAE_{self.num_particles}"

    @property
    def pools_particles(self) -> bool:
        return self.num_particles > 1

    def per_datapoint_bound(self, log_w):
        return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])               # IWAE_{MK}

    def differentiable_loss(self, model, guide, *args, **kwargs):
        iw = self._weights(model, guide, args, kwargs, stop_guide_params=True)    # guide enters via z only
        _check_reparameterized(iw.guide_trace, type(self).__name__)
        if not any(value.requires_grad for value in iw.values.values()):
            raise ModelGuideContractError("PIWAE_ELBO needs a guide whose samples depend on trainable parameters")
        log_w = iw.log_w                                                            # [M*K, N]
        model_loss = -iw.scale * self.per_datapoint_bound(log_w).sum()
        miwae_loss = -iw.scale * super().per_datapoint_bound(log_w).sum()
        uses = [value for value in iw.values.values() if value.requires_grad]
        grads = torch.autograd.grad(miwae_loss, uses, retain_graph=True)
        for value, grad in zip(uses, grads):
            value.register_hook(lambda _, grad=grad: grad)                  # guide path: dMIWAE/dz at each use
        with torch.no_grad():
            w = torch.softmax(self._groups(log_w), 1).reshape(log_w.shape) / self.num_outer    # w~ / M
        log_q = _guide_log_density(guide, iw, args, kwargs, self.plate)             # [M*K, N], z fixed
        score_loss = iw.scale * (w * log_q).sum()
        return model_loss + (score_loss - score_loss.detach())


def _guide_log_density(guide: Callable, iw: ImportanceWeights, args, kwargs, plate: str) -> torch.Tensor:
    """sum over guide sites of c log q(z | x) per particle and datapoint ``[P, N]`` at the drawn z held
    fixed (gradient reaches the guide's parameters only; :func:`~pyro_vae.importance.score_guide`), with c the
    factor each site carries inside the weights (the KL warm-up beta, else 1)."""
    fixed = {name: value.detach() for name, value in iw.values.items()}
    trace = score_guide(guide, iw.sampled_trace, fixed, *args, num_particles=iw.log_w.shape[0],
                        max_plate_nesting=iw.max_plate_nesting, stop_params=False, **kwargs)
    total = 0.0
    for name, site in latent_sites(trace):
        frame = next((f for f in site["cond_indep_stack"] if f.name == plate), None)
        total = total + iw.guide_factors[name] * per_datapoint_sum(
            masked_log_prob(site), frame, iw.max_plate_nesting, *iw.log_w.shape, iw.num_data)
    return total
