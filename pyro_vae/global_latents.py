"""Models with global latent variables: latents shared by every data point (sample sites outside the data plate).

A model ``p(g) prod_n p(x_n, z_n | g)`` has no per-datapoint marginal log p(x_n): the points depend on each
other through g.  Importance sampling each point with S > 1 samples gives neither log p(x_n) nor a bound on
it (each point's weight carries a 1/N share of log p(g) / q(g), inside a log-sum-exp where those shares no
longer add up to the joint), so :func:`pyro_vae.log_likelihood` and :func:`pyro_vae.evaluate` refuse such
a model unless told which of two well-defined quantities to estimate (``globals=``):

* ``"condition"``: the conditional ``log p(x_n | g)`` at one value of g: by default the guide's mean
  (:func:`guide_means`: each global site at its mean given the sites drawn before it), or a given draw.
  Per point; importance sampling with the guide's per-point part as proposal, a stochastic lower bound that
  is consistent as S grows.
* ``"joint"``: ``log p(X)`` of the whole evaluated set X = (x_1, ..., x_N), by nested importance sampling
  ("importance sampling squared", Tran et al. 2013): outer draws g_j ~ q(g), j = 1..J, and per-point inner
  estimates given each g_j::

      p^(X) = (1/J) sum_j  [p(g_j) / q(g_j)]  prod_n p^(x_n | g_j),
      p^(x_n | g) = (1/S) sum_s p(x_n, z_ns | g) / q(z_ns | x_n, g),      z_ns ~ q(z | x_n, g)

  p^(X) is unbiased for p(X) (a product of independent unbiased estimates, weighted), so log p^(X) is a
  stochastic lower bound on log p(X), consistent as S and J grow.  It is reported as ``log p(X) / N`` with
  its Monte-Carlo standard error (the delta method over the J outer weights, which carry the inner
  estimates' noise too).  :func:`nested_log_marginal` is the reduction; the loop is
  :func:`pyro_vae.evaluation.joint_log_likelihood`.

Global sites that are not latent (a ``pyro.factor`` penalty, an observed global) need none of this: they
are constant across particles, so their 1/N shares add up exactly.

Shape legend: ``J`` outer draws of the globals, ``N`` data points.

References: Tran, Scharth, Pitt, Kohn, "Importance sampling squared for Bayesian inference in latent variable
models", arXiv:1309.3339 (2013); Rainforth et al., "On Nesting Monte Carlo Estimators", ICML 2018.
"""
import math
from typing import Callable, Dict, Sequence, Tuple

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

from .importance import latent_sites

GLOBALS_OPTIONS = ("condition", "joint")


def refusal(names: Sequence[str], plate: str, num_samples: int) -> ValueError:
    """The error for per-point importance sampling of a model with global latents ``names``."""
    return ValueError(
        f"the model's latent site(s) {list(names)} sit outside the data plate {plate!r}: they are global, shared by "
        f"all data points, so per-point importance sampling with S = {num_samples} > 1 samples gives neither "
        f"log p(x_n) nor a bound on it. Choose what to estimate: globals='condition' for log p(x_n | g) at the "
        f"guide's mean of g (or at global_values={{...}}), or globals='joint' for log p(X) of the whole set by "
        f"nested importance sampling, reported as log p(X)/N (pyro-vae evaluate --globals condition|joint)")


def condition_on(model: Callable, guide: Callable, values: Dict[str, torch.Tensor]) -> Tuple[Callable, Callable]:
    """The model and guide with the global sites ``values`` fixed and hidden from traces: their importance
    weights are ``log p(x_n, z_n | g) - log q(z_n | x_n, g)`` (no log p(g) or log q(g) term)."""
    names = list(values)
    return (poutine.block(poutine.condition(model, data=values), hide=names),
            poutine.block(poutine.condition(guide, data=values), hide=names))


class _AtMean(Messenger):
    """Sets each named sample site to its distribution's mean (given the values already set upstream)."""

    def __init__(self, names: Sequence[str]):
        super().__init__()
        self.names = set(names)

    def _pyro_sample(self, msg):
        if msg["name"] in self.names and not msg["is_observed"]:
            fn = msg["fn"]
            try:
                mean = fn.mean
            except NotImplementedError:
                raise ValueError(f"the guide's distribution of global site {msg['name']!r} "
                                 f"({type(fn).__name__}) has no mean: pass global_values={{...}}") from None
            if not bool(fn.support.check(mean).all()):
                raise ValueError(f"the mean of global site {msg['name']!r} is outside its support (a discrete "
                                 f"latent?): pass a draw as global_values={{...}}")
            msg["value"] = mean


@torch.no_grad()
def guide_means(guide: Callable, names: Sequence[str], *args, **kwargs) -> Dict[str, torch.Tensor]:
    """The guide's mean of each global site in ``names``, each given the means of the sites before it."""
    with poutine.block(), torch.random.fork_rng():
        trace = poutine.trace(_AtMean(names)(guide)).get_trace(*args, **kwargs)
    return {name: trace.nodes[name]["value"] for name in names}


@torch.no_grad()
def draw_globals(model: Callable, guide: Callable, names: Sequence[str], *args,
                 **kwargs) -> Tuple[Dict[str, torch.Tensor], float]:
    """One draw g ~ q(g) of the global sites ``names`` with its outer log weight ``log p(g) - log q(g)``
    (float64; the guide and model are run on the given arguments, e.g. a batch of the data)."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    log_ratio = 0.0
    for sign, trace in ((1.0, model_trace), (-1.0, guide_trace)):
        for name, site in latent_sites(trace):
            if name in names:
                log_ratio += sign * float(site["fn"].log_prob(site["value"]).double().sum())
    return {name: guide_trace.nodes[name]["value"] for name in names}, log_ratio


def nested_log_marginal(outer_log_ratio: torch.Tensor, inner_log_px: torch.Tensor) -> Tuple[float, float, float]:
    """``log p^(X)`` from outer log weights ``log p(g_j) - log q(g_j): [J]`` and inner per-point estimates
    ``log p^(x_n | g_j): [J, N]``: returns ``(log p^(X), its Monte-Carlo standard error, ESS of the J outer
    weights)``, with the standard error by the delta method, sqrt(1/ESS - 1/J) (optimistic when ESS is small)."""
    if outer_log_ratio.dim() != 1 or inner_log_px.dim() != 2 or inner_log_px.shape[0] != outer_log_ratio.shape[0]:
        raise ValueError(f"need outer [J] and inner [J, N], got {tuple(outer_log_ratio.shape)} and "
                         f"{tuple(inner_log_px.shape)}")
    log_w = outer_log_ratio.double() + inner_log_px.double().sum(1)                  # [J]
    num = log_w.shape[0]
    ess = float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)))
    return float(torch.logsumexp(log_w, 0) - math.log(num)), math.sqrt(max(1 / ess - 1 / num, 0.0)), ess
