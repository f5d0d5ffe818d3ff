"""Likelihoods p(x | z): turn a decoder's output into a distribution over x.

A decoder maps a latent code to one real number per data dimension; a likelihood turns those numbers into
a Pyro distribution with one event dimension of size D, so the model can write::

    pyro.sample("x", likelihood(decoder(z)), obs=x)

Shape legend: ``N`` data points, ``K`` particles (any number of leading batch dims is allowed),
``D`` data dimension.  ``decoder_out: [..., D] -> distribution with batch_shape [...], event_shape [D]``.

Each likelihood also *validates* data before training starts (:meth:`Likelihood.validate`), because
a Bernoulli log-density evaluated at 0.5 or 1.3 is a finite, silently wrong number, not an error.

===========================  ==================================================  =====================
name                          p(x | z)                                             data it accepts
===========================  ==================================================  =====================
``bernoulli``                 prod_d Bern(x_d; sigmoid(f_d(z)))                    exactly 0 or 1
``continuous-bernoulli``      prod_d CB(x_d; sigmoid(f_d(z)))  [Loaiza-Ganem       values in [0, 1]
                              and Cunningham 2019]
``gaussian``                  prod_d N(x_d; f_d(z), sigma_d^2), sigma fixed,       any finite values
                              learned globally, or learned per dimension
===========================  ==================================================  =====================
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import pyro.distributions as dist

from .distributions import BernoulliVector
from .specs import Recorded
from .wording import usage_error

LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "gaussian")
SIGMA_MODES = ("fixed", "global", "pixel")


class LikelihoodError(ValueError):
    """Data that the chosen likelihood cannot model (raised before any number is computed)."""


def _describe_bad_values(x: torch.Tensor, bad: torch.Tensor) -> str:
    values = x[bad].flatten()[:3].tolist()
    return f"{int(bad.sum())} of {x.numel()} values, e.g. {[round(v, 4) for v in values]}"


def _check_tensor(x: torch.Tensor, name: str) -> None:
    if not torch.is_tensor(x):
        raise LikelihoodError(f"{name} likelihood expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise LikelihoodError(f"{name} likelihood expects floating-point data, got dtype {x.dtype}")
    bad = ~torch.isfinite(x)
    if bad.any():
        raise LikelihoodError(f"{name} likelihood got non-finite data: {_describe_bad_values(x, bad)}")


class Likelihood(Recorded, nn.Module):
    """Base class: ``forward(decoder_out)`` returns ``p(x | z)`` with one event dim."""

    name = "likelihood"

    def forward(self, decoder_out: torch.Tensor) -> dist.Distribution:
        raise NotImplementedError

    def mean(self, decoder_out: torch.Tensor) -> torch.Tensor:
        """E[x | z], shape ``[..., D]`` (used for reconstructions and samples shown as images)."""
        return self(decoder_out).mean

    def validate(self, x: torch.Tensor) -> None:
        """Raise :class:`LikelihoodError` naming the problem if ``x`` is outside this likelihood's support."""
        _check_tensor(x, self.name)


class BernoulliLikelihood(Likelihood):
    """``p(x | z) = prod_d sigmoid(f_d)^x_d (1 - sigmoid(f_d))^(1 - x_d)`` for binary x.

    The decoder output ``f`` is read as logits (numerically stable log-density, no sigmoid then log).
    """

    name = "bernoulli"

    def forward(self, decoder_out):
        return BernoulliVector(decoder_out, validate_args=False)

    def validate(self, x):
        super().validate(x)
        _require_unit_interval(x, "bernoulli likelihood needs data in {0, 1}, got values outside [0, 1]:")
        fractional = (x != 0) & (x != 1)
        if fractional.any():
            what = (f"bernoulli likelihood needs binary data (exactly 0 or 1), got grey levels: "
                    f"{_describe_bad_values(x, fractional)}")
            raise usage_error(LikelihoodError, f"{what}. Binarize them (binarize='static' or 'dynamic') or use "
                                               f"likelihood='continuous-bernoulli' for values in [0, 1].",
                              f"{what}. Binarize them (--binarize static|dynamic) or use --likelihood "
                              f"continuous-bernoulli for values in [0, 1].")


