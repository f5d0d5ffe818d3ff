"""Distributions with one event dimension built in, for the VAE's hot path.

``Normal(loc, scale).to_event(1)`` is two distribution objects, and Pyro re-creates both at every plate
broadcast (``expand``) of every sample site on every step.  :class:`DiagonalNormal` is the same
distribution as one object with a direct ``log_prob``; its KL divergences to itself and to
``Normal(...).to_event(1)`` are registered, so ``TraceMeanField_ELBO`` still uses the closed form.
:class:`BernoulliVector` likewise replaces ``Bernoulli(logits=...).to_event(1)``.
Profiled on a toy VAE where compute is negligible, Pyro's per-step overhead (forward and backward of
``Trace_ELBO``) fell from 1.8 ms to 0.8 ms with these two.

Shape legend: ``...`` batch dims, ``Z`` the event dimension.
"""
import math

import torch
import torch.nn.functional as F
import pyro.distributions as dist
from torch.distributions import register_kl

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class DiagonalNormal(dist.TorchDistribution):
    """``N(z; loc, diag(scale^2))`` over the last dim: ``loc, scale: [..., Z]``, event_shape ``(Z,)``.

    Equal to ``Normal(loc, scale).to_event(1)`` (tested), reparameterized.
    """

    arg_constraints = {"loc": dist.constraints.real_vector,
                       "scale": dist.constraints.independent(dist.constraints.positive, 1)}
    support = dist.constraints.real_vector
    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args=None):
        if loc.shape != scale.shape:
            loc, scale = torch.broadcast_tensors(loc, scale)
        self.loc, self.scale = loc, scale
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        shape = torch.Size(batch_shape) + self.event_shape
        new.loc, new.scale = self.loc.expand(shape), self.scale.expand(shape)
        dist.TorchDistribution.__init__(new, torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return self.scale.pow(2)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + eps * self.scale

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return (-0.5 * ((value - self.loc) / self.scale).pow(2) - self.scale.log()).sum(-1) \
            - self.event_shape[0] * _HALF_LOG_2PI

    def entropy(self) -> torch.Tensor:
        return (self.scale.log() + 0.5 + _HALF_LOG_2PI).sum(-1)


class StandardNormal(DiagonalNormal):
    """``N(z; 0, I_Z)`` with ``log_prob = -|z|^2 / 2 - Z log(2 pi) / 2``, without touching loc and scale
    (three tensor ops instead of six, forward and backward, at every step).  ``loc, scale: [..., Z]``
    must be zeros and ones (what :class:`~pyro_vae.priors.StandardNormalPrior` passes)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return -0.5 * value.pow(2).sum(-1) - self.event_shape[0] * _HALF_LOG_2PI


def _kl_diagonal(loc_q, scale_q, loc_p, scale_p) -> torch.Tensor:
    """KL(N(loc_q, scale_q^2) || N(loc_p, scale_p^2)) summed over the last dim (closed form)."""
    ratio = (scale_q / scale_p).pow(2)
    return 0.5 * (ratio + ((loc_q - loc_p) / scale_p).pow(2) - 1 - ratio.log()).sum(-1)


@register_kl(DiagonalNormal, DiagonalNormal)
def _kl_diag_diag(q, p):
    return _kl_diagonal(q.loc, q.scale, p.loc, p.scale)


@register_kl(DiagonalNormal, dist.Independent)
def _kl_diag_independent(q, p):
    base = p.base_dist
    if p.reinterpreted_batch_ndims != 1 or not isinstance(base, torch.distributions.Normal):
        raise NotImplementedError   # e.g. a mixture prior: TraceMeanField_ELBO falls back to Monte Carlo
    return _kl_diagonal(q.loc, q.scale, base.loc, base.scale)


@register_kl(dist.Independent, DiagonalNormal)
def _kl_independent_diag(q, p):
    base = q.base_dist
    if q.reinterpreted_batch_ndims != 1 or not isinstance(base, torch.distributions.Normal):
        raise NotImplementedError
    return _kl_diagonal(base.loc, base.scale, p.loc, p.scale)




class BernoulliVector(dist.TorchDistribution):
    """``prod_d Bernoulli(x_d; sigmoid(logits_d))`` as one distribution with ``event_shape (D,)``.

    Equal to ``Bernoulli(logits=...).to_event(1)`` (tested), with a cheaper ``log_prob``: it sums the
    per-pixel terms before negating, one pass fewer over the ``[..., D]`` tensor, which is the largest
    tensor of a training step and of log-likelihood evaluation (profiled: ~8% of the time of
    importance-sampled log p(x) on a 784-dim VAE).  ``logits: [..., D]``.
    """

    arg_constraints = {"logits": dist.constraints.real_vector}
    support = dist.constraints.independent(dist.constraints.boolean, 1)

    def __init__(self, logits: torch.Tensor, validate_args=None):
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(BernoulliVector, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        super(BernoulliVector, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    @property
    def variance(self) -> torch.Tensor:
        return self.probs * (1 - self.probs)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(self.shape(sample_shape)))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits, value = torch.broadcast_tensors(self.logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)


class DiagonalNormalMixture(dist.MixtureSameFamily):
    """``p(z) = sum_c pi_c N(z; loc_c, diag(scale_c^2))``, the mixture and VampPrior priors' density.

    ``logits: [C]``, ``loc, scale: [C, Z]``; batch_shape ``()`` (plates broadcast it with ``expand``),
    event_shape ``(Z,)``.  Sampling, ``mean`` and ``variance`` are :class:`MixtureSameFamily`'s.

    ``log_prob`` is the same density computed as one matrix product: with ``a = scale^-2``,

        log pi_c + log N(z; loc_c, scale_c) = [z^2, z, 1] @ [-a_c / 2, loc_c a_c, b_c],
        b_c = log pi_c - sum_d (log scale_cd + loc_cd^2 a_cd / 2) - Z log(2 pi) / 2,

    a ``[..., 2Z+1] x [2Z+1, C]`` product then a logsumexp over C, instead of the ``[..., C, Z]``
    tensor that ``MixtureSameFamily`` broadcasts (K=500, Z=40, a 50-sample 1000-point evaluation
    chunk on 2 cores: 0.37 s instead of 32 s).  The expansion cancels: at ``scale ~ 0.01`` and
    ``|z| ~ 3`` its terms are ~10^6, and in float32 it is off by 0.6 nats.  So it is computed in
    float64 and returned in the value's dtype: tested equal to ``MixtureSameFamily`` to 1e-10 in
    float64 (values and gradients) and as close as ``MixtureSameFamily`` itself in float32 (1e-4).
    """

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, validate_args=None):
        if loc.dim() != 2 or loc.shape != scale.shape or logits.shape != loc.shape[:1]:
            raise ValueError(f"need logits [C], loc and scale [C, Z]; got {tuple(logits.shape)}, "
                             f"{tuple(loc.shape)}, {tuple(scale.shape)}")
        super().__init__(dist.Categorical(logits=logits), DiagonalNormal(loc, scale, validate_args=False),
                         validate_args=validate_args)
        self._params = (logits, loc, scale)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiagonalNormalMixture, _instance)
        super().expand(batch_shape, _instance=new)
        new._params = self._params
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, loc, scale = (t.double() for t in self._params)
        precision = scale.pow(-2)                                                            # [C, Z]
        log_norm = logits.log_softmax(-1) - scale.log().sum(-1) - loc.shape[-1] * _HALF_LOG_2PI  # [C]
        # one product [..., 2Z+1] x [2Z+1, C] gives log pi_c + log N(z; loc_c, scale_c) for every c
        weights = torch.cat([-0.5 * precision, loc * precision,
                             (log_norm - 0.5 * (loc.pow(2) * precision).sum(-1)).unsqueeze(-1)], -1)
        z = value.double()                                                                   # [..., Z]
        features = torch.cat([z.pow(2), z, torch.ones_like(z[..., :1])], -1)                # [..., 2Z+1]
        lp = torch.logsumexp(features @ weights.T, -1).to(value.dtype)                      # [...]
        return lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))
