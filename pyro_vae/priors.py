"""Priors p(z) over the latent code.

A prior is an ``nn.Module`` (so learnable priors train with the rest of the model and land in
checkpoints) with one job: :meth:`Prior.forward` returns a Pyro distribution with
``batch_shape == ()`` and ``event_shape == (Z,)``.  The model samples it inside the data plate,
and Pyro's plates broadcast it to ``[N]`` (or ``[K, N]`` with vectorized particles), so a prior never
needs to know the batch size.  Every log-density that objectives and evaluators use is read from the
Pyro trace (``site["fn"].log_prob``), so swapping the prior can never be silently ignored.

To add a prior (mixture of Gaussians, VampPrior, ...) subclass :class:`Prior`, implement ``forward``
and pass an instance as ``VAE(prior=...)``; nothing else changes.

Shape legend: ``Z`` latent dimension, ``C`` mixture components, ``K`` pseudo-inputs, ``D`` data dimension.

Mixture priors have no closed-form KL to the Gaussian guide: ``TraceMeanField_ELBO`` then raises
``NotImplementedError`` inside ``kl_divergence`` and falls back, for that site only, to the Monte-Carlo
term ``log p(z) - log q(z|x)`` at the sampled z (Pyro's documented behaviour; tested to agree with
``Trace_ELBO`` in expectation).
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import pyro.distributions as dist

from .distributions import DiagonalNormalMixture, StandardNormal
from .specs import Recorded

PRIORS = ("standard", "mog", "vamp")


class Prior(Recorded, nn.Module):
    """Base class: ``forward() -> Distribution`` with batch_shape ``()`` and event_shape ``(Z,)``."""

    def __init__(self, latent_dim: int):
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim = latent_dim

    def forward(self) -> dist.Distribution:
        raise NotImplementedError

    def sample(self, num_samples: int) -> torch.Tensor:
        """``num_samples`` draws from the prior, shape ``[num_samples, Z]``."""
        return self().sample((num_samples,))


class StandardNormalPrior(Prior):
    """``p(z) = N(z; 0, I_Z)``.  Its KL to a diagonal Gaussian q has a closed form, which
    :class:`pyro.infer.TraceMeanField_ELBO` uses."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        # buffers, so the prior follows the model's device and dtype under .to()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self):
        return StandardNormal(self.loc, self.scale, validate_args=False)


class MixtureOfGaussiansPrior(Prior):
    """``p(z) = sum_c pi_c N(z; mu_c, diag sigma_c^2)`` with C learnable components.

    Args:
        num_components: C.
        learn_weights: learn the mixture weights pi (softmax of logits); False fixes them uniform.
        init_spread: component means start at ``init_spread * N(0, I)`` draws, spread out rather than
            all at the origin (where they would receive identical gradients and never separate).
        min_scale, max_scale: ``sigma_c = min + (max - min) sigmoid(raw)``: positive and bounded, so a
            component can neither collapse onto one code (log p -> +inf) nor blow up.  Starts at 1.
    """

    def __init__(self, latent_dim: int, num_components: int = 10, learn_weights: bool = True,
                 init_spread: float = 1.0, min_scale: float = 0.01, max_scale: float = 5.0):
        super().__init__(latent_dim)
        if num_components < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        if not 0 < min_scale < 1 < max_scale:
            raise ValueError(f"need 0 < min_scale < 1 < max_scale, got {min_scale}, {max_scale}")
        self.num_components, self.min_scale, self.max_scale = num_components, min_scale, max_scale
        self.means = nn.Parameter(init_spread * torch.randn(num_components, latent_dim))      # [C, Z]
        start = (1.0 - min_scale) / (max_scale - min_scale)                                    # sigma = 1
        self.raw_scales = nn.Parameter(torch.full((num_components, latent_dim), math.log(start / (1 - start))))
        logits = torch.zeros(num_components)
        if learn_weights:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)

    @property
    def scales(self) -> torch.Tensor:
        """``sigma_c``, ``[C, Z]``."""
        return self.min_scale + (self.max_scale - self.min_scale) * torch.sigmoid(self.raw_scales)

    @property
    def weights(self) -> torch.Tensor:
        """``pi_c``, ``[C]``."""
        return torch.softmax(self.logits, -1)

    def forward(self):
        return DiagonalNormalMixture(self.logits, self.means, self.scales, validate_args=False)