def _require_unit_interval(x, what: str) -> None:
    outside = (x < 0) | (x > 1)
    if outside.any():
        what = f"{what} {_describe_bad_values(x, outside)}. Rescale the data, or use"
        raise usage_error(LikelihoodError, f"{what} likelihood='gaussian'.", f"{what} --likelihood gaussian.")


class ContinuousBernoulliLikelihood(Likelihood):
    """Continuous Bernoulli ``CB(x; lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x)`` on ``x in [0, 1]``.

    The properly normalised counterpart of using a Bernoulli on grey levels; the normaliser C(lambda)
    matters: without it the "likelihood" is not a density (Loaiza-Ganem & Cunningham, NeurIPS 2019).
    The decoder output is read as logits of lambda.
    """

    name = "continuous-bernoulli"

    def forward(self, decoder_out):
        return dist.ContinuousBernoulli(logits=decoder_out, validate_args=False).to_event(1)

    def validate(self, x):
        super().validate(x)
        _require_unit_interval(x, "continuous-bernoulli likelihood needs data in [0, 1], got")


class GaussianLikelihood(Likelihood):
    """``p(x | z) = prod_d N(x_d; f_d(z), sigma_d^2)``.

    Args:
        sigma: the fixed standard deviation, or the initial value when learned.
        learn: ``"fixed"`` (sigma is a constant), ``"global"`` (one learned sigma shared by all
            dimensions) or ``"pixel"`` (one learned sigma per data dimension; needs ``data_dim``).
        data_dim: D, required for ``learn="pixel"``.
        min_sigma: learned sigmas are ``min_sigma + softplus(raw)``, so they stay positive and
            the log-density stays bounded (a Gaussian VAE with learned sigma can otherwise collapse
            sigma towards 0 on a constant pixel and diverge).
    """

    name = "gaussian"

    def __init__(self, sigma: float = 0.1, learn: str = "fixed", data_dim: Optional[int] = None,
                 min_sigma: float = 1e-3):
        super().__init__()
        if learn not in SIGMA_MODES:
            raise ValueError(f"unknown sigma mode {learn!r}; choose one of {SIGMA_MODES}")
        if not sigma > min_sigma:
            raise ValueError(f"gaussian likelihood needs sigma > {min_sigma}, got {sigma}")
        self.learn = learn
        self.min_sigma = min_sigma
        raw = math.log(math.expm1(sigma - min_sigma))  # inverse softplus
        if learn == "fixed":
            self.register_buffer("raw_sigma", torch.tensor(raw))
        elif learn == "global":
            self.raw_sigma = nn.Parameter(torch.tensor(raw))
        else:
            if data_dim is None:
                raise ValueError("gaussian likelihood with a per-pixel sigma needs data_dim")
            self.raw_sigma = nn.Parameter(torch.full((data_dim,), raw))

    @property
    def sigma(self) -> torch.Tensor:
        """The standard deviation: a scalar, or ``[D]`` for per-pixel sigma."""
        return self.min_sigma + F.softplus(self.raw_sigma)

    def forward(self, decoder_out):
        return dist.Normal(decoder_out, self.sigma.to(decoder_out.dtype), validate_args=False).to_event(1)

    def mean(self, decoder_out):
        return decoder_out


def build_likelihood(name: str, data_dim: int, sigma: float = 0.1, learn_sigma: str = "fixed") -> Likelihood:
    """The likelihood called ``name`` (one of :data:`LIKELIHOODS`)."""
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "continuous-bernoulli":
        return ContinuousBernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(sigma=sigma, learn=learn_sigma, data_dim=data_dim)
    raise ValueError(f"unknown likelihood {name!r}; choose one of {LIKELIHOODS}")
