"""Priors p(z) over the latent code.

A prior is an ``nn.Module`` (so learnable priors train with the rest of the model and land in
checkpoints) with one job: :meth:`Prior.forward` returns a Pyro distribution with
``batch_shape == ()`` and ``event_shape == (Z,)``.  The model samples it inside the data plate,
and Pyro's plates broadcast it to ``[N]`` (or ``[K, N]`` with vectorized particles), so a prior never
needs to know the batch size.  Every log-density that objectives and evaluators use is read from the
Pyro trace (``site["fn"].log_prob``), so swapping the prior can never be silently ignored.

To add a prior (mixture of Gaussians, VampPrior, ...) subclass :class:`Prior`, implement ``forward``
and pass an instance as ``VAE(prior=...)``; nothing else changes.

Shape legend: ``Z`` latent dimension.
"""
import torch
import torch.nn as nn
import pyro.distributions as dist

from .distributions import StandardNormal

PRIORS = ("standard",)


class Prior(nn.Module):
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


def build_prior(name: str, latent_dim: int) -> Prior:
    """The prior called ``name`` (one of :data:`PRIORS`)."""
    if name == "standard":
        return StandardNormalPrior(latent_dim)
    raise ValueError(f"unknown prior {name!r}; choose one of {PRIORS}")