class VampPrior(Prior):
    """VampPrior (Tomczak & Welling, AISTATS 2018): ``p(z) = (1/K) sum_k q(z | u_k)``, the guide's encoder
    applied to K learnable pseudo-inputs u_k.

    Args:
        encoder: the VAE's encoder, ``u [K, D] -> (loc [K, Z], scale [K, Z])``; shared, not copied, and not
            registered as a submodule here (it belongs to the VAE), so move the VAE, not the prior alone.
        data_dim: D.
        num_pseudo_inputs: K (500 in the paper).
        init: ``[K, D]`` initial pseudo-inputs (e.g. random training points; see :meth:`init_from_data`),
            default ``0.5 + 0.05 N(0, 1)``, near the middle of [0, 1] data.
        clamp: pass the pseudo-inputs through ``clamp(u, 0, 1)``, the data range of pixel intensities (the
            paper's hard-tanh); False leaves them unconstrained (use it for data outside [0, 1]; the CLI's
            ``--prior vamp`` always clamps).
    """

    def __init__(self, encoder: nn.Module, data_dim: int, latent_dim: int, num_pseudo_inputs: int = 500,
                 init: Optional[torch.Tensor] = None, clamp: bool = True):
        super().__init__(latent_dim)
        if num_pseudo_inputs < 1:
            raise ValueError(f"num_pseudo_inputs must be >= 1, got {num_pseudo_inputs}")
        if init is None:
            init = 0.5 + 0.05 * torch.randn(num_pseudo_inputs, data_dim)
        if tuple(init.shape) != (num_pseudo_inputs, data_dim):
            raise ValueError(f"init must have shape [{num_pseudo_inputs}, {data_dim}], got {tuple(init.shape)}")
        reference = next(encoder.parameters(), None)                    # the encoder's dtype and device
        like = {"dtype": reference.dtype, "device": reference.device} if reference is not None else {}
        self.pseudo_inputs = nn.Parameter(init.detach().clone().to(**like))                   # [K, D]
        self.clamp, self.data_dim = clamp, data_dim
        object.__setattr__(self, "_encoder", encoder)         # a reference, not a second registration

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> None:
        """Set the pseudo-inputs to K distinct rows of ``x: [N, D]`` drawn at random."""
        k = self.pseudo_inputs.shape[0]
        if x.shape[0] < k or x.shape[1] != self.data_dim:
            raise ValueError(f"need at least {k} rows of dimension {self.data_dim}, got {tuple(x.shape)}")
        rows = torch.randperm(x.shape[0], generator=generator)[:k]
        self.pseudo_inputs.copy_(x[rows].to(self.pseudo_inputs))

    def inputs(self) -> torch.Tensor:
        """The pseudo-inputs as the encoder sees them, ``[K, D]``."""
        return self.pseudo_inputs.clamp(0.0, 1.0) if self.clamp else self.pseudo_inputs

    def forward(self):
        loc, scale = self._encoder(self.inputs())                                               # [K, Z] each
        weights = torch.zeros(loc.shape[0], dtype=loc.dtype, device=loc.device)               # uniform
        return DiagonalNormalMixture(weights, loc, scale, validate_args=False)


def build_prior(name: str, latent_dim: int, num_components: int = 10, encoder: Optional[nn.Module] = None,
                data_dim: Optional[int] = None) -> Prior:
    """The prior called ``name`` (one of :data:`PRIORS`); ``num_components`` is C for ``mog`` and the number
    of pseudo-inputs K for ``vamp``, which also needs the VAE's ``encoder`` and ``data_dim``."""
    if name == "standard":
        return StandardNormalPrior(latent_dim)
    if name == "mog":
        return MixtureOfGaussiansPrior(latent_dim, num_components)
    if name == "vamp":
        if encoder is None or data_dim is None:
            raise ValueError("the vamp prior needs the VAE's encoder and data_dim")
        return VampPrior(encoder, data_dim, latent_dim, num_components)
    raise ValueError(f"unknown prior {name!r}; choose one of {PRIORS}")
