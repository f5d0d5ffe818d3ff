"""Pyro's ``Trace_ELBO`` and ``TraceMeanField_ELBO`` without ``.item()``, term for term, so that a step of either
can be recorded (:mod:`pyro_vae.compiled`).

Pyro's own losses add the per-site ``log_prob_sum`` values as Python floats (``.item()``, float64) for the value
and differentiate a surrogate tensor; the value returned is ``float32(sum / K) + (surrogate - surrogate.item())``.
The twins keep the float sums as detached float64 tensors and return ``loss.float() + (surrogate -
surrogate.detach())``: the same value and the same surrogate, so the same estimator and gradient, bit for bit
(checked by :class:`pyro_vae.compiled.Recorder` on every recording's first replay, and by the tests).  A latent
site without reparameterized samples (a score-function term) is refused with :class:`CompileError`.
"""
from typing import Callable, Tuple

import torch
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import is_identically_zero
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask


class CompileError(RuntimeError):
    """A step cannot be compiled (with ``compile="on"``); the message says why."""


def _trace_elbo_particle(model_trace, guide_trace) -> Tuple[torch.Tensor, torch.Tensor]:
    """``Trace_ELBO._differentiable_loss_particle`` with the float sums kept as float64 tensors."""
    elbo_particle = torch.zeros((), dtype=torch.float64)
    surrogate_elbo_particle = 0
    for site in model_trace.nodes.values():
        if site["type"] == "sample":
            elbo_particle = elbo_particle + site["log_prob_sum"].detach().double()
            surrogate_elbo_particle = surrogate_elbo_particle + site["log_prob_sum"]
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample":
            _, score_function_term, entropy_term = site["score_parts"]
            if not is_identically_zero(score_function_term):
                raise CompileError(f"the guide's latent site {name!r} has no reparameterized samples (a discrete "
                                   f"latent?): its score-function gradient is not recorded")
            elbo_particle = elbo_particle - site["log_prob_sum"].detach().double()
            if not is_identically_zero(entropy_term):
                surrogate_elbo_particle = surrogate_elbo_particle - entropy_term.sum()
    return -elbo_particle, -surrogate_elbo_particle


def _mean_field_particle(model_trace, guide_trace) -> Tuple[torch.Tensor, torch.Tensor]:
    """``TraceMeanField_ELBO._differentiable_loss_particle`` with ``.item()`` as a detached float64 tensor."""
    elbo_particle = 0
    for name, model_site in model_trace.nodes.items():
        if model_site["type"] != "sample":
            continue
        if model_site["is_observed"]:
            elbo_particle = elbo_particle + model_site["log_prob_sum"]
            continue
        guide_site = guide_trace.nodes[name]
        if not is_identically_zero(guide_site["score_parts"].score_function):
            raise CompileError(f"the guide's latent site {name!r} has no reparameterized samples (a discrete "
                               f"latent?): TraceMeanField_ELBO needs reparameterized latents")
        try:
            kl_qp = kl_divergence(guide_site["fn"], model_site["fn"])
            kl_qp = scale_and_mask(kl_qp, scale=guide_site["scale"], mask=guide_site["mask"])
            if torch.is_tensor(kl_qp):
                kl_qp_sum = kl_qp.sum()
            else:
                kl_qp_sum = kl_qp * torch.Size(guide_site["fn"].batch_shape).numel()
            elbo_particle = elbo_particle - kl_qp_sum
        except NotImplementedError:
            elbo_particle = elbo_particle + model_site["log_prob_sum"] - guide_site["score_parts"].entropy_term.sum()
    for name, guide_site in guide_trace.nodes.items():
        if guide_site["type"] == "sample" and name not in model_trace.nodes:   # auxiliary sites of the guide
            elbo_particle = elbo_particle - guide_site["score_parts"].entropy_term.sum()
    return -elbo_particle.detach().double(), -elbo_particle


def _pyro_loss(elbo: ELBO, particle: Callable, model, guide, *args, **kwargs) -> torch.Tensor:
    """``Trace_ELBO.differentiable_loss``: value ``float32(sum of float64 terms / K)``, gradient the surrogate's."""
    loss = torch.zeros((), dtype=torch.float64)
    surrogate_loss = 0.0
    for model_trace, guide_trace in elbo._get_traces(model, guide, args, kwargs):
        loss_particle, surrogate_loss_particle = particle(model_trace, guide_trace)
        surrogate_loss += surrogate_loss_particle / elbo.num_particles
        loss = loss + loss_particle / elbo.num_particles
    return loss.to(surrogate_loss.dtype) + (surrogate_loss - surrogate_loss.detach())


def recordable_loss(objective: ELBO) -> Callable:
    """``loss(model, guide, *args, **kwargs) -> tensor``: the objective's ``differentiable_loss``, or for Pyro's
    ``Trace_ELBO`` / ``TraceMeanField_ELBO`` a twin with the same value and gradient and no ``.item()``."""
    if type(objective) is TraceMeanField_ELBO:
        return lambda *args, **kwargs: _pyro_loss(objective, _mean_field_particle, *args, **kwargs)
    if type(objective) is Trace_ELBO:
        return lambda *args, **kwargs: _pyro_loss(objective, _trace_elbo_particle, *args, **kwargs)
    return objective.differentiable_loss
